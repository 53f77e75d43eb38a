"""What live progress costs: the MLP throughput job with progress on and --quiet.

    python benchmarks/progress_overhead.py

MLP 784-2048-2048-10, 65,536 rows in 32 chunks of 2048, 2 ranks; progress lines every
second (stderr is not a terminal here), alternated with --quiet three times in this one
invocation; the median makespan (first claim to the closing barrier) of each.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"


def makespan(job: Path, out: Path, *extra: str) -> tuple[float, int]:
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
        "--restart",
        "--set",
        f"output.path='{out}'",
        *extra,
    ]
    p = subprocess.run(cmd, check=True, capture_output=True, text=True)
    with h5py.File(out, "r") as f:
        seconds = max(m["loop_seconds"] for m in json.loads(f.attrs["rank_metrics"]))
    return seconds, p.stderr.count("rows/s, ETA")


def main() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mlp_throughput import make_inputs

    WORK.mkdir(exist_ok=True)
    model, data = make_inputs(65_536)
    job = WORK / "progress.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{data}"\ndataset = "x"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n'
    )
    out = WORK / "progress-out.h5"
    times: dict[str, list[float]] = {"progress": [], "quiet": []}
    lines = 0
    for _ in range(3):
        seconds, lines = makespan(job, out, "--progress-interval", "1")
        times["progress"].append(seconds)
        times["quiet"].append(makespan(job, out, "--quiet")[0])
    on, off = statistics.median(times["progress"]), statistics.median(times["quiet"])
    print("progress overhead: MLP 784-2048-2048-10, 65,536 rows, 32 chunks, 2 ranks")
    print(
        f"  progress every 1 s: makespan median {on:.3f} s {times['progress']} "
        f"({lines} lines in the last run)"
    )
    print(f"  --quiet           : makespan median {off:.3f} s {times['quiet']}")
    print(f"  overhead: {on / off - 1:+.2%}")
    out.unlink()


if __name__ == "__main__":
    main()
