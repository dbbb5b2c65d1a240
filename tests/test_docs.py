"""The production example in docs/checkpointing.md runs as written, and resumes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def example_code(directory: Path, steps: int) -> str:
    text = (ROOT / "docs" / "checkpointing.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    code = code.replace("/data/checkpoints/run-42", str(directory)).replace("step < 1000", f"step < {steps}")
    return code + "\nprint('final step', step)\n"


@pytest.mark.slow
def test_docs_example_trains_and_resumes(tmp_path):
    directory = tmp_path / "ckpt"
    first = subprocess.run([sys.executable, "-c", example_code(directory, 200)], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert "final step 200" in first.stdout

    second = subprocess.run([sys.executable, "-c", example_code(directory, 300)], capture_output=True, text=True, cwd=ROOT)
    assert second.returncode == 0, second.stderr
    assert "final step 300" in second.stdout
    assert sorted(path.name for path in directory.glob("step_*")) == ["step_00000100", "step_00000200", "step_00000300"]
