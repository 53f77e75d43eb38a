"""Static blocks against work stealing, at 2 ranks, on a skewed and on an even workload.

    python benchmarks/balance.py

Skewed: 20,000 rows through the digits MLP in chunks of 250, with an injected per-row
cost (HPCINFER_FAULT kind=rowcost) making the first half of the rows ten times costlier
than the second: the static split gives rank 0 all the heavy rows. Even: the MLP
throughput job's real compute (784-2048-2048-10, 65,536 rows, chunk 4,096), where
stealing has nothing to fix and its only effect is its overhead.

For each: makespan (first claim to the closing barrier), imbalance (max busy / mean
busy), efficiency (total busy / (ranks x makespan)), and the ideal makespan (total busy
time of the static run / ranks). Both policies run in the same invocation.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from bench_common import ROOT, WORK, run_hpcinfer
from mlp_throughput import make_inputs

SKEW = "kind=rowcost,seconds=0.00005,skew=10"


def run(job: Path, balance: str, fault: str | None) -> dict:
    r = run_hpcinfer(
        job,
        2,
        "--set",
        f"run.balance='{balance}'",
        env={"HPCINFER_FAULT": fault} if fault else None,
    )
    return {"metrics": r.metrics, **r.attrs["balance_summary"]}


def compare(title: str, job: Path, fault: str | None) -> None:
    static, steal = run(job, "static", fault), run(job, "steal", fault)
    ideal = sum(m["busy_seconds"] for m in static["metrics"]) / 2
    print(title)
    print(f"  ideal makespan (static total busy / 2): {ideal:7.3f} s")
    for name, r in (("static", static), ("steal", steal)):
        print(
            f"  {name:6s}: makespan {r['wall_seconds']:7.3f} s = {r['wall_seconds'] / ideal:5.3f}"
            f" x ideal, imbalance {r['imbalance']:.3f}, efficiency {r['efficiency']:6.1%}, "
            f"{r['stolen_chunks']} chunks stolen in {r['steals']} steals, chunks per rank "
            f"{[m['chunks'] for m in r['metrics']]}"
        )
    print(f"  steal / static makespan: {steal['wall_seconds'] / static['wall_seconds']:.3f}")


def skewed_job() -> Path:
    data = WORK / "skew-input.h5"
    if not data.exists():
        x = np.random.default_rng(0).random((20_000, 64), dtype=np.float32)
        with h5py.File(data, "w") as f:
            f.create_dataset("x", data=x)
    job = WORK / "skew.toml"
    job.write_text(
        f'[model]\npath = "{ROOT / "data/models/digits-mlp"}"\n'
        f'[input]\npath = "{data}"\ndataset = "x"\n[output]\npath = "{WORK / "unused.h5"}"\n'
        "[run]\nbatch_size = 250\nchunk_size = 250\n"
    )
    return job


def even_job() -> Path:
    model, data = make_inputs(65_536)
    job = WORK / "even.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{data}"\ndataset = "x"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n[run]\nbatch_size = 1024\nchunk_size = 4096\n'
    )
    return job


def main() -> None:
    WORK.mkdir(exist_ok=True)
    compare(
        "skewed: first half of the rows 10x costlier (injected), 80 chunks, 2 ranks",
        skewed_job(),
        SKEW,
    )
    compare("even: MLP 784-2048-2048-10, 65,536 rows, 16 chunks, 2 ranks", even_job(), None)


if __name__ == "__main__":
    main()
