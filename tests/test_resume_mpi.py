"""Checkpointed progress: kills at random points, resume on other layouts, bad records,
graceful stop. Every rerun is compared with an uninterrupted run, bit for bit where the
layout is the same.

The soak (many random kills) runs with HPCINFER_SOAK=N (e.g. 50); CI runs a quick set.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, hpcinfer, journal_records, mpiexec, wait_for, with_faults

pytestmark = pytest.mark.mpi

SOAK = int(os.environ.get("HPCINFER_SOAK", "0"))
N_CHUNKS = 113  # 1797 digits rows in chunks of 16
SLOW = {"HPCINFER_FAULT": "kind=delay,seconds=0.04"}  # long enough to be killed mid-run


def outputs(path):
    with h5py.File(path, "r") as f:
        return f["outputs"][:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's outputs (2 ranks, chunks of 16)."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    p = hpcinfer(
        "run",
        "jobs/digits-mlp.toml",
        "--set",
        "run.chunk_size=16",
        "--set",
        f"output.path='{out}'",
        n=2,
    )
    assert p.returncode == 0, p.stderr
    return outputs(out)


@pytest.fixture
def job(digits_job):
    return digits_job(chunk_size=16)


def out_of(tmp_path):
    return tmp_path / "out" / "digits.h5"


def partial_of(tmp_path):
    return tmp_path / "out" / "digits.h5.partial"


def status(job):
    p = subprocess.run(
        [sys.executable, "-m", "hpcinfer", "status", str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def resume_and_compare(job, tmp_path, reference, n=2, extra=(), bitwise=True):
    p = hpcinfer("run", str(job), *extra, n=n, timeout=120)
    assert p.returncode == 0, p.stderr
    got = outputs(out_of(tmp_path))
    if bitwise:
        assert got.tobytes() == reference.tobytes()
    else:
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    assert not partial_of(tmp_path).exists()
    return p


def test_resume_after_a_rank_is_killed_on_fewer_ranks(tmp_path, job, reference):
    p = hpcinfer("run", str(job), n=3, env={"HPCINFER_FAULT": "rank=1,after=5,kind=exit"})
    assert p.returncode != 0
    assert not out_of(tmp_path).exists()
    assert "partial run" in status(job)
    p = resume_and_compare(job, tmp_path, reference, n=2)
    assert "resuming:" in p.stdout
    with h5py.File(out_of(tmp_path), "r") as f:
        assert f.attrs["resumed_chunks"] > 0
        assert f["run/chunks"]["resumed"].sum() == f.attrs["resumed_chunks"]
    assert "complete" in status(job)


def test_resume_from_tp1_to_tp2(tmp_path, job, reference):
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=20,kind=exit"})
    assert p.returncode != 0
    resume_and_compare(job, tmp_path, reference, n=2, extra=("--tp", "2"), bitwise=False)


def test_a_kill_in_the_middle_of_a_chunk_write(tmp_path, job, reference):
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=3,kind=exit,at=write"})
    assert p.returncode != 0
    assert list(partial_of(tmp_path).glob(".chunk-*.tmp")), "the kill left a half-written file"
    resume_and_compare(job, tmp_path, reference)


def test_a_partial_run_of_another_job_is_refused_until_restart(tmp_path, job, reference):
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=4,kind=exit"})
    assert p.returncode != 0
    p = hpcinfer("run", str(job), "--set", "run.dtype='float64'", n=2)
    assert p.returncode == 2
    assert "a partial run of a different job" in p.stderr and "--restart" in p.stderr
    assert "dtype" in p.stderr
    p = hpcinfer("run", str(job), "--set", "run.dtype='float64'", "--restart", n=2)
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(outputs(out_of(tmp_path)), reference, rtol=1e-5, atol=1e-6)


def test_damaged_records_and_chunk_files_are_not_trusted(tmp_path, job, reference):
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=1,after=30,kind=exit"})
    assert p.returncode != 0
    partial = partial_of(tmp_path)
    journal = max(partial.glob("journal-*.log"), key=lambda p: p.stat().st_size)
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) >= 4
    lines[2] = lines[2].replace('"rows": 16', '"rows": 61')  # a flipped byte
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # a torn last line
    journal.write_text("".join(lines))
    victim = sorted(partial.glob("chunk-*.bin"))[5]  # a damaged chunk file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    before = status(job)
    p = resume_and_compare(job, tmp_path, reference)
    assert "not trusted" in p.stdout
    assert "damaged record" in p.stdout and "does not match its record" in p.stdout
    assert "partial run" in before


def test_graceful_stop_on_sigterm(tmp_path, job, reference):
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpcinfer", "run", str(job)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=with_faults({**os.environ, **SLOW}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = out_of(tmp_path).with_name("digits.h5.partial")
    wait_for(lambda: journal_records(partial) >= 4, 60, "4 chunks done", proc)
    proc.send_signal(signal.SIGTERM)  # mpiexec passes it on to every rank
    _, stderr = proc.communicate(timeout=30)  # every rank gone within the timeout
    assert proc.returncode == 75, stderr
    assert "stopped by signal" in stderr
    assert "partial run" in status(job)
    resume_and_compare(job, tmp_path, reference)


def test_status_before_and_after(tmp_path, job):
    assert "not started (113 chunks" in status(job)
    p = hpcinfer("run", str(job), n=1)
    assert p.returncode == 0
    assert "complete" in status(job)
    p = hpcinfer("run", str(job), n=1)
    assert "already complete" in p.stdout
    modules = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; from hpcinfer.cli import main; "
                f"assert main(['status', '{job}']) == 0; print(sorted(sys.modules))"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert modules.returncode == 0, modules.stderr
    assert "complete" in modules.stdout and "'hpcinfer.tools.status'" in modules.stdout
    assert "'mpi4py'" not in modules.stdout  # status needs no MPI


def test_checkpoint_off_still_gives_the_same_output(tmp_path, job, reference):
    p = hpcinfer("run", str(job), "--set", "run.checkpoint=false", n=2)
    assert p.returncode == 0, p.stderr
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()


def kill_rank_at_random(tmp_path, job, rng):
    point = rng.choice(["chunk", "write"])
    fault = f"rank={rng.randrange(2)},after={rng.randrange(40)},kind=exit,at={point}"
    return hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": fault})


def kill_launcher_at_random(tmp_path, job, rng):
    """SIGKILL the whole process group (mpiexec, proxies, ranks): a node dying, after a
    random number of chunks have been recorded (0: before or during start-up)."""
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpcinfer", "run", str(job)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=with_faults({**os.environ, **SLOW}),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = out_of(tmp_path).with_name("digits.h5.partial")
    done_before = journal_records(partial)
    target = done_before + rng.randrange(0, 40)
    wait_for(lambda: journal_records(partial) >= target or proc.poll() is not None, 120, "chunks")
    with contextlib.suppress(ProcessLookupError):  # it may have finished first
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return proc


@pytest.mark.parametrize(
    "seed", [s if s == 0 else pytest.param(s, marks=pytest.mark.slow) for s in range(SOAK or 3)]
)
@pytest.mark.parametrize(  # the fast subset kills the launcher (SIGKILL from outside)
    "how",
    [
        pytest.param(kill_rank_at_random, id="rank", marks=pytest.mark.slow),
        pytest.param(kill_launcher_at_random, id="launcher"),
    ],
)
def test_random_kills_then_resume_bit_for_bit(tmp_path, job, reference, seed, how):
    rng = random.Random(seed)
    for _ in range(2):  # killed twice, then run to the end
        how(tmp_path, job, rng)
    resume_and_compare(job, tmp_path, reference, n=rng.choice([1, 2, 3]))
