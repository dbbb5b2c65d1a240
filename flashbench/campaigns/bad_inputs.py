"""Bad-input campaign: a fixed list of invalid inputs, each of which must fail with one clear error.

Every case starts from a committed checkpoint (steps 10 and 20 of a small state saved
with sync_zstd) and gives one invalid input: a damaged or inconsistent manifest in a
new step 30, a bad option or call of the library, a training run resumed with another
model, or an invalid command line of ``python -m flashbench.cli``. Manifests are
resealed with ``strategies.format.encode_manifest`` after the edit, so the checks behind
the manifest checksum are reached. A library case passes when it raises the expected
exception type with a one-line message that names the bad value. A command-line case
passes when it exits non-zero with one line on stderr and no traceback. In both, the
newest committed step must restore with the same values afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

from strategies import (
    CheckpointError,
    CheckpointOptions,
    Checkpointer,
    ConfigError,
    CorruptCheckpointError,
    NoCheckpointError,
    StorageError,
)
from strategies import format as fmt
from strategies.storage import MANIFEST

from flashbench.campaigns.crash import child_env, tiny_workload, train_spec
from flashbench.campaigns.states import same_state, save_steps, states_for_steps
from flashbench.faults import FaultSpec
from flashbench.supervisor import Supervisor, TrainingFailed

DEFAULT_TRIALS = None  # every case
# zstd decodes without the element size, so a wrong dtype reaches the dtype and size checks.
BASE_STRATEGY = "sync_zstd"
BASE_STEPS = (10, 20)
BAD_STEP = 30
ARRAY = "model/embed"  # the array whose manifest entry the array cases edit
COLUMNS = ("case", "input", "expected_error", "got_error", "message", "clear", "intact", "ok")


@dataclasses.dataclass
class Context:
    """The checkpoint, folders and environment that the cases of one campaign run use."""

    scratch: Path
    base: Path  # the committed checkpoint each case starts from a copy of
    env: dict[str, str]
    directory: Path = Path()  # the copy of the current case


@dataclasses.dataclass
class Case:
    """One invalid input and the error it must raise."""

    name: str
    input: str  # the bad input, as the CSV shows it
    action: typing.Callable[[Context], object]
    expected: type[Exception] | None  # None: a command line, checked by exit status and stderr
    fragments: tuple[str, ...]  # text the error message must contain
    setup: typing.Callable[[Context], Path] | None = None  # makes the checkpoint instead of copying the base


# Manifests of the new step 30: step 20's files with an edited manifest.


def _bad_step(context: Context, edit=None, *, raw: bytes | None = None, reseal: bool = True) -> None:
    """Write step 30 as a copy of step 20 whose manifest is ``raw``, or edited by ``edit``."""
    source, target = context.directory / fmt.step_dir(BASE_STEPS[-1]), context.directory / fmt.step_dir(BAD_STEP)
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_bytes())
    manifest["step"] = BAD_STEP
    if edit:
        edit(manifest)
    if raw is None:
        raw = fmt.encode_manifest(manifest) if reseal else json.dumps(manifest, indent=1).encode()
    (target / MANIFEST).write_bytes(raw)


def _restore_bad_step(context: Context) -> None:
    Checkpointer(context.directory, read_only=True).restore(BAD_STEP, target="numpy")


def manifest_case(name: str, description: str, fragments: tuple[str, ...], edit=None, *, raw=None, reseal=True,
                  expected=CorruptCheckpointError) -> Case:
    def action(context: Context) -> None:
        _bad_step(context, edit, raw=raw, reseal=reseal)
        _restore_bad_step(context)

    return Case(name, description, action, expected, fragments)


def _array(manifest: dict) -> dict:
    return manifest["arrays"][ARRAY]


def _piece(manifest: dict) -> dict:
    return _array(manifest)["pieces"][0]


def _first_shard(manifest: dict) -> str:
    return next(iter(manifest["shards"]))


def _rename_first_shard(manifest: dict, name: str) -> None:
    shards = manifest["shards"]
    shards[name] = shards.pop(_first_shard(manifest))


def _add_to_shard_length(manifest: dict, added: int) -> None:
    manifest["shards"][_first_shard(manifest)]["length"] += added


def _point_tree_at(manifest: dict, name: str) -> None:
    manifest["tree"]["model"]["embed"] = {"__array__": name}


MANIFEST_PATH = f"{fmt.step_dir(BAD_STEP)}/{MANIFEST}"

MANIFEST_CASES = [
    manifest_case("manifest_invalid_json", "manifest cut off after a comma", (MANIFEST_PATH, "not valid JSON"),
                  raw=b'{"format": "flashbench-checkpoint", "step": 30,'),
    manifest_case("manifest_not_object", "manifest is the JSON array [30]", (MANIFEST_PATH, "not a flashbench-checkpoint manifest"),
                  raw=b"[30]"),
    manifest_case("manifest_checksum_mismatch", "created changed without resealing", (MANIFEST_PATH, "failed its checksum"),
                  lambda m: m.update(created="2000-01-01T00:00:00+00:00"), reseal=False),
    manifest_case("manifest_missing_checksum", "checksum key removed", (MANIFEST_PATH, "lacks checksum"),
                  lambda m: m.pop("checksum", None), reseal=False),
    manifest_case("manifest_missing_arrays", "arrays key removed", (MANIFEST_PATH, "lacks arrays"), lambda m: m.pop("arrays")),
    manifest_case("manifest_version", "version 99", ("version 99",), lambda m: m.update(version=99)),
    manifest_case("manifest_step_type", 'step "30" (a string)', ("'30'", "not an integer"), lambda m: m.update(step="30")),
    manifest_case("manifest_step_mismatch", "step 7 inside step_00000030", ("step 7", "step 30"), lambda m: m.update(step=7)),
    manifest_case("manifest_arrays_type", "arrays is a list", ("arrays is a list",), lambda m: m.update(arrays=[])),
    manifest_case("manifest_codec_type", 'codec "zstd" (a string)', ("codec is a str",), lambda m: m.update(codec="zstd")),
    manifest_case("manifest_codec_unknown", "codec lz4", ("'lz4'",), lambda m: m.update(codec={"name": "lz4"})),
    manifest_case("manifest_shape_type", f'{ARRAY} shape ["64", 32]', (f"'{ARRAY}'", "shape"),
                  lambda m: _array(m).update(shape=["64", 32])),
    manifest_case("manifest_shape_mismatch", f"{ARRAY} shape [64, 33]", (f"'{ARRAY}'", "[64, 33]"),
                  lambda m: _array(m).update(shape=[64, 33])),
    manifest_case("manifest_dtype_mismatch", f"{ARRAY} dtype float64", (f"'{ARRAY}'", "float64"),
                  lambda m: _array(m).update(dtype="float64")),
    manifest_case("manifest_dtype_unknown", f"{ARRAY} dtype float7", (f"'{ARRAY}'", "'float7'"),
                  lambda m: _array(m).update(dtype="float7")),
    manifest_case("manifest_dtype_type", f'{ARRAY} dtype ["float32"] (a list)', (f"'{ARRAY}'", "dtype"),
                  lambda m: _array(m).update(dtype=["float32"])),
    # Object arrays cannot be saved, so a manifest that names one is invalid even when its shape fits the bytes.
    manifest_case("manifest_dtype_object", f"{ARRAY} dtype O, shape [64, 16]", (f"'{ARRAY}'", "'O'"),
                  lambda m: _array(m).update(dtype="O", shape=[64, 16])),
    manifest_case("manifest_tree_unknown_array", "tree names the array model/missing", ("model/missing",),
                  lambda m: _point_tree_at(m, "model/missing")),
    manifest_case("manifest_tree_type", "tree is the list [1, 2]", ("[1, 2]",), lambda m: m.update(tree=[1, 2])),
    manifest_case("manifest_shard_name", 'shard named "../shard_00000.bin"', ("'../shard_00000.bin'", "not a plain file name"),
                  lambda m: _rename_first_shard(m, "../shard_00000.bin")),
    manifest_case("manifest_shard_length", "shard length one byte too long", ("shard_00000.bin", "the manifest expects"),
                  lambda m: _add_to_shard_length(m, 1)),
    manifest_case("manifest_piece_gap", f"{ARRAY} piece starts at byte 4", (f"'{ARRAY}'", "gap or overlap"),
                  lambda m: _piece(m).update(start=4)),
    manifest_case("manifest_piece_offset", f"{ARRAY} piece offset one byte late", (ARRAY,),
                  lambda m: _piece(m).update(offset=_piece(m)["offset"] + 1)),
    manifest_case("manifest_raw_checksum", f"{ARRAY} raw_checksum of other bytes", (f"'{ARRAY}'", "wrong bytes"),
                  lambda m: _piece(m).update(raw_checksum="xxh3_64:0000000000000000")),
    manifest_case("manifest_base_missing", "base_step 0, never saved", ("step 0",), lambda m: m.update(base_step=0)),
    manifest_case("manifest_base_newer", "base_step 40, newer than the step", ("40",), lambda m: m.update(base_step=40)),
]


# Options and calls of the library.


def _options(**settings):
    return lambda context: CheckpointOptions(**settings)


def _with_checkpointer(call, **opened):
    def action(context: Context):
        checkpointer = Checkpointer(context.directory, **opened)
        try:
            return call(checkpointer)
        finally:
            checkpointer.close()

    return action


def _save(state=None, step=BAD_STEP, **keywords):
    return lambda checkpointer: checkpointer.save(states_for_steps([0], 0)[0] if state is None else state, step, **keywords)


def _open_file_as_directory(context: Context) -> None:
    path = context.scratch / "a-file"
    path.write_text("not a directory")
    Checkpointer(path / "checkpoints")


LIBRARY_CASES = [
    Case("option_writer", 'writer="sometimes"', _options(writer="sometimes"), ConfigError, ("'sometimes'",)),
    Case("option_codec", 'codec="lz4"', _options(codec="lz4"), ConfigError, ("'lz4'",)),
    Case("option_layout", 'layout="ring"', _options(layout="ring"), ConfigError, ("'ring'",)),
    Case("option_zstd_level", "zstd_level=0", _options(zstd_level=0), ConfigError, ("zstd_level 0",)),
    Case("option_zstd_level_type", 'zstd_level="3"', _options(zstd_level="3"), ConfigError, ("zstd_level '3'",)),
    Case("option_max_in_flight", "max_in_flight=0", _options(max_in_flight=0), ConfigError, ("max_in_flight 0",)),
    Case("option_keep_last", "keep_last=0", _options(keep_last=0), ConfigError, ("keep_last 0",)),
    Case("option_delta_full_every", "delta_full_every=0", _options(delta_full_every=0), ConfigError, ("delta_full_every 0",)),
    Case("option_commit_timeout", "commit_timeout_s=-1", _options(commit_timeout_s=-1), ConfigError, ("commit_timeout_s -1",)),
    Case("option_run_id", 'run_id=""', _options(run_id=""), ConfigError, ("run_id ''",)),
    Case("strategy_name_typo", 'from_name("async_zsdt")', lambda context: CheckpointOptions.from_name("async_zsdt"), ConfigError,
         ("'async_zsdt'", "did you mean 'async_zstd'")),
    Case("rank_out_of_range", "rank=2, world_size=2", lambda context: Checkpointer(context.directory, rank=2, world_size=2),
         ConfigError, ("rank 2",)),
    Case("parallel_without_broadcast", "sync_raw_parallel on 2 ranks, no broadcast",
         lambda context: Checkpointer(context.directory, CheckpointOptions.from_name("sync_raw_parallel"), world_size=2),
         ConfigError, ("broadcast",)),
    Case("directory_is_file", "checkpoint directory below a regular file", _open_file_as_directory, StorageError,
         ("a-file/checkpoints",)),
    Case("restore_target", 'restore(target="torch")', _with_checkpointer(lambda c: c.restore(target="torch")), ConfigError,
         ("'torch'",)),
    Case("restore_missing_step", "restore(15), never saved", _with_checkpointer(lambda c: c.restore(15)), NoCheckpointError,
         ("step 15",)),
    Case("save_negative_step", "save(state, -1)", _with_checkpointer(_save(step=-1)), ConfigError, ("-1",)),
    Case("save_committed_step", "save(state, 20), already committed", _with_checkpointer(_save(step=BASE_STEPS[-1])),
         CheckpointError, ("step 20", "already committed")),
    Case("save_metadata_not_json", "metadata {'when': object()}", _with_checkpointer(_save(metadata={"when": object()})),
         ConfigError, ("not JSON-serializable",)),
    Case("save_leaf_not_array", "state {'lr': 0.1}", _with_checkpointer(_save(state={"lr": 0.1})), ConfigError, ("'lr'",)),
    Case("save_read_only", "save on a read_only Checkpointer", _with_checkpointer(_save(), read_only=True), CheckpointError,
         ("read-only",)),
]


# A training run resumed with another model.


def _train_tiny(context: Context) -> Path:
    directory = context.scratch / "other_model" / "ckpt"
    spec = train_spec(tiny_workload(), 1, "sync_zstd", directory, run_id="bad-inputs")
    Supervisor(spec, FaultSpec(), directory.parent / "first", context.env).run()
    return directory


def _resume_wider_model(context: Context) -> None:
    workload = dict(tiny_workload(), d_model=64)
    spec = train_spec(workload, 1, "sync_zstd", context.directory, run_id="bad-inputs")
    Supervisor(spec, FaultSpec(), context.directory.parent / "second", context.env).run()


MODEL_CASES = [
    Case("other_model", "resume the tiny workload's checkpoint with d_model=64", _resume_wider_model, TrainingFailed,
         ("workload", "'d_model': 64"), setup=_train_tiny),
]


# The command line.


def _cli(override: str):
    def action(context: Context) -> subprocess.CompletedProcess:
        run_dir = context.scratch / "cli" / context.directory.name
        arguments = [
            "workload=tiny", "fault=none", "train.steps=4", "train.interval=2", f"checkpoint.dir={context.directory}",
            f"hydra.run.dir={run_dir}", override,
        ]
        return subprocess.run(
            [sys.executable, "-m", "flashbench.cli", *arguments], capture_output=True, text=True, cwd=context.scratch,
            env=context.env, timeout=600,
        )

    return action


CLI_CASES = [
    Case("cli_interval", "train.interval=-1", _cli("train.interval=-1"), None, ("train.interval -1",)),
    Case("cli_strategy", "strategy=nope", _cli("strategy=nope"), None, ("'nope'",)),
    Case("cli_zstd_level", "checkpoint.zstd_level=99", _cli("checkpoint.zstd_level=99"), None, ("zstd_level 99",)),
    Case("cli_devices", "cluster.devices=0", _cli("cluster.devices=0"), None, ("devices=0",)),
    Case("cli_fault_kind", "fault.kind=meteor", _cli("fault.kind=meteor"), None, ("'meteor'",)),
]

CASES = MANIFEST_CASES + LIBRARY_CASES + MODEL_CASES + CLI_CASES


def _snapshot(directory: Path):
    """Restore the newest committed step without changing the directory; return (step, state), or the error as text."""
    try:
        restored = Checkpointer(directory, read_only=True).restore(target="numpy")
    except Exception as error:  # recorded: a checkpoint that no longer restores is not intact
        return f"error: {type(error).__name__}: {error}"
    return restored.step, restored.state


def _same_snapshot(before, after) -> bool:
    if isinstance(before, str) or isinstance(after, str):
        return False
    return before[0] == after[0] and same_state(after[1], before[1])


def _outcome(case: Case, context: Context) -> tuple[str, str, bool]:
    """Run the case's action and return the error type (or exit status), the message and whether the error is clear."""
    try:
        result = case.action(context)
    except Exception as error:  # the error the case provokes, compared with the expected one below
        message = str(error)
        clear = (
            case.expected is not None and isinstance(error, case.expected) and "\n" not in message.strip()
            and all(fragment in message for fragment in case.fragments)
        )
        return type(error).__name__, message, clear
    if case.expected is not None:
        return "no error", "", False
    lines = result.stderr.strip().splitlines()
    clear = (
        result.returncode != 0 and "Traceback" not in result.stderr and len(lines) == 1
        and all(fragment in lines[0] for fragment in case.fragments)
    )
    return f"exit status {result.returncode}", result.stderr.strip(), clear


