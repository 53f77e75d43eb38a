"""Kills mid-run, then a resume on another rank count, for the new input formats under
real launches (mpiexec, fault injection): the output equals the same rows given as plain
JSONL, kept columns included, and a compressed file's index survives the kill in the
partial folder (the resumed run loads it: tests/mpi/test_formats_mpi.py checks that)."""

from __future__ import annotations

import h5py
import pytest

from tests.conftest import DATA, fast_and_slow, hpcinfer, write_job
from tests.formats import expected, records, write

pytestmark = pytest.mark.mpi

N_ROWS = 48
# a compressed file's cached index is the riskiest resume; the rest run in the full suite
FORMATS = fast_and_slow(
    ["jsonl.gz", "csv", "parquet", "json", "tsv.zst", "jsonl.bz2"], {"jsonl.gz"}
)


def job_for(folder, fmt):
    return write_job(
        folder / f"{fmt}.toml",
        model={"path": str(DATA / "models" / "tiny-gpt2")},
        input={"path": str(folder / f"data.{fmt}")},
        output={"path": str(folder / f"out-{fmt}.h5"), "keep": ["id", "source"]},
        run={"backend": "numpy", "batch_size": 4, "chunk_size": 4},
    )


def read(path):
    with h5py.File(path, "r") as f:
        return {
            k: list(f[k].asstr()[:]) if h5py.check_string_dtype(f[k].dtype) else f[k][:]
            for k in f
            if k != "run"
        }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("formats")
    for fmt in ("jsonl", *[getattr(f, "values", [f])[0] for f in FORMATS]):
        write(path, fmt, records(N_ROWS), row_group_size=5)
    return path


@pytest.fixture(scope="module")
def reference(folder):
    p = hpcinfer("run", str(job_for(folder, "jsonl")), "--quiet", n=2)
    assert p.returncode == 0, p.stderr
    return read(folder / "out-jsonl.h5")


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_at_3_ranks_resumed_at_2_gives_the_jsonl_output(folder, reference, fmt):
    job = job_for(folder, fmt)
    partial = folder / f"out-{fmt}.h5.partial"
    killed = hpcinfer(
        "run", str(job), "--quiet", n=3, env={"HPCINFER_FAULT": "rank=1,after=2,kind=exit"}
    )
    assert killed.returncode != 0
    assert list(partial.glob("chunk-*.bin")), "no chunk survived the kill"
    if "." in fmt:
        assert len(list(partial.glob("input-index-*.npz"))) == 1
    resumed = hpcinfer("run", str(job), "--quiet", n=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stdout
    got = read(folder / f"out-{fmt}.h5")
    assert got["logprob"].tobytes() == reference["logprob"].tobytes()
    kept = expected(fmt, records(N_ROWS))[1]
    assert list(got["id"]) == kept["id"] and list(got["source"]) == kept["source"]
    assert not partial.exists()
