"""What checkpointing costs, and how fast a killed run gets going again.

    python benchmarks/checkpoint.py                 # the MLP job
    python benchmarks/checkpoint.py --job minilm    # jobs/minilm-embed.toml (jax backend)

1. Overhead: the MLP throughput job (784-2048-2048-10, 65,536 rows, the default
   chunk_size 2048 and batch_size 256: 32 chunks) at 2 ranks with run.checkpoint = true
   (chunk files fsync'd, journal lines fsync'd) and false (same files, no fsync, no
   journal), alternated three times in this one invocation; the median makespan of each.
   With --job minilm: jobs/minilm-embed.toml (1,627 texts) in chunks of 256 (7 chunks),
   with the jax backend to keep the run short. One unmeasured run comes first (it fills
   JAX's compilation cache and the page cache).
2. Restart: the same job killed (SIGKILL of one rank) after 8 chunks on each rank, then
   rerun: seconds from launching the rerun to the start of its first new chunk, against
   the same figure for a fresh run.
"""

from __future__ import annotations

import argparse
import statistics

from bench_common import ROOT, WORK, run_hpcinfer, write_job
from mlp_throughput import make_inputs


def first_new_chunk(run) -> float:
    """Seconds from launching a run to the start of its first chunk not resumed."""
    log = run.attrs["chunk_log"]
    return run.attrs["loop_start_unix"] + log["start"][~log["resumed"]].min() - run.launched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("mlp", "minilm"), default="mlp")
    args = parser.parse_args()
    if args.job == "mlp":
        model, data = make_inputs(65_536)
        job, extra = write_job(WORK / "checkpoint.toml", model, data), []
        title = "MLP 784-2048-2048-10, 65,536 rows, 32 chunks of 2048"
        kill_after = 8
    else:
        job = ROOT / "jobs" / "minilm-embed.toml"
        extra = ["--backend", "jax", "--quiet", "--set", "run.chunk_size=256"]
        title = "jobs/minilm-embed.toml (jax), 1,627 texts, 7 chunks of 256"
        kill_after = 3
    run_hpcinfer(job, 2, "--restart", *extra)  # unmeasured: JAX's compile cache, page cache
    times: dict[str, list[float]] = {"true": [], "false": []}
    for _ in range(3):
        for setting in ("true", "false"):
            run = run_hpcinfer(job, 2, "--restart", "--set", f"run.checkpoint={setting}", *extra)
            times[setting].append(run.makespan)
    on, off = statistics.median(times["true"]), statistics.median(times["false"])
    print(f"checkpoint overhead: {title}, 2 ranks")
    for label, median in (("true", on), ("false", off)):
        runs = [round(t, 3) for t in times[label]]
        print(f"  checkpoint = {label:5s}: makespan median {median:.3f} s  {runs}")
    print(f"  overhead: {on / off - 1:+.2%}")

    fresh = first_new_chunk(run_hpcinfer(job, 2, "--restart", *extra))
    fault = {"HPCINFER_FAULT": f"after={kill_after},kind=exit"}
    killed = run_hpcinfer(job, 2, "--restart", *extra, check=False, env=fault)
    assert killed.returncode != 0
    resumed = run_hpcinfer(job, 2, *extra)
    total = resumed.attrs["layout"]["n_chunks"]
    print(f"restart: {resumed.attrs['resumed_chunks']} of {total} chunks survived the kill")
    print(
        f"  launch -> first new chunk, resumed run: {first_new_chunk(resumed):.2f} s "
        f"(fresh run: {fresh:.2f} s)"
    )


if __name__ == "__main__":
    main()
