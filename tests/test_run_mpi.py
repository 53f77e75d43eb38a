"""End-to-end runs of real jobs under `mpiexec -n N`, each with a timeout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.conftest import DATA, DIGITS_JOB, hpcinfer

pytestmark = pytest.mark.mpi


def read_outputs(path):
    with h5py.File(path, "r") as f:
        return f["outputs"][:], dict(f.attrs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hpcinfer: error")]


class DigitsRuns(dict):
    """The shipped demo job's output at (ranks, backend), launched on first use."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, key):
        n, backend = key
        path = self.folder / f"{backend}-{n}.h5"
        p = hpcinfer(
            "run", str(DIGITS_JOB), "--backend", backend, "--set", f"output.path='{path}'", n=n
        )
        assert p.returncode == 0, p.stderr
        self[key] = path
        return path


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    return DigitsRuns(tmp_path_factory.mktemp("digits"))


@pytest.mark.slow  # bit-for-bit over rank counts runs fast in tests/mpi/test_engine_mpi.py
def test_rank_counts_give_bitwise_identical_outputs(digits_runs):
    ref, _ = read_outputs(digits_runs[(1, "numpy")])
    for n in (2, 3):
        got, _ = read_outputs(digits_runs[(n, "numpy")])
        assert got.tobytes() == ref.tobytes(), f"-n {n} differs from -n 1"


def test_outputs_match_scikit_learn_predict_proba(digits_runs):
    got, _ = read_outputs(digits_runs[(3, "numpy")])
    with h5py.File(DATA / "digits.h5", "r") as f:
        proba, labels, accuracy = f["sklearn_proba"][:], f["y"][:], f.attrs["sklearn_accuracy"]
    assert got.shape == (1797, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=2e-6)
    assert (got.argmax(1) == labels).mean() == pytest.approx(accuracy, abs=0)


@pytest.mark.slow  # JAX MLPs across ranks run fast in tests/test_tp_mpi.py (n2-tp2-jax)
def test_jax_agrees_with_numpy(digits_runs):
    ref, _ = read_outputs(digits_runs[(3, "numpy")])
    got, attrs = read_outputs(digits_runs[(2, "jax")])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert json.loads(attrs["layout"])["backend"] == "jax"


def test_output_attributes_and_no_leftovers(digits_runs):
    path = digits_runs[(3, "numpy")]
    _, attrs = read_outputs(path)
    assert attrs["hpcinfer_version"]
    assert attrs["model_path"].endswith("digits-mlp")
    identity = json.loads(attrs["model_identity"])
    assert len(identity["model file config.json"]) == 64  # content hash
    assert identity["model weights"]["files"][0]["name"] == "model.safetensors"
    assert attrs["input_path"].endswith("digits.h5")
    assert json.loads(attrs["input"]) == {"format": "hdf5", "dataset": "x", "rows": "numbers"}
    assert json.loads(attrs["layout"])["ranks"] == 3
    assert json.loads(attrs["job"])["run"]["chunk_size"] == 256
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        p.name for p in digits_runs.values() if p.parent == path.parent
    )


# Edge layouts (no rows, more ranks than chunks, uneven, one-row chunks) against a serial
# run, bit for bit: tests/mpi/test_engine_mpi.py, inside the one tests/mpi launch.


def bad_input_file(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((10, 63), np.float32))
        f.create_dataset("s", data=[b"a", b"b"])  # texts: not for an MLP
        f.create_dataset("v", data=np.array([b"ab"], dtype="V2"))  # opaque bytes
        f.create_group("g")
    return tmp_path / "bad.h5"


