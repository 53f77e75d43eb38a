"""Data-parallel MLP throughput against a bare numpy GEMM of the same shapes.

    python benchmarks/mlp_throughput.py                 # 200k rows, 784-2048-2048-10
    python benchmarks/mlp_throughput.py --rows 1000000  # the full-size run

Runs the whole hpcinfer job (HDF5 read, forward, chunk files, final HDF5) through
`mpiexec` at 1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread, and times the
bare GEMMs (x @ W1, @ W2, @ W3 at the job's batch size, no bias, no activation, no I/O)
in a separate process with the same thread count. It prints rows/s, the speed-up of
2 ranks over 1 rank, and each run's FLOP rate as a fraction of the bare GEMM's
(ranks x the GEMM rate at the rank's thread count). Everything is measured in one
invocation, so the ratios hold even on a noisy machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from bench_common import WORK, run_hpcinfer
from safetensors.numpy import save_file

SIZES = [784, 2048, 2048, 10]

GEMM_SCRIPT = """
import sys, time, numpy as np
sizes, batch, seconds = eval(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
ws = [rng.standard_normal((a, b), dtype=np.float32) for a, b in zip(sizes, sizes[1:])]
x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
def forward():
    h = x
    for w in ws:
        h = h @ w
forward()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    forward(); n += 1
print(n * batch / (time.perf_counter() - t0))
"""


def flops_per_row(sizes: list[int]) -> int:
    return sum(2 * a * b for a, b in itertools.pairwise(sizes))


def make_inputs(rows: int) -> tuple[Path, Path]:
    WORK.mkdir(exist_ok=True)
    model = WORK / "mlp-784-2048-2048-10"
    if not (model / "model.safetensors").exists():
        rng = np.random.default_rng(0)
        model.mkdir(exist_ok=True)
        tensors = {}
        for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
            scale = 1 / np.sqrt(n_in)
            tensors[f"layers.{i}.weight"] = (rng.standard_normal((n_out, n_in)) * scale).astype(
                np.float32
            )
            tensors[f"layers.{i}.bias"] = np.zeros(n_out, np.float32)
        save_file(tensors, str(model / "model.safetensors"))
        config = {
            "model_type": "mlp",
            "layer_sizes": SIZES,
            "activation": "relu",
            "output_activation": "softmax",
        }
        (model / "config.json").write_text(json.dumps(config))
    data = WORK / f"synthetic-{rows}.h5"
    if not data.exists():
        rng = np.random.default_rng(1)
        with h5py.File(data, "w") as f:
            ds = f.create_dataset("x", shape=(rows, SIZES[0]), dtype=np.float32)
            for start in range(0, rows, 65536):
                stop = min(start + 65536, rows)
                ds[start:stop] = rng.random((stop - start, SIZES[0]), dtype=np.float32)
    return model, data


def hpcinfer_rows_per_second(job: Path, ranks: int, threads: int) -> float:
    """rows/s of the compute phase (start to last chunk), as hpcinfer recorded it."""
    attrs = run_hpcinfer(job, ranks, "--threads", str(threads)).attrs
    return attrs["n_rows"] / attrs["compute_seconds"]


def gemm_rows_per_second(threads: int, batch: int, seconds: float = 5.0) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    p = subprocess.run(
        [sys.executable, "-c", GEMM_SCRIPT, repr(SIZES), str(batch), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return float(p.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=8192)
    args = parser.parse_args()

    model, data = make_inputs(args.rows)
    job = WORK / "mlp-bench.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{data}"\ndataset = "x"\n'
        f'[output]\npath = "{WORK / "out.h5"}"\n'
        f"[run]\nbatch_size = {args.batch_size}\nchunk_size = {args.chunk_size}\n"
    )
    fpr = flops_per_row(SIZES)
    print(
        f"MLP {'-'.join(map(str, SIZES))}, {args.rows:,} rows, batch {args.batch_size}, "
        f"chunk {args.chunk_size}, {fpr / 1e6:.1f} MFLOP/row, {os.cpu_count()} cores"
    )

    gemm = {t: gemm_rows_per_second(t, args.batch_size) for t in (1, 2)}
    for t, r in gemm.items():
        print(f"  bare numpy GEMM, {t} thread(s): {r:10,.0f} rows/s  {r * fpr / 1e9:6.1f} GFLOP/s")

    results = {}
    for ranks, threads in [(1, 1), (2, 1), (1, 2)]:
        t0 = time.perf_counter()
        rate = hpcinfer_rows_per_second(job, ranks, threads)
        wall = time.perf_counter() - t0
        ideal = ranks * gemm[threads]
        results[(ranks, threads)] = rate
        print(
            f"  hpcinfer {ranks} rank(s) x {threads} thread(s): {rate:10,.0f} rows/s  "
            f"{rate * fpr / 1e9:6.1f} GFLOP/s  = {rate / ideal:5.1%} of bare GEMM "
            f"(ranks x {threads}-thread rate); launch to exit {wall:.1f} s"
        )
    speedup = results[(2, 1)] / results[(1, 1)]
    print(f"  2 ranks / 1 rank (1 thread each): {speedup:.2f}x")
    print(f"  2 ranks x 1 thread / 1 rank x 2 threads: {results[(2, 1)] / results[(1, 2)]:.2f}x")


if __name__ == "__main__":
    main()
