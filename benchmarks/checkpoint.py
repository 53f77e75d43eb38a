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

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"


def launch(job: Path, out: Path, *extra: str, fault: str | None = None) -> tuple[int, float]:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [
        mpiexec,
        "-n",
        "2",
        sys.executable,
        "-m",
        "hpcinfer",
        "run",
        str(job),
        "--set",
        f"output.path='{out}'",
        *extra,
    ]
    env = {**os.environ, **({"HPCINFER_FAULT": fault} if fault else {})}
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return p.returncode, t0


def makespan(out: Path) -> float:
    with h5py.File(out, "r") as f:
        return max(m["loop_seconds"] for m in json.loads(f.attrs["rank_metrics"]))


def first_new_chunk(out: Path, launched: float) -> float:
    with h5py.File(out, "r") as f:
        log = f["run/chunks"][:]
        epoch = float(f.attrs["loop_start_unix"])
    return epoch + log["start"][~log["resumed"]].min() - launched


def main() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mlp_throughput import make_inputs

    WORK.mkdir(exist_ok=True)
    model, data = make_inputs(65_536)
    job = WORK / "checkpoint.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{data}"\ndataset = "x"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n'
    )
    out = WORK / "checkpoint-out.h5"
    times: dict[str, list[float]] = {"true": [], "false": []}
    for _ in range(3):
        for setting in ("true", "false"):
            rc, _ = launch(job, out, "--restart", "--set", f"run.checkpoint={setting}")
            assert rc == 0
            times[setting].append(makespan(out))
    on, off = statistics.median(times["true"]), statistics.median(times["false"])
    print("checkpoint overhead: MLP 784-2048-2048-10, 65,536 rows, 32 chunks of 2048, 2 ranks")
    for label, median in (("true", on), ("false", off)):
        runs = [round(t, 3) for t in times[label]]
        print(f"  checkpoint = {label:5s}: makespan median {median:.3f} s  {runs}")
    print(f"  overhead: {on / off - 1:+.2%}")

    rc, launched = launch(job, out, "--restart")
    fresh = first_new_chunk(out, launched)
    rc, _ = launch(job, out, "--restart", fault="after=8,kind=exit")
    assert rc != 0
    rc, launched = launch(job, out)
    assert rc == 0
    with h5py.File(out, "r") as f:
        resumed = int(f.attrs["resumed_chunks"])
    print(f"restart: {resumed} of 32 chunks survived the kill")
    print(
        f"  launch -> first new chunk, resumed run: {first_new_chunk(out, launched):.2f} s "
        f"(fresh run: {fresh:.2f} s)"
    )
    out.unlink()


if __name__ == "__main__":
    main()
