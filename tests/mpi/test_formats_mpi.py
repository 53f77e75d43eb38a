"""Every input format at several ranks (run under `mpiexec -n 2` and `-n 3` by
tests/test_run_mpi.py): the same 40 records as compressed JSONL and text, a JSON array,
CSV with quoting and a header, TSV, multi-row-group Parquet, with `output.keep`; each run
is stopped after a chunk or two per rank (a graceful stop on every rank), then resumed,
and its output must equal the same rows given as plain JSONL, bit for bit, kept columns
included. (Kills mid-run, under real launches: tests/test_formats_resume_mpi.py.)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinfer.checkpoint.state import our_partial_dir
from hpcinfer.compute import Hooks, RunOptions
from hpcinfer.engine import run_job
from hpcinfer.io.inputs import open_input
from hpcinfer.job import job_from_dict
from hpcinfer.schedule import stop
from tests.conftest import DATA, fast_and_slow
from tests.formats import FORMATS, KEEPS, expected, records, write
from tests.mpi.helpers import WORLD, collective, make_runtime

N_ROWS = 40


@pytest.fixture(scope="module")
def rt():
    return make_runtime()


@pytest.fixture(scope="module")
def folder():
    """Every format written once, by rank 0, in a folder all ranks share."""
    path = Path(
        WORLD.bcast(tempfile.mkdtemp(prefix="hpcinfer-formats-") if WORLD.rank == 0 else None)
    )
    if WORLD.rank == 0:
        for fmt in FORMATS:
            write(path, fmt, records(N_ROWS), row_group_size=7)
    WORLD.Barrier()
    yield path
    WORLD.Barrier()
    if WORLD.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


class StopAfterOne(Hooks):
    """A graceful stop on every rank once it has computed a chunk: the chunk in hand is
    finished, the rest is left for the rerun."""

    def before_chunk(self, rank, chunks_done, chunk, n_rows):
        if chunks_done == 1:
            stop._requested = True


def load_job_of(folder: Path, fmt: str, keep=KEEPS):
    return job_from_dict(
        {
            "model": {"path": str(DATA / "models" / "tiny-gpt2")},
            "input": {"path": str(folder / f"data.{fmt}")},
            "output": {"path": str(folder / f"out-{fmt}.h5"), "keep": list(keep)},
            "run": {"backend": "numpy", "batch_size": 4, "chunk_size": 6},
        },
        folder,
    )


def run(rt, folder: Path, fmt: str, hooks: Hooks | None = None, keep=KEEPS):
    job = load_job_of(folder, fmt, keep)
    try:
        return run_job(job, rt, RunOptions(quiet=True), hooks or Hooks())
    finally:
        stop._requested = False


def outputs(path: Path) -> dict[str, list]:
    with h5py.File(path, "r") as f:
        return {
            name: list(f[name].asstr()[:]) if h5py.check_string_dtype(f[name].dtype) else f[name][:]
            for name in f
            if name != "run"
        }


@pytest.fixture(scope="module")
def reference(rt, folder):
    """The plain JSONL's output, uninterrupted."""
    assert run(rt, folder, "jsonl").code == 0
    return outputs(folder / "out-jsonl.h5")


@pytest.mark.parametrize(
    "fmt",
    fast_and_slow([f for f in FORMATS if f != "jsonl"], {"csv.bz2"}),
)
@collective
def test_every_format_stopped_and_resumed_gives_the_jsonl_output(rt, folder, reference, fmt):
    keep = () if fmt.startswith("txt") else KEEPS
    first = run(rt, folder, fmt, StopAfterOne(), keep)
    assert first.code == stop.EXIT_STOPPED, first.message
    partial = folder / f"out-{fmt}.h5.partial"
    if WORLD.rank == 0 and "." in fmt:  # a compressed file's index, kept for the rerun
        assert len(list(partial.glob("input-index-*.npz"))) == 1
        job = load_job_of(folder, fmt, keep)
        reader = open_input(job, our_partial_dir(job.output.path))
        assert not reader.index_built  # loaded, not built again
        reader.close()
    WORLD.Barrier()
    assert run(rt, folder, fmt, keep=keep).code == 0
    got = outputs(folder / f"out-{fmt}.h5")
    kept = expected(fmt, records(N_ROWS))[1]
    assert set(got) == {"logprob", "num_tokens", *keep}
    if fmt.startswith("txt"):  # the same texts, bar the line break made a space
        same = [i for i, r in enumerate(records(N_ROWS)) if "\n" not in r["text"]]
        assert got["logprob"][same].tobytes() == reference["logprob"][same].tobytes()
    else:
        assert got["logprob"].tobytes() == reference["logprob"].tobytes()
        np.testing.assert_array_equal(got["num_tokens"], reference["num_tokens"])
    for name in keep:
        assert list(got[name]) == kept[name], name
    assert not partial.exists()
