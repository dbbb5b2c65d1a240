"""A fast BLAS for MLX on Linux, and the matmul benchmark that checks it.

MLX's Linux CPU wheel links a reference BLAS that runs a 2048x2048 float32 matmul
several tens of times slower than OpenBLAS. The processes flashbench starts get the
OpenBLAS of the ``cmeel-openblas`` package through ``LD_PRELOAD``, which makes the
dynamic linker resolve MLX's ``cblas_sgemm`` to it. That OpenBLAS needs
``libgfortran.so.5``; when the system lacks it, a cache folder gives that name to the
copy bundled in MLX's own wheel.

``python -m flashbench.blas`` prints the matmul throughput of MLX and NumPy as JSON.
"""

from __future__ import annotations

import ctypes.util
import glob
import hashlib
import importlib.util
import json
import logging
import os
import sys
import sysconfig
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ACTIVE_FLAG = "FLASHBENCH_BLAS"  # set in the environment of processes already switched


def openblas_library() -> Path | None:
    """Return the OpenBLAS shared library from cmeel-openblas, or None when absent."""
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for candidate in sorted(glob.glob(os.path.join(base, "cmeel.prefix", "lib", "libopenblas.so.0"))):
            return Path(candidate)
    return None


def _bundled_gfortran() -> Path | None:
    for package in ("mlx", "numpy"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        site = Path(next(iter(spec.submodule_search_locations))).parent
        for libs in (site / "mlx_cpu.libs", site / f"{package}.libs"):
            found = sorted(libs.glob("libgfortran-*.so.5*"))
            if found:
                return found[0]
    return None


def _gfortran_folder() -> Path | None:
    """Return a folder to add to LD_LIBRARY_PATH so ``libgfortran.so.5`` resolves, or None if the system has it."""
    if ctypes.util.find_library("gfortran"):
        return None
    bundled = _bundled_gfortran()
    if bundled is None:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flashbench"
    folder = cache / ("blas-" + hashlib.sha256(str(bundled).encode()).hexdigest()[:12])
    folder.mkdir(parents=True, exist_ok=True)
    # The bundled libgfortran finds its own dependencies through $ORIGIN, which is this
    # folder, so every file of its wheel folder gets a link here.
    for source in bundled.parent.iterdir():
        _link(folder / source.name, source)
    _link(folder / "libgfortran.so.5", bundled)
    return folder


def _link(link: Path, source: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(source):
        return
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(source)
    os.replace(temporary, link)


def fast_blas_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``env`` under which new processes run MLX on OpenBLAS.

    Off Linux, or without cmeel-openblas, the environment comes back unchanged apart
    from the flag, and the matmul benchmark shows the speed actually reached.
    """
    env = dict(os.environ if env is None else env)
    if env.get(ACTIVE_FLAG) or not sys.platform.startswith("linux"):
        return env
    env[ACTIVE_FLAG] = "none"
    library = openblas_library()
    if library is None:
        logger.warning("cmeel-openblas is not installed: MLX keeps its slow reference BLAS")
        return env
    folder = _gfortran_folder()
    if folder is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(folder), env.get("LD_LIBRARY_PATH")]))
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD")]))
    env.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    env[ACTIVE_FLAG] = str(library)
    return env


def loaded_blas() -> str:
    """Return the path of the BLAS library mapped into this process, or 'unknown'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("libopenblas", "libblas"):
        for line in maps.splitlines():
            if name in line:
                return line.split()[-1]
    return "unknown"


def matmul_gflops(size: int = 2048, repeats: int = 3) -> dict:
    """Measure float32 matmul GFLOP/s of MLX and of NumPy on the same matrices."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3

    a_mx, b_mx = mx.array(a), mx.array(b)
    mx.eval(a_mx @ b_mx)
    started = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a_mx @ b_mx)
    mlx_s = (time.perf_counter() - started) / repeats

    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    numpy_s = (time.perf_counter() - started) / repeats
    return {
        "matmul_size": size,
        "matmul_gflops_mlx": flops / mlx_s / 1e9,
        "matmul_gflops_numpy": flops / numpy_s / 1e9,
        "blas_library": loaded_blas(),
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flashbench.blas",
        description="Print the float32 matmul GFLOP/s of MLX and NumPy, under the BLAS that training processes get.",
    )
    parser.add_argument("--size", type=int, default=2048, help="matrix side (default 2048)")
    args = parser.parse_args(argv)
    env = fast_blas_env()
    if not os.environ.get(ACTIVE_FLAG) and env.get(ACTIVE_FLAG):
        # LD_PRELOAD acts only when a process starts: run the benchmark in a new one.
        os.execve(sys.executable, [sys.executable, "-m", "flashbench.blas", "--size", str(args.size)], env)
    print(json.dumps(matmul_gflops(args.size)))


if __name__ == "__main__":
    main()
