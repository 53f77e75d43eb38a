"""The sbatch scripts in slurm/, submitted to a real SLURM.

Needs running SLURM daemons and SLURM_CONF pointing at their config: `.ci/run` starts a
single-node SLURM with slurm/ci/start-slurm.sh. Elsewhere these tests are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.conftest import DIGITS_JOB, ROOT, hpcinfer, wait_for, with_faults

SLURM_DIR = ROOT / "slurm"


def slurm_up() -> str | None:
    """Why SLURM cannot be used here, or None when it can."""
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (start SLURM with slurm/ci/start-slurm.sh)"
    if not shutil.which("sbatch"):
        return "sbatch is not installed"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if p.returncode != 0 or ("idle" not in p.stdout and "mix" not in p.stdout):
        return f"no idle SLURM node (sinfo: {p.stdout.strip() or p.stderr.strip()})"
    return None


needs_slurm = pytest.mark.skipif(slurm_up() is not None, reason=str(slurm_up()))
pytestmark = [pytest.mark.slurm]


def sbatch(
    script: str, *args: str, out: Path, env: dict | None = None, options: tuple[str, ...] = ()
) -> str:
    env = with_faults({**os.environ, "HPCINFER_PYTHON": sys.executable, **(env or {})})
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    p = subprocess.run(
        ["sbatch", "--parsable", f"--output={out}", *options, str(SLURM_DIR / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def job_state(job_id: str) -> dict[str, str]:
    p = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10
    )
    return dict(re.findall(r"(\w+)=(\S+)", p.stdout))


def wait_for_state(job_id: str, states: set[str], timeout: float = 120) -> dict[str, str]:
    """Poll (sbatch --wait polls slowly) until the job is in one of `states`."""
    info: dict[str, str] = {}

    def reached() -> bool:
        info.update(job_state(job_id))
        return info.get("JobState") in states

    wait_for(reached, timeout, f"job {job_id} to reach {sorted(states)}")
    return info


def outputs(path: Path):
    with h5py.File(path, "r") as f:
        return f["outputs"][:], dict(f.attrs)


@pytest.fixture(scope="module")
def mpirun_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    p = hpcinfer(
        "run", str(DIGITS_JOB), "--set", "run.chunk_size=16", "--set", f"output.path='{out}'", n=2
    )
    assert p.returncode == 0, p.stderr
    return outputs(out)[0]


def test_scripts_are_valid_bash():
    for script in SLURM_DIR.glob("*.sbatch"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        assert "usage: sbatch" in script.read_text()


@needs_slurm
def test_cpu_script_matches_mpirun(tmp_path, mpirun_reference):
    out = tmp_path / "cpu.h5"
    job_id = sbatch(
        "cpu.sbatch",
        str(DIGITS_JOB),
        "--set",
        "run.chunk_size=16",
        "--set",
        f"output.path='{out}'",
        out=tmp_path / "cpu.out",
        options=("--ntasks=2",),
    )
    info = wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = (tmp_path / "cpu.out").read_text()
    assert info["JobState"] == "COMPLETED", log
    got, attrs = outputs(out)
    assert got.tobytes() == mpirun_reference.tobytes()
    assert '"ranks": 2' in attrs["layout"]


@needs_slurm
def test_preemptible_script_requeues_and_resumes(tmp_path, mpirun_reference):
    out, log_path = tmp_path / "pre.h5", tmp_path / "pre.out"
    job_id = sbatch(
        "preemptible.sbatch",
        str(DIGITS_JOB),
        "--set",
        "run.chunk_size=16",
        "--set",
        f"output.path='{out}'",
        out=log_path,
        options=("--ntasks=2",),
        env={"HPCINFER_FAULT": "kind=delay,seconds=0.05"},
    )
    wait_for_state(job_id, {"RUNNING"})
    partial = tmp_path / "pre.h5.partial"
    wait_for(lambda: len(list(partial.glob("chunk-*.bin"))) >= 10, 60, "10 chunk files")
    # The early warning, as --signal=B:USR1@... would send it: to the batch shell.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=10)
    info = wait_for_state(job_id, {"PENDING", "COMPLETED", "FAILED"})
    assert info["JobState"] == "PENDING", log_path.read_text()  # requeued
    assert int(info["Restarts"]) == 1
    # A requeued job waits ~2 minutes (BeginTime); start it now.
    subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=10
    )
    info = wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    log = log_path.read_text()
    assert info["JobState"] == "COMPLETED", log
    assert "requeueing" in log and "start 2" in log
    assert re.search(r"resuming: ([1-9]\d*) of 113 chunks already done", log), log
    got, attrs = outputs(out)
    assert attrs["resumed_chunks"] >= 10  # resumed, not restarted from zero
    assert got.tobytes() == mpirun_reference.tobytes()
    assert not partial.exists()


@needs_slurm
def test_a_real_error_fails_once_and_does_not_requeue(tmp_path):
    log_path = tmp_path / "bad.out"
    job_id = sbatch(
        "preemptible.sbatch",
        str(DIGITS_JOB),
        "--set",
        "input.path='nope.h5'",
        "--set",
        f"output.path='{tmp_path / 'bad.h5'}'",
        out=log_path,
        options=("--ntasks=2",),
    )
    info = wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    log = log_path.read_text()
    assert info["JobState"] == "FAILED", log
    assert info["ExitCode"].startswith("2:"), info
    assert int(info["Restarts"]) == 0
    assert "nope.h5: input file not found" in log
    assert log.count("start 1") == 1 and "requeueing" not in log
