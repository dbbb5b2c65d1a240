"""The reliability campaigns: each one run small through its command line, and each check shown able to fail."""

import csv
import importlib.util
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from strategies import ConfigError
from strategies.storage import LocalStorage

from flashbench.campaigns import __main__ as campaigns_cli
from flashbench.campaigns import bad_inputs, crash, integrity, memory, storage
from flashbench.campaigns.results import summary_passed, update_readme
from flashbench.campaigns.states import save_steps, states_for_steps
from flashbench.supervisor import Recovery, RunResult

ROOT = Path(__file__).resolve().parents[1]


def run_campaign(*args, out, env):
    return subprocess.run(
        [sys.executable, "-m", "flashbench.campaigns", *args, "--out", str(out)],
        capture_output=True, text=True, cwd=out.parent, env=env, timeout=600,
    )


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_campaign_passed(completed, out: Path, name: str, summary: str, rows: int) -> None:
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == summary
    assert len(read_rows(out / f"{name}.csv")) == rows
    readme = (out / "README.md").read_text()
    assert f"## {name}\n" in readme
    assert f"- result: `{summary}`" in readme
    assert f"python -m flashbench.campaigns {name}" in readme


# Each campaign through its command line.


@pytest.mark.slow
def test_crash_campaign_runs(tmp_path, child_env):
    out = tmp_path / "out"
    completed = run_campaign("crash", "--trials", "3", out=out, env=child_env)
    assert_campaign_passed(completed, out, "crash", "consistent: 3/3", 3)
    for row in read_rows(out / "crash.csv"):
        assert row["resumed_step"] == row["expected_step"]
        assert row["bit_exact"] == "True"


def test_integrity_campaign_runs(tmp_path, child_env):
    out = tmp_path / "out"
    completed = run_campaign("integrity", "--trials", "30", out=out, env=child_env)
    assert_campaign_passed(completed, out, "integrity", "detected: 30/30", 30)


def test_storage_campaign_runs(tmp_path, child_env):
    out = tmp_path / "out"
    completed = run_campaign("storage", "--trials", "5", out=out, env=child_env)
    assert_campaign_passed(completed, out, "storage", "surfaced: 5/5", 5)


@pytest.mark.slow
def test_bad_inputs_campaign_runs(tmp_path, child_env):
    out = tmp_path / "out"
    total = len(bad_inputs.CASES)
    completed = run_campaign("bad_inputs", out=out, env=child_env)
    failed = [row["case"] for row in read_rows(out / "bad_inputs.csv") if row["ok"] != "True"]
    assert failed == []
    assert_campaign_passed(completed, out, "bad_inputs", f"clear errors: {total}/{total}", total)


def test_memory_campaign_runs(tmp_path, child_env):
    out = tmp_path / "out"
    completed = run_campaign("memory", "--trials", "5", "--size-mb", "64", out=out, env=child_env)
    assert completed.returncode == 0, completed.stderr
    assert re.fullmatch(r"peak RSS growth: [0-9.]+ MB = [0-9.]+ x state \(limit 2\.0x\): PASS", completed.stdout.strip())
    assert len(read_rows(out / "memory.csv")) == 5 + 2  # before the first save, after each save, after close


def test_readme_keeps_one_section_per_campaign(tmp_path, child_env):
    out = tmp_path / "out"
    for trials in ("2", "3"):
        assert run_campaign("storage", "--trials", trials, out=out, env=child_env).returncode == 0
    assert run_campaign("integrity", "--trials", "2", out=out, env=child_env).returncode == 0

    readme = (out / "README.md").read_text()
    assert readme.count("## storage\n") == 1
    assert "`surfaced: 3/3`" in readme
    assert "## integrity\n" in readme


# The command line's own errors.


def test_size_mb_rejected_for_crash(capsys):
    with pytest.raises(SystemExit) as exit_info:
        campaigns_cli.main(["crash", "--size-mb", "32"])
    assert exit_info.value.code == 2
    assert "--size-mb applies to the memory campaign only" in capsys.readouterr().err