# Every bad input is covered in-process by tests/test_adversarial.py (one rank) and
# tests/mpi/test_bad_input_mpi.py (2 and 3 ranks); these two are real launches, the second
# found by every rank's plan after MPI is up, the first before.
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["run.colour=1"], "--set run.colour: unknown key"),
        (["input.path='{bad}'", "input.dataset='y'"], "dataset 'y' not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, digits_job, overrides, expected):
    job = digits_job()
    bad = bad_input_file(tmp_path)
    args = []
    for o in overrides:
        args += ["--set", o.format(bad=bad, job=job, tmp=tmp_path)]
    p = hpcinfer("run", str(job), *args, n=2, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = error_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert expected in lines[0]
    assert p.stderr.strip() == lines[0], "nothing but the one line (no traceback)"
    assert not (tmp_path / "out").exists()


def test_bad_job_file_is_one_line_and_exit_2(tmp_path):
    job = tmp_path / "j.toml"
    job.write_text("[model]\npath = 3\n")
    p = hpcinfer("run", str(job), n=3, timeout=60)
    assert p.returncode == 2
    assert error_lines(p.stderr) == [
        f"hpcinfer: error: {job}: model.path must be a path string, got 3"
    ]


@pytest.mark.parametrize("kind", ["raise", "exit"])
def test_failure_on_one_rank_ends_the_job_quickly(tmp_path, digits_job, kind):
    job = digits_job(chunk_size=16)  # 113 chunks: the other ranks are mid-run
    p = hpcinfer(  # a hang fails the test at the timeout
        "run", str(job), n=3, timeout=30, env={"HPCINFER_FAULT": f"rank=1,after=2,kind={kind}"}
    )
    assert p.returncode != 0
    if kind == "raise":
        assert "hpcinfer: error on rank 1 of 3" in p.stderr
        assert "injected fault" in p.stderr
    assert not (tmp_path / "out" / "digits.h5").exists()


def test_help_describes_the_job_file():
    p = hpcinfer("run", "--help", n=1, timeout=30)
    assert p.returncode == 0
    for word in ("batch_size", "chunk_size", "backend", "--set", "exit codes"):
        assert word in p.stdout
    p = hpcinfer("--help", n=1, timeout=30)
    assert p.returncode == 0 and "run" in p.stdout


def mpi_pytest(
    target: str, n: int, timeout: float = 300, test_timeout: int = 60, markexpr: str = ""
):
    """`mpiexec -n N python -m pytest TARGET`, each test bounded by pytest-timeout.

    The thread method is the one that works here: a rank stuck inside an MPI call never
    returns to Python to see a signal, so the watchdog thread ends the process, and
    mpiexec then ends the other ranks.
    """
    import subprocess
    import sys

    from tests.conftest import ROOT, mpiexec

    cmd = [
        mpiexec(),
        "-n",
        str(n),
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        f"timeout={test_timeout}",
        "-o",
        "timeout_method=thread",
        *(["-m", markexpr] if markexpr else []),
        target,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("n", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_mpi_test_suite_passes_under_mpiexec(n, request):
    """One launch runs every test in tests/mpi at n ranks; a session that leaves slow
    tests out leaves out the slow ones in there too."""
    markexpr = "not slow" if "not slow" in request.config.getoption("markexpr") else ""
    p = mpi_pytest("tests/mpi", n, markexpr=markexpr)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(" passed") == n  # every rank ran and passed the tests


FAILING_TESTS = """
import pytest
from tests.mpi.helpers import WORLD, collective

@collective
def test_fails_on_one_rank():
    assert WORLD.rank != 1, "rank 1 disagrees"

@collective
def test_collective_after_a_failure():
    assert WORLD.allreduce(1) == WORLD.size

def test_raises_before_a_collective():
    if WORLD.rank == 1:
        raise RuntimeError("rank 1 leaves early")
    WORLD.Barrier()   # rank 0 would wait here forever without the watchdog
"""


@pytest.mark.slow
def test_a_failing_mpi_test_fails_every_rank_and_never_hangs(tmp_path):
    (tmp_path / "test_failing_mpi.py").write_text(FAILING_TESTS)
    target = str(tmp_path / "test_failing_mpi.py")
    p = mpi_pytest(f"{target}::test_fails_on_one_rank", 2, timeout=60, test_timeout=10)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert out.count("rank 1 of 2: AssertionError: rank 1 disagrees") >= 2  # both ranks say so

    p = mpi_pytest(target, 2, timeout=60, test_timeout=10)  # a hang fails at the timeout
    assert p.returncode != 0
    assert "rank 1 leaves early" in p.stdout + p.stderr
