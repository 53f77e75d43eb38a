"""What live progress costs: the MLP throughput job with progress on and --quiet.

    python benchmarks/progress_overhead.py

MLP 784-2048-2048-10, 65,536 rows in 32 chunks of 2048, 2 ranks; progress lines every
second (stderr is not a terminal here), alternated with --quiet three times in this one
invocation; the median makespan (first claim to the closing barrier) of each.
"""

from __future__ import annotations

import statistics

from bench_common import WORK, run_hpcinfer, write_job
from mlp_throughput import make_inputs


def main() -> None:
    model, data = make_inputs(65_536)
    job = write_job(WORK / "progress.toml", model, data)
    times: dict[str, list[float]] = {"progress": [], "quiet": []}
    lines = 0
    for _ in range(3):
        run = run_hpcinfer(job, 2, "--restart", "--progress-interval", "1")
        times["progress"].append(run.makespan)
        lines = run.stderr.count("rows/s, ETA")
        times["quiet"].append(run_hpcinfer(job, 2, "--restart", "--quiet").makespan)
    on, off = statistics.median(times["progress"]), statistics.median(times["quiet"])
    print("progress overhead: MLP 784-2048-2048-10, 65,536 rows, 32 chunks, 2 ranks")
    for label, median in (("progress every 1 s", on), ("--quiet", off)):
        runs = [round(t, 3) for t in times["progress" if "every" in label else "quiet"]]
        print(f"  {label:18s}: makespan median {median:.3f} s  {runs}")
    print(f"  ({lines} progress lines in the last run); overhead: {on / off - 1:+.2%}")


if __name__ == "__main__":
    main()
