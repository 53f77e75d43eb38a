"""What checkpointing costs, and how fast a killed run gets going again.

    python benchmarks/checkpoint.py

1. Overhead: the MLP throughput job (784-2048-2048-10, 65,536 rows, the default
   chunk_size 2048 and batch_size 256: 32 chunks) at 2 ranks with run.checkpoint = true
   (chunk files fsync'd, journal lines fsync'd) and false (same files, no fsync, no
   journal), alternated three times in this one invocation; the median makespan of each.
2. Restart: the same job killed (SIGKILL of one rank) after 8 chunks on each rank, then
   rerun: seconds from launching the rerun to the start of its first new chunk, against
   the same figure for a fresh run.
"""

from __future__ import annotations

import statistics

from bench_common import WORK, run_hpcinfer, write_job
from mlp_throughput import make_inputs


def first_new_chunk(run) -> float:
    """Seconds from launching a run to the start of its first chunk not resumed."""
    log = run.attrs["chunk_log"]
    return run.attrs["loop_start_unix"] + log["start"][~log["resumed"]].min() - run.launched


def main() -> None:
    model, data = make_inputs(65_536)
    job = write_job(WORK / "checkpoint.toml", model, data)
    times: dict[str, list[float]] = {"true": [], "false": []}
    for _ in range(3):
        for setting in ("true", "false"):
            run = run_hpcinfer(job, 2, "--restart", "--set", f"run.checkpoint={setting}")
            times[setting].append(run.makespan)
    on, off = statistics.median(times["true"]), statistics.median(times["false"])
    print("checkpoint overhead: MLP 784-2048-2048-10, 65,536 rows, 32 chunks of 2048, 2 ranks")
    for label, median in (("true", on), ("false", off)):
        runs = [round(t, 3) for t in times[label]]
        print(f"  checkpoint = {label:5s}: makespan median {median:.3f} s  {runs}")
    print(f"  overhead: {on / off - 1:+.2%}")

    fresh = first_new_chunk(run_hpcinfer(job, 2, "--restart"))
    killed = run_hpcinfer(
        job, 2, "--restart", check=False, env={"HPCINFER_FAULT": "after=8,kind=exit"}
    )
    assert killed.returncode != 0
    resumed = run_hpcinfer(job, 2)
    print(f"restart: {resumed.attrs['resumed_chunks']} of 32 chunks survived the kill")
    print(
        f"  launch -> first new chunk, resumed run: {first_new_chunk(resumed):.2f} s "
        f"(fresh run: {fresh:.2f} s)"
    )


if __name__ == "__main__":
    main()
