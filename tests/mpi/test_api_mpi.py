"""hpcinfer.run from Python, on every rank of the launch (tests/mpi runs at -n 1, 2, 3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import hpcinfer
from tests.conftest import DATA, DIGITS_JOB
from tests.mpi.helpers import WORLD, collective


@pytest.fixture
def shared_tmp():
    path = WORLD.bcast(tempfile.mkdtemp(prefix="hpcinfer-api-") if WORLD.rank == 0 else None)
    yield Path(path)
    WORLD.Barrier()


@collective
def test_run_a_job_built_in_code_returns_the_output(shared_tmp):
    job = {
        "model": {"path": str(DATA / "models" / "digits-mlp")},
        "input": {"path": str(DATA / "digits.h5"), "dataset": "x"},
        "output": {"path": "digits.h5"},  # relative: against base
        "run": {"chunk_size": 128},
    }
    out = hpcinfer.run(job, base=shared_tmp, quiet=True)
    assert out == shared_tmp / "digits.h5"
    with h5py.File(out, "r") as f:
        got = f["outputs"][:]
    assert got.shape == (1797, 10)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)
    assert hpcinfer.run(job, base=shared_tmp, quiet=True) == out  # complete: nothing to do


@collective
def test_a_bad_job_raises_the_same_error_on_every_rank(shared_tmp):
    job = hpcinfer.load_job(DIGITS_JOB, [f"output.path='{shared_tmp / 'x.h5'}'"])
    bad = {
        "model": {"path": str(DATA / "nowhere")},
        "input": {"path": str(DATA / "digits.h5"), "dataset": "x"},
        "output": {"path": "o.h5"},
    }
    with pytest.raises(hpcinfer.JobError, match="nowhere: model folder not found"):
        hpcinfer.run(bad, base=shared_tmp)
    with pytest.raises(hpcinfer.JobError, match="unknown key"):
        hpcinfer.job_from_dict({**bad, "run": {"colour": 1}}, shared_tmp)
    assert job.output.path == shared_tmp / "x.h5"
