"""Training text and batches.

The corpus is the Python standard library's own source: every machine with Python has
it. Files are taken in sorted path order until the byte budget is reached, so the
corpus depends only on the Python version, and its SHA-256 is recorded with each run.
Batch ``step`` is a pure function of ``(seed, step)``, so the data position of a run
is its step number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sysconfig
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Bytes of training text and their provenance."""

    tokens: np.ndarray  # uint8, one token per byte
    sha256: str
    files: int

    def batch(self, seed: int, step: int, batch_size: int, context: int) -> tuple[np.ndarray, np.ndarray]:
        """Return inputs and next-byte targets for ``step``, each of shape (batch_size, context)."""
        rng = np.random.Generator(np.random.PCG64([seed, step]))
        starts = rng.integers(0, len(self.tokens) - context - 1, size=batch_size)
        windows = self.tokens[starts[:, None] + np.arange(context + 1)]
        return windows[:, :-1].astype(np.int32), windows[:, 1:].astype(np.int32)


def stdlib_corpus(max_bytes: int) -> Corpus:
    """Read up to ``max_bytes`` of ``*.py`` files from the standard library, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total, files = [], 0, 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data[: max_bytes - total])
        total += len(chunks[-1])
        files += 1
        if total >= max_bytes:
            break
    text = b"".join(chunks)
    if len(text) < 4096:
        raise RuntimeError(f"standard library at {root} yielded only {len(text)} bytes of source; check the Python install")
    return Corpus(np.frombuffer(text, dtype=np.uint8).copy(), hashlib.sha256(text).hexdigest(), files)
