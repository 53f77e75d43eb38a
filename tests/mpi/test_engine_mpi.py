"""Run under MPI: `mpiexec -n 3 python -m pytest tests/mpi` (also fine at -n 1)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinfer.backends import get_backend
from hpcinfer.compute import RunOptions
from hpcinfer.engine import run_job
from hpcinfer.errors import Agreed, JobError
from hpcinfer.job import load_job
from hpcinfer.models import load_model
from hpcinfer.parallel.partition import split_range
from hpcinfer.parallel.runtime import agree
from hpcinfer.schedule.chunks import make_chunks
from tests.conftest import DATA, DIGITS_JOB
from tests.mpi.helpers import WORLD, collective, make_runtime, on_rank_0


@pytest.fixture(scope="module")
def rt():
    return make_runtime()


@pytest.fixture
def shared_tmp():
    """One temporary folder for all ranks (they share this file system)."""
    path = WORLD.bcast(tempfile.mkdtemp(prefix="hpcinfer-mpi-") if WORLD.rank == 0 else None)
    yield Path(path)
    WORLD.Barrier()


@collective
def test_blocks_cover_every_chunk_exactly_once(rt):
    chunks = make_chunks(1001, 100)
    mine = list(split_range(len(chunks), rt.rank, rt.size))
    owned = sorted(i for part in rt.comm.allgather(mine) for i in part)
    assert owned == list(range(len(chunks)))


@collective
def test_agree_fails_every_rank_when_one_rank_fails(rt):
    error = JobError("bad on the last rank") if rt.rank == rt.size - 1 else None
    with pytest.raises(Agreed) as e:
        agree(rt, error)
    assert e.value.exit_code == 2 and "bad on the last rank" in str(e.value)
    agree(rt, None)  # and passes everywhere when nobody failed


@collective
def test_run_job_matches_the_serial_model(rt, shared_tmp):
    out = shared_tmp / "digits.h5"
    job = load_job(DIGITS_JOB, [f"output.path='{out}'", "run.chunk_size=100"])
    assert run_job(job, rt).code == 0
    with h5py.File(out, "r") as f:
        got = f["outputs"][:]
    with h5py.File(DATA / "digits.h5", "r") as f:
        x = f["x"][:]
    model = load_model(job.model.path, get_backend("numpy", "float32"), "float32")
    expected = np.concatenate(
        [model.predict(x[i : i + 128])["outputs"] for i in range(0, len(x), 128)]
    )
    # float32 GEMMs of other shapes (chunks of 100 rows, not batches of 128) round apart
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not out.with_name("digits.h5.partial").exists()


@collective
def test_atomic_words_count_without_losing_updates(rt):
    from hpcinfer.parallel.comm import AtomicWords

    words = AtomicWords(rt.comm, initial=0)
    for _ in range(200):
        while True:
            old = words.read(0)
            if words.compare_and_swap(0, old, old + 1):
                break
    rt.comm.Barrier()
    total = words.read(0)
    words.free()
    assert total == 200 * rt.size


def serial_outputs(sets: list[str], out: Path) -> np.ndarray:
    """The digits job run by rank 0 alone (a one-rank runtime inside the launch)."""

    def serial() -> np.ndarray:
        job = load_job(DIGITS_JOB, [*sets, f"output.path='{out}'"])
        assert run_job(job, make_runtime(MPI.COMM_SELF), RunOptions(quiet=True)).code == 0
        with h5py.File(out, "r") as f:
            return f["outputs"][:]

    return on_rank_0(serial)


@pytest.mark.parametrize(
    ("rows", "chunk_size"),
    [(0, 256), (500, 1000), (1001, 100), (7, 1)],
    ids=["empty", "more-ranks-than-chunks", "uneven", "one-row-chunks"],
)
@collective
def test_edge_layouts_equal_the_serial_run_bit_for_bit(rt, shared_tmp, rows, chunk_size):
    data = shared_tmp / "in.h5"

    def write_input() -> None:
        x = np.random.default_rng(0).random((rows, 64), dtype=np.float32)
        with h5py.File(data, "w") as f:
            f.create_dataset("x", data=x)

    on_rank_0(write_input)
    sets = [f"input.path='{data}'", f"run.chunk_size={chunk_size}", "run.batch_size=64"]
    job = load_job(DIGITS_JOB, [*sets, f"output.path='{shared_tmp / 'out.h5'}'"])
    assert run_job(job, rt, RunOptions(quiet=True)).code == 0
    with h5py.File(shared_tmp / "out.h5", "r") as f:
        got = f["outputs"][:]
    assert got.shape == (rows, 10)
    assert got.tobytes() == serial_outputs(sets, shared_tmp / "serial.h5").tobytes()
    if rows:
        np.testing.assert_allclose(got.sum(1), 1, rtol=1e-5)
