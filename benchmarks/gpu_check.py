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

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"
ROWS = 8192


def make_inputs() -> Path:
    spec = importlib.util.spec_from_file_location("make_big_mlp", ROOT / "data/make_big_mlp.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    model, data = WORK / "mlp-4096-16384-4096", WORK / f"wide-input-{ROWS}.h5"
    if not (model / "model.safetensors").exists():
        make.make_mlp(model, [4096, 16384, 4096])
    if not data.exists():
        make.make_input(data, ROWS, 4096)
    job = WORK / "gpu-check.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{data}"\n'
        f'[output]\npath = "{WORK / "gpu-unused.h5"}"\n'
        "[run]\nbatch_size = 1024\nchunk_size = 2048\n"
    )
    return job


def run(job: Path, ranks: int, tp: int, backend: str, tp_comm: str = "auto"):
    out = WORK / f"gpu-{backend}-{tp}-{tp_comm}.h5"
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [
        mpiexec,
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "hpcinfer",
        "run",
        str(job),
        "--tp",
        str(tp),
        "--backend",
        backend,
        "--set",
        f"run.tp_comm='{tp_comm}'",
        "--set",
        f"output.path='{out}'",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return None, p.stderr.strip().splitlines()[-1:] or ["(no message)"]
    with h5py.File(out, "r") as f:
        ranks_metrics = json.loads(f.attrs["rank_metrics"])
        seconds = max(m["loop_seconds"] for m in ranks_metrics)
        outputs = f["outputs"][:]
    out.unlink()
    return (ROWS / seconds, outputs), None


def main() -> None:
    WORK.mkdir(exist_ok=True)
    job = make_inputs()
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