def check_case(case: Case, context: Context) -> dict:
    """Give one bad input on a fresh copy of the base checkpoint and return its row."""
    context.directory = context.scratch / "cases" / case.name
    if case.setup:
        context.directory = case.setup(context)
    else:
        shutil.copytree(context.base, context.directory)
    before = _snapshot(context.directory)
    got, message, clear = _outcome(case, context)
    intact = _same_snapshot(before, _snapshot(context.directory))
    expected = case.expected.__name__ if case.expected else "non-zero exit, one stderr line"
    return {
        "case": case.name, "input": case.input, "expected_error": f"{expected} naming {' and '.join(case.fragments)}",
        "got_error": got, "message": message, "clear": clear, "intact": intact, "ok": clear and intact,
    }


def run(trials: int | None, seed: int, scratch: Path, progress=None) -> tuple[list[dict], str]:
    """Run the first ``trials`` cases (all when None) and return the rows and the summary line."""
    cases = CASES if trials is None else CASES[:trials]
    base = scratch / "base"
    save_steps(base, BASE_STRATEGY, "coordinator", states_for_steps(list(BASE_STEPS), seed))
    context = Context(scratch=scratch, base=base, env=child_env())
    rows = []
    for case in cases:
        rows.append(check_case(case, context))
        if progress:
            progress(len(rows), case.name)
    clear = sum(row["ok"] for row in rows)
    return rows, f"clear errors: {clear}/{len(rows)}"
