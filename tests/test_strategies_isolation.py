"""The library stays apart from the harness packages and never uses pickle."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from strategies import Checkpointer, CheckpointOptions

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ["sync_raw", "sync_zstd", "async_raw", "async_zstd"]

HARNESS_PACKAGES = ["flashbench", "hydra", "omegaconf", "simpy", "pandas", "matplotlib"]

# The child prints the top-level packages of interest that are loaded after
# `import strategies`, and again after a save and restore of NumPy arrays only.
IMPORT_CHILD = textwrap.dedent(
    """
    import json
    import sys

    WATCHED = {"flashbench", "hydra", "omegaconf", "simpy", "pandas", "matplotlib", "mlx"}


    def loaded():
        return sorted({name.split(".")[0] for name in sys.modules} & WATCHED)


    import strategies

    after_import = loaded()

    import numpy as np

    checkpointer = strategies.Checkpointer(sys.argv[1], strategies.CheckpointOptions.from_name("async_zstd"))
    checkpointer.save({"w": np.arange(8, dtype=np.float32)}, step=1)
    checkpointer.wait()
    restored = checkpointer.restore()
    checkpointer.close()
    assert restored.state["w"].tobytes() == np.arange(8, dtype=np.float32).tobytes()
    print(json.dumps({"after_import": after_import, "after_numpy_round_trip": loaded()}))
    """
)


@pytest.fixture(scope="module")
def loaded_packages(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("isolation")
    script = directory / "child.py"
    script.write_text(IMPORT_CHILD)
    child = subprocess.run(
        [sys.executable, str(script), str(directory / "ckpt")],
        cwd=directory,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.splitlines()[-1])


@pytest.mark.parametrize("package", HARNESS_PACKAGES)
def test_import_without_harness(loaded_packages, package):
    assert package not in loaded_packages["after_import"]


@pytest.mark.parametrize("package", HARNESS_PACKAGES)
def test_round_trip_without_harness(loaded_packages, package):
    assert package not in loaded_packages["after_numpy_round_trip"]


def test_import_without_mlx(loaded_packages):
    assert "mlx" not in loaded_packages["after_import"]


def test_numpy_round_trip_without_mlx(loaded_packages):
    assert "mlx" not in loaded_packages["after_numpy_round_trip"]


class PickleUsed(AssertionError):
    pass


def raise_when_called(name: str):
    def call(*args, **kwargs):
        raise PickleUsed(f"{name} was called, but checkpoints must not use pickle")

    return call


@pytest.fixture
def no_pickle(monkeypatch):
    for name in ["load", "loads", "dump", "dumps"]:
        monkeypatch.setattr(pickle, name, raise_when_called(f"pickle.{name}"))
    for name in ["load", "save"]:
        monkeypatch.setattr(np, name, raise_when_called(f"numpy.{name}"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_round_trip_without_pickle(tmp_path, strategy, no_pickle):
    state = {
        "numpy": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "steps": [np.array(3)]},
        "mlx": (mx.arange(5, dtype=mx.int32), mx.ones((2, 2), dtype=mx.bfloat16)),
    }

    with Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name(strategy)) as checkpointer:
        checkpointer.save(state, step=1, metadata={"data_step": 1})
        checkpointer.wait()
        restored = checkpointer.restore()

    assert restored.state["numpy"]["w"].tobytes() == state["numpy"]["w"].tobytes()
    assert np.array(restored.state["mlx"][0]).tobytes() == np.array(state["mlx"][0]).tobytes()
    assert restored.metadata == {"data_step": 1}


def test_pickle_patch_effective(no_pickle):
    with pytest.raises(PickleUsed):
        pickle.dumps({"a": 1})


def test_no_pickle_names_bound():
    # Patching pickle.loads cannot catch a name bound at import time (from pickle import loads).
    import strategies  # noqa: F401  (loads every submodule through the package)

    forbidden = {pickle, np.load, pickle.load, pickle.loads, pickle.dump, pickle.dumps}
    bound = [
        f"{module_name}.{attribute}"
        for module_name, module in sorted(sys.modules.items())
        if module_name.split(".")[0] == "strategies"
        for attribute, value in vars(module).items()
        if any(value is item for item in forbidden)
    ]

    assert bound == []
