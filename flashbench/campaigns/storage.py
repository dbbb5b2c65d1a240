"""Storage-error campaign: an async save fails in the background, and its error must surface once.

Each trial makes one to three async saves on a storage that fails the last of them
with ENOSPC, EACCES, ECONNRESET or EIO, either partway through the shard write or at the
manifest commit. Once that save has finished, the trial makes one call, drawn from
save, wait and close, which must raise BackgroundSaveError naming the failed step and
keeping the injected errno in its cause chain. No later call may raise it again. The
step before the failed one must then restore bit-exact, and one more save after the
failure (with the same Checkpointer when it is still open, which keeps a delta base)
must commit and restore bit-exact.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import time
from pathlib import Path

from strategies import BackgroundSaveError, CheckpointOptions, Checkpointer, NoCheckpointError
from strategies.storage import MANIFEST, LocalStorage

from flashbench.campaigns.states import CODECS, same_state, states_for_steps

DEFAULT_TRIALS = 50
STRATEGIES = tuple(f"async_{codec}" for codec in CODECS)
ERRORS = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES, "ECONNRESET": errno.ECONNRESET, "EIO": errno.EIO}
FAIL_AT = ("shard", "commit")
NEXT_CALLS = ("save", "wait", "close")
INTERVAL = 10  # steps between saves
FINISH_TIMEOUT_S = 60.0  # how long a trial waits for the failing save to finish
COLUMNS = (
    "trial", "strategy", "error", "fail_at", "failed_save", "failed_step", "next_call", "surfaced", "raised_once",
    "names_step", "errno_kept", "restored_step", "restored_bit_exact", "continued_step", "continued_bit_exact", "ok",
    "message",
)


class FailingStorage(LocalStorage):
    """A local directory whose ``fail_save``-th save fails with ``error_number``, in its shard write or its commit."""

    def __init__(self, root, fail_save: int, fail_at: str, error_number: int) -> None:
        super().__init__(root)
        self.fail_save = fail_save
        self.fail_at = fail_at
        self.error_number = error_number
        self.saves = 0  # shard writes so far, one per save with one rank

    def write_file(self, path, chunks):
        if not Path(path).name.startswith("shard_"):
            return super().write_file(path, chunks)
        self.saves += 1
        if self.saves == self.fail_save and self.fail_at == "shard":
            chunks = self._fail_halfway(list(chunks), path)
        return super().write_file(path, chunks)

    def commit(self, directory, manifest):
        if self.saves == self.fail_save and self.fail_at == "commit":
            raise self._error(f"{directory}/{MANIFEST}")
        super().commit(directory, manifest)

    def _fail_halfway(self, chunks: list, path: str):
        yield from chunks[: len(chunks) // 2]
        raise self._error(path)

    def _error(self, path: str) -> OSError:
        # OSError picks the subclass from the errno, e.g. PermissionError for EACCES.
        return OSError(self.error_number, f"{os.strerror(self.error_number)} (injected)", f"{self.root}/{path}")


def _wait_finished(handle) -> None:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while not handle.done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the failing save of step {handle.step} did not finish within {FINISH_TIMEOUT_S:g} s")
        time.sleep(0.005)


def _call(checkpointer: Checkpointer, name: str, state: dict, step: int) -> BackgroundSaveError | None:
    """Make one call and return the BackgroundSaveError it raised, or None."""
    try:
        if name == "save":
            checkpointer.save(state, step)
        elif name == "wait":
            checkpointer.wait()
        else:
            checkpointer.close()
    except BackgroundSaveError as error:
        return error
    return None


def _errno_in_chain(error: BaseException | None) -> int | None:
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        error = error.__cause__
    return None


def run_trial(trial: int, seed: int, scratch: Path) -> dict:
    rng = random.Random(seed * 1_000_003 + trial)
    strategy = rng.choice(STRATEGIES)
    error_name = rng.choice(list(ERRORS))
    fail_at = rng.choice(FAIL_AT)
    fail_save = rng.randint(1, 3)
    next_call = rng.choice(NEXT_CALLS)

    steps = [INTERVAL * index for index in range(1, fail_save + 2)]  # the saves, then the one after the failure
    states = states_for_steps(steps, seed * 1_000_003 + trial)
    directory = scratch / f"trial{trial}"
    storage = FailingStorage(directory, fail_save, fail_at, ERRORS[error_name])
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name(strategy, max_in_flight=1))
    for step in steps[:-1]:
        handle = checkpointer.save(states[step], step)
    _wait_finished(handle)

    failed_step, next_step = steps[-2], steps[-1]
    first = _call(checkpointer, next_call, states[next_step], next_step)
    if next_call == "close":
        checkpointer = Checkpointer(directory, CheckpointOptions.from_name(strategy))
    restored_step, restored_exact = _check_restore(directory, steps[-3] if fail_save > 1 else None, states)

    # No later call may raise the error again, and saving goes on after it.
    later = [
        _call(checkpointer, "save", states[next_step], next_step),
        _call(checkpointer, "wait", {}, 0),
        _call(checkpointer, "close", {}, 0),
    ]
    continued_step, continued_exact = _check_restore(directory, next_step, states)
    shutil.rmtree(directory)

    message = str(first) if first else ""
    row = {
        "trial": trial, "strategy": strategy, "error": error_name, "fail_at": fail_at, "failed_save": fail_save,
        "failed_step": failed_step, "next_call": next_call, "surfaced": first is not None,
        "raised_once": first is not None and not any(later), "names_step": f"step {failed_step}" in message,
        "errno_kept": _errno_in_chain(first) == ERRORS[error_name], "restored_step": restored_step,
        "restored_bit_exact": restored_exact, "continued_step": continued_step, "continued_bit_exact": continued_exact,
        "message": message or "; ".join(str(error) for error in later if error),
    }
    checks = ("surfaced", "raised_once", "names_step", "errno_kept", "restored_bit_exact", "continued_bit_exact")
    row["ok"] = all(row[check] for check in checks)
    return row


def _check_restore(directory: Path, expected_step: int | None, states: dict) -> tuple[str, bool]:
    """Restore the newest step.

    Return the restored step (or the error) as text, and whether it is ``expected_step`` with
    bit-exact values. With ``expected_step`` None no step may be committed, so the restore
    must raise NoCheckpointError.
    """
    try:
        restored = Checkpointer(directory, read_only=True).restore(target="numpy")
    except NoCheckpointError:
        return "none", expected_step is None
    except Exception as error:  # any other failure to restore is a finding, recorded in the row
        return f"error: {type(error).__name__}: {error}", False
    ok = restored.step == expected_step and same_state(restored.state, states[expected_step])
    return str(restored.step), ok


def run(trials: int, seed: int, scratch: Path, progress=None) -> tuple[list[dict], str]:
    """Run ``trials`` storage-error trials and return the rows and the summary line."""
    rows = []
    for trial in range(trials):
        try:
            rows.append(run_trial(trial, seed, scratch))
        except Exception as error:  # a trial that cannot finish is a failed trial, recorded in its row
            rows.append({"trial": trial, "ok": False, "message": f"{type(error).__name__}: {error}"})
        if progress:
            progress(trial + 1, f"{rows[-1].get('strategy')} {rows[-1].get('error')} at {rows[-1].get('fail_at')}")
    surfaced = sum(row["ok"] for row in rows)
    return rows, f"surfaced: {surfaced}/{trials}"
