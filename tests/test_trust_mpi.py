"""Nothing lost, mixed or overwritten: concurrent runs, outputs that alias inputs, changed
models and inputs, folders hpcinfer did not make, a full disk at the end, Ctrl-C, stray
fault variables, private intermediates. Cases about ranks and processes run real jobs
under mpiexec; cases about files alone run `hpcinfer` in this process (`here`), one rank."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinfer.cli import main
from tests.adversarial import keep_thread_settings
from tests.conftest import (
    DATA,
    ROOT,
    fast_and_slow,
    hpcinfer,
    journal_records,
    mpiexec,
    wait_for,
    with_faults,
    write_job,
)

pytestmark = pytest.mark.mpi
SLOW = {"HPCINFER_FAULT": "kind=delay,seconds=0.02"}
ROUNDS = int(os.environ.get("HPCINFER_SOAK", "0")) or 4


@pytest.fixture
def here(monkeypatch, capsys):
    """`hpcinfer ARGS` in this process (one rank, no launch), as a CompletedProcess."""
    keep_thread_settings(monkeypatch)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def outputs(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["outputs"][:]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(p: subprocess.CompletedProcess) -> str:
    lines = [s for s in p.stderr.splitlines() if s.startswith("hpcinfer: error")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and "MPI_Abort" not in p.stderr, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    p = hpcinfer(
        "run", "jobs/digits-mlp.toml", "--set", "run.chunk_size=16", "--set", f"output.path='{out}'"
    )
    assert p.returncode == 0, p.stderr
    return outputs(out)


@pytest.fixture
def job(digits_job):
    return digits_job(chunk_size=16)


def out_of(tmp_path: Path) -> Path:
    return tmp_path / "out" / "digits.h5"


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").glob("*") if p.name != "digits.h5")


# -- one run per output ------------------------------------------------------------------


@pytest.mark.parametrize("rounds", fast_and_slow([1, ROUNDS], {1}, ids=lambda r: f"{r}-rounds"))
def test_two_runs_of_one_job_at_once_never_both_write(tmp_path, job, reference, rounds):
    """Two launches of the same job start together, again and again: one refuses (or,
    when the first was done before the second looked, finds it complete); the output is
    always whole and right, and nothing is left behind."""
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpcinfer", "run", str(job), "--quiet"]
    env = with_faults({**os.environ, **SLOW})
    for _ in range(rounds):
        out_of(tmp_path).unlink(missing_ok=True)
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            results.append((proc.returncode, stdout.decode(), stderr.decode()))
        codes = sorted(r[0] for r in results)
        assert codes in ([0, 2], [0, 0]), results
        if codes == [0, 2]:
            refused = next(r for r in results if r[0] == 2)
            assert "holds this output" in refused[2] and "pid" in refused[2], refused
        else:
            assert any("already complete" in r[1] for r in results), results
        assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()
        assert leftovers(tmp_path) == []


def write_lock(tmp_path: Path, host: str, pid: int, age: float = 0.0) -> Path:
    lock = out_of(tmp_path).with_name("digits.h5.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "run_id": "x" * 32,
        "host": host,
        "pid": pid,
        "pid_start": None,
        "started_utc": "2026-01-01T00:00:00+00:00",
        "job": "elsewhere.toml",
    }
    lock.write_text(json.dumps(info))
    then = time.time() - age
    os.utime(lock, (then, then))
    return lock


def test_a_lock_held_by_a_live_run_elsewhere_refuses(tmp_path, job, here):
    lock = write_lock(tmp_path, "node-that-is-not-this-one", 4242)
    p = here("run", str(job))
    assert p.returncode == 2
    assert "node-that-is-not-this-one" in error_line(p) and "4242" in error_line(p)
    assert lock.exists() and not out_of(tmp_path).exists()
    assert "running: a run on host node-that-is-not-this-one" in here("status", str(job)).stdout


@pytest.mark.parametrize(
    ("host", "age"),
    [(socket.gethostname(), 0.0), ("node-that-died", 3600.0)],
    ids=["dead-pid-here", "silent-for-an-hour"],
)
def test_a_stale_lock_is_cleared(tmp_path, job, reference, host, age):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now (and, being reaped, not a zombie)
    write_lock(tmp_path, host, dead.pid, age)
    p = hpcinfer("run", str(job), n=2)
    assert p.returncode == 0, p.stderr
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()
    assert leftovers(tmp_path) == []


def test_a_lock_file_that_is_not_ours_is_never_removed(tmp_path, job, here):
    lock = out_of(tmp_path).with_name("digits.h5.lock")
    lock.parent.mkdir(parents=True)
    lock.write_text("my notes\n")
    p = here("run", str(job))
    assert p.returncode == 2 and "not an hpcinfer run lock" in error_line(p)
    assert lock.read_text() == "my notes\n"


# -- the output never aliases what the job reads ------------------------------------------


def alias_cases(tmp_path: Path) -> dict[str, tuple[str, Path]]:
    """Output spellings that name a file the job reads, and that file."""
    data = tmp_path / "data"
    data.mkdir()
    x = data / "x.h5"
    x.write_bytes((DATA / "digits.h5").read_bytes())
    model = tmp_path / "model"
    model.mkdir()
    for f in (DATA / "models" / "digits-mlp").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (tmp_path / "link.h5").symlink_to(x)
    os.link(x, tmp_path / "hard.h5")
    return {
        "dot-dot": (f"{data}/../data/x.h5", x),
        "double-slash": (f"{data}//x.h5", x),
        "symlink": (str(tmp_path / "link.h5"), x),
        "hard-link": (str(tmp_path / "hard.h5"), x),
        "model-weights": (str(model / "model.safetensors"), model / "model.safetensors"),
        "inside-model": (str(model / "new.h5"), model / "config.json"),
    }


@pytest.mark.parametrize(
    "case", ["dot-dot", "double-slash", "symlink", "hard-link", "model-weights", "inside-model"]
)
def test_the_output_never_overwrites_the_input_or_the_model(tmp_path, case, here):
    output, victim = alias_cases(tmp_path)[case]
    before = digest(victim)
    job = write_job(
        tmp_path / "job.toml",
        model={"path": str(tmp_path / "model")},
        input={"path": str(tmp_path / "data" / "x.h5"), "dataset": "x"},
        output={"path": output},
    )
    p = here("run", str(job), "--overwrite")
    assert p.returncode == 2, p.stderr
    line = error_line(p)
    assert "reads" in line or "inside the model folder" in line, line
    assert digest(victim) == before


def test_an_output_that_is_the_job_file_is_refused(tmp_path, digits_job, here):
    job = digits_job()
    text = job.read_text().replace(str(out_of(job.parent)), str(job))
    job.write_text(text)
    before = digest(job)
    p = here("run", str(job), "--overwrite")
    assert p.returncode == 2 and "a file this job reads" in error_line(p)
    assert digest(job) == before


def test_an_existing_file_that_is_not_this_jobs_output_needs_overwrite(
    tmp_path, job, reference, here
):
    out = out_of(tmp_path)
    out.parent.mkdir()
    out.write_text("someone's notes\n")
    p = here("run", str(job))
    assert (
        p.returncode == 2
        and "not an hpcinfer output" in error_line(p)
        and "--overwrite" in p.stderr
    )
    assert out.read_text() == "someone's notes\n"
    p = here("run", str(job), "--overwrite")
    assert p.returncode == 0, p.stderr
    assert outputs(out).tobytes() == reference.tobytes()


# -- a job's identity covers everything that changes its results --------------------------


def copy_model(tmp_path: Path, name: str = "gpt2") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in (DATA / "models" / "tiny-gpt2").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def text_job(tmp_path: Path, model: Path, n: int = 64) -> Path:
    corpus = tmp_path / "texts.jsonl"
    lines = (DATA / "corpus.jsonl").read_text().splitlines()[:n]
    corpus.write_text("\n".join(lines) + "\n")
    return write_job(
        tmp_path / "score.toml",
        model={"path": str(model)},
        input={"path": str(corpus)},
        output={"path": str(tmp_path / "out" / "scores.h5")},
        run={"chunk_size": 8, "batch_size": 8, "backend": "numpy"},
    )


def test_a_changed_tokenizer_refuses_the_resume_and_names_the_file(tmp_path):
    model = copy_model(tmp_path)
    job = text_job(tmp_path, model)
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=2,kind=exit"})
    assert p.returncode != 0
    assert (tmp_path / "out" / "scores.h5.partial").is_dir()
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["added_tokens"] = tok.get("added_tokens", [])[:0]  # a different tokenizer
    (model / "tokenizer.json").write_text(json.dumps(tok, indent=2))
    p = hpcinfer("run", str(job), n=2)
    assert p.returncode == 2
    assert "model file tokenizer.json" in error_line(p) and "--restart" in p.stderr
    assert hpcinfer("run", str(job), "--restart", n=2).returncode == 0


@pytest.mark.slow  # the identity check runs fast in the changed-tokenizer test above
def test_a_changed_model_is_not_already_complete(tmp_path):
    model = copy_model(tmp_path)
    job = text_job(tmp_path, model, n=16)
    assert hpcinfer("run", str(job), n=1).returncode == 0
    config = json.loads((model / "config.json").read_text())
    config["layer_norm_epsilon"] = 1e-3
    (model / "config.json").write_text(json.dumps(config))
    p = hpcinfer("run", str(job), n=1)
    assert p.returncode == 2 and "already complete" not in p.stdout
    assert "an hpcinfer output of another job" in error_line(p)


# -- hpcinfer deletes only what it provably made -----------------------------------------


def test_a_partial_folder_hpcinfer_did_not_make_is_never_deleted(tmp_path, job):
    folder = out_of(tmp_path).with_name("digits.h5.partial")
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("mine")
    for extra in ([], ["--restart"]):
        p = hpcinfer("run", str(job), *extra, n=2)
        assert p.returncode == 2 and "hpcinfer did not make it" in error_line(p)
        assert (folder / "precious.txt").read_text() == "mine"


def test_a_damaged_fingerprint_is_an_error_not_a_silent_restart(tmp_path, job, reference):
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=3,kind=exit"})
    assert p.returncode != 0
    folder = out_of(tmp_path).with_name("digits.h5.partial")
    chunks = sorted(folder.glob("chunk-*.bin"))
    assert chunks
    (folder / "fingerprint.json").write_text("{ damaged")
    p = hpcinfer("run", str(job), n=2)
    assert p.returncode == 2
    line = error_line(p)
    assert "fingerprint.json" in line and "--restart" in line
    assert sorted(folder.glob("chunk-*.bin")) == chunks  # nothing thrown away
    p = hpcinfer("run", str(job), "--restart", n=2)
    assert p.returncode == 0, p.stderr
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()


# -- failures at the end are clean -------------------------------------------------------


def test_a_full_disk_while_assembling_keeps_the_chunks_and_the_rerun_completes(
    tmp_path, job, reference
):
    full = {"HPCINFER_FAULT": "rank=0,at=assemble,kind=fsize,bytes=20000"}
    p = hpcinfer("run", str(job), n=2, env=full)
    assert p.returncode == 75, p.stderr
    assert "free space and rerun the same command" in error_line(p) or "File too large" in p.stderr
    folder = out_of(tmp_path).with_name("digits.h5.partial")
    assert len(list(folder.glob("chunk-*.bin"))) == 113
    assert not out_of(tmp_path).exists() and not list(folder.glob(".assembling-*"))
    p = hpcinfer("run", str(job), n=2)
    assert p.returncode == 0, p.stderr
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()


# -- a rank that dies ----------------------------------------------------------------------


def test_a_rank_that_dies_stops_the_others_even_when_the_launcher_does_not(
    tmp_path, job, reference
):
    """Hydra's -disable-auto-cleanup leaves the other ranks running when one dies, as a
    plain srun without --kill-on-bad-exit does: they must not wait for it forever in the
    closing barrier. The survivors stop with one line; the rerun completes the job."""
    cmd = [mpiexec(), "-disable-auto-cleanup", "-n", "3", sys.executable, "-m", "hpcinfer"]
    dies = with_faults({**os.environ, "HPCINFER_FAULT": "rank=1,after=2,kind=exit"})
    p = subprocess.run(
        [*cmd, "run", str(job), "--quiet"], capture_output=True, text=True, timeout=90, env=dies
    )
    if "disable-auto-cleanup" in p.stderr and "unrecognized" in p.stderr.lower():
        pytest.skip("this mpiexec has no -disable-auto-cleanup (not hydra)")
    assert p.returncode != 0
    assert "rank 1 (pid" in p.stderr and "ended before the run did" in p.stderr, p.stderr
    assert not out_of(tmp_path).exists()
    rerun = hpcinfer("run", str(job), "--quiet", n=2)  # resumed on another layout
    assert rerun.returncode == 0, rerun.stderr
    assert "by earlier runs" in rerun.stdout, rerun.stdout
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()


# -- Ctrl-C, fault injection, privacy ----------------------------------------------------


def test_ctrl_c_stops_like_sigterm_and_the_rerun_resumes(tmp_path, job, reference):
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpcinfer", "run", str(job), "--quiet"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=with_faults({**os.environ, **SLOW}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    partial = out_of(tmp_path).with_name("digits.h5.partial")
    wait_for(lambda: journal_records(partial) >= 4, 60, "4 chunks done", proc)
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the launcher
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stderr
    assert "run the same command again to resume" in stderr
    p = hpcinfer("run", str(job), n=2)
    assert p.returncode == 0 and "resuming" in p.stdout
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()


def test_a_stray_fault_variable_changes_nothing(tmp_path, job, reference):
    env = {k: v for k, v in os.environ.items() if k != "HPCINFER_TESTING"}
    env["HPCINFER_FAULT"] = "rank=0,after=0,kind=raise"  # no HPCINFER_TESTING=1 beside it
    p = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, "-m", "hpcinfer", "run", str(job)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert outputs(out_of(tmp_path)).tobytes() == reference.tobytes()


def test_results_of_private_data_stay_private(tmp_path, digits_job):
    private = tmp_path / "private.h5"
    private.write_bytes((DATA / "digits.h5").read_bytes())
    private.chmod(0o600)
    job = digits_job(input_path=private, chunk_size=16)
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=3,kind=exit"})
    folder = out_of(tmp_path).with_name("digits.h5.partial")
    assert folder.stat().st_mode & 0o077 == 0  # owner only
    assert all(c.stat().st_mode & 0o077 == 0 for c in folder.glob("chunk-*.bin"))
    p = hpcinfer("run", str(job), n=2)
    assert p.returncode == 0, p.stderr
    assert out_of(tmp_path).stat().st_mode & 0o077 == 0


def test_the_identity_covers_a_modules_weights_and_the_prompt(tmp_path):
    from hpcinfer.checkpoint.identity import model_identity

    folder = tmp_path / "st"
    import shutil

    shutil.copytree(DATA / "fixtures" / "st-dense-normalize", folder)
    before = model_identity(folder)
    assert "model weights 2_Dense/model.safetensors" in before
    dense = folder / "2_Dense" / "model.safetensors"
    os.utime(dense, (1, 1))  # a rewritten Dense (same size) changes the identity
    assert model_identity(folder) != before
    from hpcinfer.checkpoint.identity import OUTPUT_SETTINGS

    assert ("model", "prompt_name") in OUTPUT_SETTINGS
