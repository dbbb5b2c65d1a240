"""Every fault config in conf/fault/ injected into a real supervised run, with its outcome."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from flashbench.faults import FaultSpec
from flashbench.supervisor import Supervisor
from flashbench.train import TrainSpec

ROOT = Path(__file__).resolve().parents[1]
FAULTS = sorted(path.stem for path in (ROOT / "conf" / "fault").glob("*.yaml") if path.stem != "base")
STEPS, INTERVAL, AT_STEP, SAVE_INDEX = 10, 3, 5, 2  # saves at steps 3, 6 and 9


def fault_config(name: str, **overrides) -> FaultSpec:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"fault={name}"])
    settings = OmegaConf.to_container(cfg.fault)
    settings.update(at_step=AT_STEP if settings["at_step"] != -1 else -1, save_index=SAVE_INDEX)
    settings.update(overrides)
    return FaultSpec(**settings).resolve_step(STEPS)


def spec(workload, strategy, directory) -> TrainSpec:
    return TrainSpec(workload=workload, seed=7, steps=STEPS, interval=INTERVAL, strategy=strategy,
                     checkpoint_dir=str(directory), checkpoint={"keep_last": 3})


@pytest.fixture(scope="module")
def reference(tiny_workload, child_env, tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    plain = TrainSpec(workload=tiny_workload, seed=7, steps=STEPS)
    return Supervisor(plain, FaultSpec(), work, child_env).run().digest


def run_fault(fault: FaultSpec, workload, env, tmp_path, strategy="sync_raw"):
    return Supervisor(spec(workload, strategy, tmp_path / "ckpt"), fault, tmp_path, env).run()


def test_every_fault_config_is_valid():
    assert len(FAULTS) >= 15
    for name in FAULTS:
        assert isinstance(fault_config(name), FaultSpec)


@pytest.mark.slow
def test_no_fault_runs_clean(reference, tiny_workload, child_env, tmp_path):
    result = run_fault(fault_config("none"), tiny_workload, child_env, tmp_path)
    assert result.recoveries == []
    assert result.digest == reference


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kill", "kill_random"])
def test_kill_recovers_bit_exact(name, reference, tiny_workload, child_env, tmp_path):
    fault = fault_config(name)
    result = run_fault(fault, tiny_workload, child_env, tmp_path)
    assert len(result.recoveries) == 1
    assert result.recoveries[0].cause == "killed by SIGKILL"
    assert result.recoveries[0].fault_step >= fault.at_step
    assert result.digest == reference


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_shard", "during_shard", "after_shard", "before_commit", "after_commit"])
@pytest.mark.parametrize("strategy", ["sync_zstd", "async_raw"])
def test_kill_during_save_resumes_from_newest_commit(point, strategy, reference, tiny_workload, child_env, tmp_path):
    result = run_fault(fault_config("kill_during_save", point=point), tiny_workload, child_env, tmp_path, strategy)
    assert len(result.recoveries) == 1
    recovery = result.recoveries[0]
    assert recovery.cause == "killed by SIGKILL"
    committed = SAVE_INDEX if point == "after_commit" else SAVE_INDEX - 1
    assert recovery.resumed_step == committed * INTERVAL
    assert result.digest == reference


@pytest.mark.slow
def test_hang_detected_within_timeout(reference, tiny_workload, child_env, tmp_path):
    fault = fault_config("hang", hang_timeout_s=3.0)
    result = run_fault(fault, tiny_workload, child_env, tmp_path)
    assert len(result.recoveries) == 1
    recovery = result.recoveries[0]
    assert recovery.cause.startswith("hang")
    assert recovery.detect_s <= fault.hang_timeout_s + 1.0
    assert recovery.detect_s >= fault.hang_timeout_s
    assert result.digest == reference


@pytest.mark.slow
def test_exception_restarts(reference, tiny_workload, child_env, tmp_path):
    result = run_fault(fault_config("exception"), tiny_workload, child_env, tmp_path)
    assert len(result.recoveries) == 1
    assert "InjectedFault" in result.recoveries[0].cause
    assert f"step {AT_STEP}" in result.recoveries[0].cause
    assert result.digest == reference


@pytest.mark.slow
@pytest.mark.parametrize("name", ["storage_enospc", "storage_eacces", "storage_request"])
@pytest.mark.parametrize("strategy", ["sync_raw", "async_zstd"])
def test_storage_error_surfaces_and_recovers(name, strategy, reference, tiny_workload, child_env, tmp_path):
    result = run_fault(fault_config(name), tiny_workload, child_env, tmp_path, strategy)
    assert len(result.recoveries) == 1
    recovery = result.recoveries[0]
    expected = "StorageError" if strategy.startswith("sync") else "BackgroundSaveError"
    assert recovery.cause.startswith(expected)
    assert recovery.resumed_step == (SAVE_INDEX - 1) * INTERVAL  # the previous checkpoint stayed loadable
    assert result.digest == reference


@pytest.mark.slow
def test_slow_storage_caps_bandwidth(reference, tiny_workload, child_env, tmp_path):
    fault = fault_config("storage_slow", bandwidth_Bps=2e6, latency_s=0.1)
    result = run_fault(fault, tiny_workload, child_env, tmp_path)
    assert result.recoveries == []
    for event in result.of("save"):
        record = event["record"]
        assert record["write_s"] >= fault.latency_s + record["bytes_stored"] / fault.bandwidth_Bps * 0.9
    assert result.digest == reference


@pytest.mark.slow
@pytest.mark.parametrize("corruption", ["bitflip", "truncate", "missing_shard", "missing_manifest", "garbled_manifest"])
def test_corruption_falls_back(corruption, reference, tiny_workload, child_env, tmp_path):
    result = run_fault(fault_config(f"corrupt_{corruption}"), tiny_workload, child_env, tmp_path)
    assert len(result.recoveries) == 1
    assert result.recoveries[0].resumed_step == (SAVE_INDEX - 1) * INTERVAL
    restored = result.of("restored")[0]
    if corruption != "missing_manifest":  # without its manifest the step was never committed
        assert restored["record"]["skipped_steps"] == str(SAVE_INDEX * INTERVAL)
    assert result.digest == reference
