"""One training process: train the workload, checkpoint it, resume it after a crash.

The supervisor starts ``python -m flashbench.train SPEC.json`` and reads one JSON event
per line from its stdout. The events are ``ready`` (model built), ``restored`` (a
checkpoint loaded), ``step`` (a step finished), ``heartbeat`` (sent every
``heartbeat_s``), ``save`` (a save committed), ``load`` (the final timed restore),
``done`` (digest of the final state) and ``error``.
On start it resumes from the newest committed checkpoint in its directory, if any.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from functools import partial

import xxhash

from strategies import (
    BackgroundSaveError,
    CheckpointError,
    CheckpointOptions,
    Checkpointer,
    StorageError,
    mlx_distributed,
)
from strategies.tree import flatten

from flashbench.faults import FaultSpec, FaultyStorage, InjectedFault, first_attempt
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainSpec:
    """Everything one training process needs; written as JSON by the supervisor."""

    workload: dict
    seed: int
    steps: int
    interval: int = 0  # steps between checkpoints; 0 disables checkpointing
    strategy: str | None = None
    checkpoint_dir: str | None = None
    checkpoint: dict = dataclasses.field(default_factory=dict)  # CheckpointOptions settings
    measure_load: bool = True
    world_size: int = 1  # data-parallel processes; above 1 the ring backend connects them
    fault: dict = dataclasses.field(default_factory=dict)  # FaultSpec settings for faults injected in-process
    run_id: str | None = None  # shared by every attempt of a run, so retention counts their steps

    @classmethod
    def from_file(cls, path: str) -> "TrainSpec":
        with open(path) as handle:
            return cls(**json.load(handle))


RANK = int(os.environ.get("MLX_RANK", "0"))
_EMIT_LOCK = threading.Lock()


def emit(event: str, **fields) -> None:
    line = json.dumps({"event": event, "t": time.monotonic(), "rank": RANK, **fields})
    with _EMIT_LOCK:
        print(line, flush=True)


class Heartbeat:
    """Reports the current step every ``interval_s`` from a daemon thread until stopped."""

    def __init__(self, interval_s: float) -> None:
        self.step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="flashbench-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            emit("heartbeat", step=self.step)

    def stop(self) -> None:
        self._stop.set()


def state_digest(state) -> str:
    """Hash the exact bytes, dtypes and shapes of every array in ``state``."""
    hasher = xxhash.xxh3_128()
    # Sorted by name: a restored dict may list its keys in another order.
    for leaf in sorted(flatten(state, copy=False)[1], key=lambda leaf: leaf.name):
        hasher.update(f"{leaf.name}:{leaf.dtype}:{leaf.shape};".encode())
        hasher.update(leaf.buffer())
    return hasher.hexdigest()


class Trainer:
    """The model, optimizer, RNG and data of one run, with a compiled train step.

    With several processes, every rank keeps the full replica, trains on its rows of
    the global batch and averages gradients with ``all_sum``. Every rank seeds the RNG
    alike, so one RNG key in the checkpoint restores them all.
    """

    def __init__(self, spec: TrainSpec) -> None:
        import mlx.core as mx
        import mlx.optimizers as optim

        from flashbench.workload.data import stdlib_corpus
        from flashbench.workload.model import ByteTransformer, ModelConfig, parameter_count

        work = spec.workload
        self.spec = spec
        self.group = mx.distributed.init(backend="ring", strict=True) if spec.world_size > 1 else None
        if self.group is not None and self.group.size() != spec.world_size:
            raise ValueError(f"the ring backend formed {self.group.size()} ranks, the run expects {spec.world_size}")
        self.config = ModelConfig(**{k: work[k] for k in ("d_model", "n_layers", "n_heads", "context", "dropout")})
        self.corpus = stdlib_corpus(int(work["corpus_bytes"]))
        mx.random.seed(spec.seed)
        self.model = ByteTransformer(self.config)
        self.optimizer = optim.AdamW(learning_rate=float(work["learning_rate"]), weight_decay=float(work["weight_decay"]))
        self.optimizer.init(self.model.trainable_parameters())
        self.parameters = parameter_count(self.model)
        self.step = 0

    def state(self) -> dict:
        import mlx.core as mx

        return {"model": self.model.parameters(), "optimizer": self.optimizer.state, "rng": mx.random.state[0]}

    def metadata(self) -> dict:
        return {
            "step": self.step,
            "data": {"seed": self.spec.seed, "next_step": self.step + 1},
            "corpus_sha256": self.corpus.sha256,
            "workload": self.spec.workload,
        }

    def load(self, state: dict, metadata: dict, step: int) -> None:
        """Put restored state in place; this runs before the step function is compiled."""
        import mlx.core as mx

        self._check_compatible(metadata)
        self.model.update(state["model"])
        self.optimizer.state = state["optimizer"]
        self.optimizer.init(self.model.trainable_parameters())  # marks the restored state initialized
        # mx.random.state holds its key array by reference: assign into that array.
        mx.random.state[0][...] = state["rng"]
        mx.eval(self.model.parameters(), self.optimizer.state, mx.random.state[0])
        self.step = step

    def _check_compatible(self, metadata: dict) -> None:
        if metadata.get("corpus_sha256") != self.corpus.sha256 or metadata.get("data", {}).get("seed") != self.spec.seed:
            raise CheckpointError(
                "the checkpoint comes from another run (corpus or seed differ): "
                "point checkpoint.dir at this run's directory or an empty one"
            )
        if metadata.get("workload") != self.spec.workload:
            raise CheckpointError(
                f"the checkpoint was made with workload {metadata.get('workload')}, this run uses {self.spec.workload}: "
                "use the same workload settings or an empty checkpoint directory"
            )

    def compile(self) -> None:
        import mlx.core as mx
        import mlx.nn as nn

        from mlx.utils import tree_map

        from flashbench.workload.model import loss_fn

        model, optimizer = self.model, self.optimizer
        loss_and_grad = nn.value_and_grad(model, loss_fn)

        group = self.group

        def train_step(inputs, targets):
            loss, grads = loss_and_grad(model, inputs, targets)
            if group is not None:
                grads = tree_map(lambda grad: mx.distributed.all_sum(grad, group=group) / group.size(), grads)
            optimizer.update(model, grads)
            return loss

        captured = [model.state, optimizer.state, mx.random.state]
        self._train_step = partial(mx.compile, inputs=captured, outputs=captured)(train_step) if self.spec.workload.get(
            "compile", True
        ) else train_step

    def train_one(self) -> float:
        import mlx.core as mx

        step = self.step + 1
        work = self.spec.workload
        inputs, targets = self.corpus.batch(self.spec.seed, step, int(work["batch_size"]), self.config.context)
        if self.group is not None:
            rows = len(inputs) // self.group.size()
            mine = slice(self.group.rank() * rows, (self.group.rank() + 1) * rows)
            inputs, targets = inputs[mine], targets[mine]
        loss = self._train_step(mx.array(inputs), mx.array(targets))
        mx.eval(loss, self.model.parameters(), self.optimizer.state, mx.random.state[0])
        self.step = step
        return loss.item()


def run(spec: TrainSpec) -> None:
    fault = FaultSpec(**spec.fault) if spec.fault else FaultSpec()
    in_process_fault = fault if first_attempt() and fault.rank == RANK else FaultSpec()
    heartbeat = Heartbeat(fault.heartbeat_s)
    trainer = Trainer(spec)
    checkpointer = _open_checkpointer(spec, trainer.group, in_process_fault)
    emit("ready", parameters=trainer.parameters, state_bytes=_state_bytes(trainer.state()))

    if checkpointer is not None and checkpointer.latest_step() is not None:
        restored = checkpointer.restore(target="mlx")
        trainer.load(restored.state, restored.metadata, restored.step)
        emit("restored", step=restored.step, record=restored.record.as_row(), digest=state_digest(restored.state))
    trainer.compile()

    pending = []
    while trainer.step < spec.steps:
        _inject_step_fault(in_process_fault, trainer.step + 1, heartbeat)
        in_flight = any(not handle.done() for handle in pending)
        started = time.perf_counter()
        loss = trainer.train_one()
        heartbeat.step = trainer.step
        step_s = time.perf_counter() - started
        stall_s = 0.0
        if checkpointer is not None and trainer.step % spec.interval == 0:
            pending.append(checkpointer.save(trainer.state(), trainer.step, trainer.metadata()))
            stall_s = pending[-1].record.stall_s
        pending = _emit_committed(pending)
        emit("step", step=trainer.step, loss=loss, step_s=step_s, stall_s=stall_s, in_flight=in_flight)

    _finish(spec, trainer, checkpointer, pending)
    heartbeat.stop()


def _inject_step_fault(fault: FaultSpec, step: int, heartbeat: Heartbeat) -> None:
    if step != fault.at_step:
        return
    if fault.kind == "exception":
        raise InjectedFault(f"injected fault: the training step raised at step {step}")
    if fault.kind == "hang":
        logger.warning("fault: hanging at step %d without exiting", step)
        heartbeat.stop()
        while True:
            time.sleep(3600)


def _finish(spec: TrainSpec, trainer: Trainer, checkpointer, pending) -> None:
    if checkpointer is not None:
        checkpointer.wait()
        _emit_committed(pending)
        if spec.measure_load and checkpointer.latest_step() is not None:
            restored = checkpointer.restore(target="mlx")
            emit("load", step=restored.step, record=restored.record.as_row())
        checkpointer.close()
    emit("done", step=trainer.step, digest=state_digest(trainer.state()))


def _emit_committed(pending):
    remaining = []
    for handle in pending:
        if handle.done():
            emit("save", step=handle.step, record=handle.wait().as_row())
        else:
            remaining.append(handle)
    return remaining


def _open_checkpointer(spec: TrainSpec, group, fault: FaultSpec) -> Checkpointer | None:
    if not spec.strategy or not spec.interval:
        return None
    options = CheckpointOptions.from_name(spec.strategy, run_id=spec.run_id, **spec.checkpoint)
    ranks = mlx_distributed(group) if group is not None else {}
    storage = FaultyStorage(spec.checkpoint_dir, fault) if fault.kind in ("kill_during_save", "storage") else spec.checkpoint_dir
    return Checkpointer(storage, options, **ranks)


def _state_bytes(state) -> int:
    return sum(leaf.nbytes for leaf in flatten(state, copy=False)[1])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m flashbench.train SPEC.json", file=sys.stderr)
        return 2
    try:
        run(TrainSpec.from_file(argv[0]))
    except (CheckpointError, ValueError, OSError, RuntimeError) as error:
        emit("error", message=str(error), kind=type(error).__name__, retryable=_retryable(error))
        return 3
    return 0


def _retryable(error: Exception) -> bool:
    """Return whether a restart can help: faults and storage errors yes, bad input no."""
    if isinstance(error, (BackgroundSaveError, StorageError, InjectedFault)):
        return True
    return not isinstance(error, (CheckpointError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
