"""Shared fixtures: the tiny workload and the environment of training processes."""

import os
from pathlib import Path

import pytest
import yaml

from flashbench.blas import fast_blas_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_workload() -> dict:
    return yaml.safe_load((ROOT / "conf" / "workload" / "tiny.yaml").read_text())


@pytest.fixture(scope="session")
def child_env() -> dict:
    env = fast_blas_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
