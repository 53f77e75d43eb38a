"""What every benchmark needs: launch a real hpcinfer run, read back what it recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"


@dataclass
class Run:
    returncode: int
    stderr: str
    launched: float  # time.time() just before the launch
    attrs: dict | None  # the output's attributes (JSON ones decoded), if it was written
    outputs: np.ndarray | None  # the "outputs" dataset, when asked for

    @property
    def metrics(self) -> list[dict]:
        return self.attrs["rank_metrics"]

    @property
    def makespan(self) -> float:
        """First claim to the closing barrier (model loaded; no start-up, no assembly)."""
        return max(m["loop_seconds"] for m in self.metrics)

    @property
    def rows_per_second(self) -> float:
        return self.attrs["n_rows"] / self.makespan


def write_job(path: Path, model: Path, data: Path, **run) -> Path:
    """A job file over `model` and `data` (dataset "x"); `run` are [run] keys."""
    lines = [
        f'[model]\npath = "{model}"',
        f'[input]\npath = "{data}"\ndataset = "x"',
        f'[output]\npath = "{WORK / "unused.h5"}"',
        "[run]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in run.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_hpcinfer(
    job: Path,
    ranks: int,
    *args: str,
    env: dict | None = None,
    check: bool = True,
    keep_outputs: bool = False,
) -> Run:
    """`mpiexec -n RANKS python -m hpcinfer run JOB ARGS` into a scratch output file."""
    WORK.mkdir(exist_ok=True)
    out = WORK / f"run-{os.getpid()}.h5"
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
        "--set",
        f"output.path='{out}'",
        *args,
    ]
    launched = time.time()
    env = {**os.environ, **(env or {})}
    if env.get("HPCINFER_FAULT"):  # injected costs and kills: honoured only with the switch
        env["HPCINFER_TESTING"] = "1"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"hpcinfer failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    attrs = outputs = None
    if p.returncode == 0 and out.exists():
        with h5py.File(out, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            attrs["chunk_log"] = f["run/chunks"][:]
            outputs = f["outputs"][:] if keep_outputs else None
        out.unlink()
    return Run(p.returncode, p.stderr, launched, attrs, outputs)


def _decode(value):
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def wide_mlp_job(name: str, rows: int, **run) -> Path:
    """A job over the 4096-16384-4096 MLP (537 MB F32) and `rows` random rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_big_mlp", ROOT / "data/make_big_mlp.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    WORK.mkdir(exist_ok=True)
    model, data = WORK / "mlp-4096-16384-4096", WORK / f"wide-input-{rows}.h5"
    if not (model / "model.safetensors").exists():
        make.make_mlp(model, [4096, 16384, 4096])
    if not data.exists():
        make.make_input(data, rows, 4096)
    return write_job(WORK / f"{name}.toml", model, data, **run)
