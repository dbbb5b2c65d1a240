"""Data-parallel training on several real MLX processes (ring backend on 127.0.0.1)."""

import pytest

from strategies import Checkpointer

from flashbench.faults import FaultSpec
from flashbench.supervisor import Supervisor
from flashbench.train import TrainSpec, state_digest

STEPS, INTERVAL, KILL_AT = 10, 3, 7


def spec(workload, strategy, directory, world_size, steps=STEPS) -> TrainSpec:
    return TrainSpec(
        workload=workload,
        seed=5,
        steps=steps,
        interval=INTERVAL if strategy else 0,
        strategy=strategy,
        checkpoint_dir=str(directory) if strategy else None,
        checkpoint={"keep_last": 2},
        world_size=world_size,
        run_id="distributed-test",
    )


@pytest.fixture(scope="module")
def references(tiny_workload, child_env, tmp_path_factory):
    work = tmp_path_factory.mktemp("references")
    return {
        world: Supervisor(spec(tiny_workload, None, None, world), FaultSpec(), work / str(world), child_env).run().digest
        for world in (2, 4)
    }


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("strategy", ["sync_zstd_parallel", "async_zstd", "async_raw_parallel", "sync_raw"])
def test_kill_rank_resume_bit_exact(strategy, world_size, references, tiny_workload, child_env, tmp_path):
    fault = FaultSpec(kind="kill", at_step=KILL_AT, max_restarts=1, rank=world_size - 1)
    result = Supervisor(spec(tiny_workload, strategy, tmp_path / "ckpt", world_size), fault, tmp_path, child_env).run()

    assert len(result.recoveries) == 1
    recovery = result.recoveries[0]
    assert recovery.resumed_step >= INTERVAL
    assert recovery.resumed_step % INTERVAL == 0
    assert result.digest == references[world_size]


@pytest.mark.slow
def test_parallel_layout_writes_one_shard_per_rank(tiny_workload, child_env, tmp_path):
    Supervisor(spec(tiny_workload, "sync_raw_parallel", tmp_path / "ckpt", 4), FaultSpec(), tmp_path, child_env).run()

    latest = max((tmp_path / "ckpt").glob("step_*"))
    shards = sorted(path.name for path in latest.glob("shard_*.bin"))
    assert shards == [f"shard_{rank:05d}.bin" for rank in range(4)]
    sizes = [(latest / name).stat().st_size for name in shards]
    assert max(sizes) - min(sizes) <= 64  # balanced by bytes, cut at element boundaries


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sync_raw_parallel", "sync_zstd"])
def test_saved_on_four_restores_on_two_and_one(strategy, tiny_workload, child_env, tmp_path):
    directory = tmp_path / "ckpt"
    Supervisor(spec(tiny_workload, strategy, directory, 4, steps=6), FaultSpec(), tmp_path / "four", child_env).run()
    on_one = Checkpointer(directory, read_only=True).restore(target="mlx")
    assert on_one.step == 6

    resumed = Supervisor(spec(tiny_workload, strategy, directory, 2, steps=8), FaultSpec(), tmp_path / "two", child_env).run()

    restored = resumed.of("restored")
    assert sorted(event["rank"] for event in restored) == [0, 1]
    for event in restored:
        assert event["step"] == 6
        assert event["digest"] == state_digest(on_one.state)