def test_powercut_missing_module_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flashbench.campaigns.powercut", None)  # makes the import fail as if missing
    with pytest.raises(SystemExit) as exit_info:
        campaigns_cli.main(["powercut", "--trials", "1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "powercut campaign is not available" in lines[0]
    assert not (tmp_path / "powercut.csv").exists()


@pytest.mark.skipif(importlib.util.find_spec("flashbench.campaigns.powercut") is None, reason="powercut.py is not present")
def test_powercut_campaign_runs(tmp_path, child_env):
    out = tmp_path / "out"
    completed = run_campaign("powercut", "--trials", "3", out=out, env=child_env)
    assert_campaign_passed(completed, out, "powercut", "no partial checkpoint chosen: 3/3", 3)


# Each check can fail.


def fake_run(digest: str, recoveries: list[Recovery]) -> RunResult:
    return RunResult(strategy="sync_raw", events=[], recoveries=recoveries, digest=digest, wall_s=1.0)


def killed_at(resumed_step: int) -> Recovery:
    return Recovery(fault="kill_during_save", strategy="sync_raw", rank=0, cause=crash.KILLED, fault_step=4, resumed_step=resumed_step)


def test_crash_check_passes_matching_run():
    assert crash.check_trial(fake_run("abc", [killed_at(2)]), expected=2, reference="abc")["ok"]


def test_crash_check_rejects_wrong_step():
    checked = crash.check_trial(fake_run("abc", [killed_at(2)]), expected=4, reference="abc")
    assert checked["resumed_step"] == 2
    assert not checked["ok"]


def test_crash_check_rejects_other_digest():
    checked = crash.check_trial(fake_run("abc", [killed_at(2)]), expected=2, reference="xyz")
    assert not checked["bit_exact"]
    assert not checked["ok"]


def test_crash_check_rejects_no_recovery():
    checked = crash.check_trial(fake_run("abc", []), expected=0, reference="abc")
    assert checked["recoveries"] == 0
    assert not checked["ok"]


def test_crash_expected_steps():
    assert crash.expected_step("before_shard", 1) == 0
    assert crash.expected_step("before_commit", 3) == 2 * crash.INTERVAL
    assert crash.expected_step("after_commit", 3) == 3 * crash.INTERVAL


def test_crash_draws_writing_ranks():
    for trial in range(200):
        drawn = crash.draw_trial(trial, seed=0)
        if drawn["point"] in crash.COMMIT_POINTS or drawn["layout"] == "coordinator":
            assert drawn["rank"] == 0, drawn
        assert drawn["rank"] < drawn["world_size"]


@pytest.mark.parametrize("layout", ["coordinator", "parallel"])
def test_integrity_check_misses_intact_step(tmp_path, layout):
    states = states_for_steps([10, 20], seed=3)
    save_steps(tmp_path / "ckpt", "async_delta_zstd", layout, states)

    restored_step, detected = integrity.check_fallback(tmp_path / "ckpt", expected_step=10, expected_state=states[10])

    assert restored_step == "20"
    assert not detected


def test_integrity_check_detects_corruption(tmp_path):
    states = states_for_steps([10, 20], seed=3)
    save_steps(tmp_path / "ckpt", "sync_zstd", "coordinator", states)
    integrity.CORRUPTIONS["bitflip_shard"](tmp_path / "ckpt" / "step_00000020", random.Random(0))

    assert integrity.check_fallback(tmp_path / "ckpt", expected_step=10, expected_state=states[10]) == ("10", True)


class NeverFailingStorage(LocalStorage):
    def __init__(self, root, fail_save, fail_at, error_number):
        super().__init__(root)


def test_storage_check_misses_silent_save(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "FailingStorage", NeverFailingStorage)

    row = storage.run_trial(0, seed=0, scratch=tmp_path)

    assert not row["surfaced"]
    assert not row["ok"]


def base_context(tmp_path) -> bad_inputs.Context:
    base = tmp_path / "base"
    save_steps(base, bad_inputs.BASE_STRATEGY, "coordinator", states_for_steps(list(bad_inputs.BASE_STEPS), seed=0))
    return bad_inputs.Context(scratch=tmp_path, base=base, env={})


def test_bad_input_without_error_fails(tmp_path):
    case = bad_inputs.Case("silent", "nothing", lambda context: None, ConfigError, ("x",))
    row = bad_inputs.check_case(case, base_context(tmp_path))
    assert row["got_error"] == "no error"
    assert not row["ok"]


def test_bad_input_wrong_type_fails(tmp_path):
    def raise_value_error(context):
        raise ValueError("invalid x")

    row = bad_inputs.check_case(bad_inputs.Case("wrong_type", "x", raise_value_error, ConfigError, ("x",)), base_context(tmp_path))
    assert not row["clear"]
    assert not row["ok"]


def test_bad_input_damage_not_intact(tmp_path):
    def delete_newest_then_raise(context):
        shutil.rmtree(context.directory / "step_00000020")
        raise ConfigError("invalid x")

    row = bad_inputs.check_case(bad_inputs.Case("damage", "x", delete_newest_then_raise, ConfigError, ("x",)), base_context(tmp_path))
    assert row["clear"]
    assert not row["intact"]
    assert not row["ok"]


@pytest.mark.parametrize("case", bad_inputs.MANIFEST_CASES + bad_inputs.LIBRARY_CASES, ids=lambda case: case.name)
def test_bad_input_case(case, tmp_path):
    row = bad_inputs.check_case(case, base_context(tmp_path))
    assert row["clear"], f"{row['got_error']}: {row['message']}"
    assert row["intact"]


def test_memory_verdict_misses_over_limit():
    summary = memory.verdict(growth_bytes=3 * memory.MB, state_bytes=memory.MB)
    assert summary.endswith("MISS")
    assert not summary_passed(summary)


def test_summary_passed():
    assert summary_passed("consistent: 3/3")
    assert not summary_passed("consistent: 2/3")
    assert summary_passed(memory.verdict(memory.MB, memory.MB))
    assert not summary_passed("no count")


def test_readme_section_replaced(tmp_path):
    path = tmp_path / "README.md"
    update_readme(path, "crash", "## crash\n\nold-body\n")
    update_readme(path, "storage", "## storage\n\nother\n")
    update_readme(path, "crash", "## crash\n\nnew-body\n")

    text = path.read_text()
    assert text.count("## crash\n") == 1
    assert "new-body" in text
    assert "old-body" not in text
    assert text.index("## crash") < text.index("## storage")
