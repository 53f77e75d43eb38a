"""One-command GPU check: CuPy (and JAX) at tp=1 and tp=2 against the numpy reference.

    pip install -e '.[mpich]' cupy-cuda12x && python benchmarks/gpu_check.py

Needs CuPy and an NVIDIA GPU (two ranks may share one GPU). Generates a wide MLP
(4096-16384-4096) and 8,192 input rows under benchmarks/_work, runs numpy on the CPU as
the reference, then cupy at tp=1 (1 rank) and tp=2 (2 ranks) with each collective path
(host staging, CUDA-aware MPI, NCCL), and jax if it sees a GPU. Prints, per run, rows/s of
the compute phase and the largest difference from the reference; a path that fails
prints its error and the check goes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bench_common import WORK, run_hpcinfer, wide_mlp_job

ROWS = 8192


def run(job: Path, ranks: int, tp: int, backend: str, tp_comm: str = "auto"):
    r = run_hpcinfer(
        job,
        ranks,
        "--tp",
        str(tp),
        "--backend",
        backend,
        "--set",
        f"run.tp_comm='{tp_comm}'",
        check=False,
        keep_outputs=True,
    )
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1:] or ["(no message)"]
    return (r.rows_per_second, r.outputs), None


def main() -> None:
    WORK.mkdir(exist_ok=True)
    job = wide_mlp_job("gpu-check", ROWS, batch_size=1024, chunk_size=2048)
    (ref_rate, ref), err = run(job, 1, 1, "numpy")
    print(f"numpy (CPU)            tp=1: {ref_rate:9.1f} rows/s  (reference)")
    scale = np.abs(ref).max()
    runs = [("cupy", 1, 1, "host")] + [("cupy", 2, 2, c) for c in ("host", "mpi", "nccl")]
    runs += [("jax", 1, 1, "auto"), ("jax", 2, 2, "auto")]
    for backend, ranks, tp, tp_comm in runs:
        result, err = run(job, ranks, tp, backend, tp_comm)
        label = f"{backend} ({tp_comm})".ljust(22)
        if result is None:
            print(f"{label} tp={tp}: failed: {err[0]}")
            continue
        rate, out = result
        diff = np.abs(out - ref).max() / scale
        print(
            f"{label} tp={tp}: {rate:9.1f} rows/s  {rate / ref_rate:6.1f}x numpy  "
            f"max |diff| / max |ref| = {diff:.1e}"
        )


if __name__ == "__main__":
    main()
