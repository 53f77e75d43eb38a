"""`export`: a finished output as Parquet or JSONL, rows in order, block by block."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from hpcinfer.cli import main
from hpcinfer.tools import export as export_module

N = 37


@pytest.fixture
def output(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "out.h5"
    vectors = rng.standard_normal((N, 3)).astype(np.float32)
    vectors[5, 1] = np.nan
    with h5py.File(path, "w") as f:
        f["embeddings"] = vectors
        f["logprob"] = rng.standard_normal(N)
        f.create_dataset("id", data=[f"row-{i}-é" for i in range(N)], dtype=h5py.string_dtype())
        f["run/chunks"] = np.arange(4)  # not a row dataset: never exported
        f.attrs["n_rows"] = N
    return path, vectors


@pytest.mark.parametrize("block_bytes", [1, 2**20], ids=["row-by-row", "one-block"])
def test_parquet_holds_every_row_in_order(tmp_path, output, monkeypatch, block_bytes):
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(export_module, "BLOCK_BYTES", block_bytes)
    path, vectors = output
    assert main(["export", str(path), "--to", str(tmp_path / "x.parquet")]) == 0
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column_names == ["embeddings", "id", "logprob"]
    got = np.array(table["embeddings"].to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got, vectors)  # NaN kept, in place
    assert table["id"].to_pylist() == [f"row-{i}-é" for i in range(N)]
    with h5py.File(path) as f:
        np.testing.assert_array_equal(table["logprob"].to_numpy(), f["logprob"][:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5", "x.parquet"]


def test_jsonl_one_object_per_row_nan_as_null(tmp_path, output, capsys):
    path, vectors = output
    target = tmp_path / "x.jsonl"
    assert main(["export", str(path), "--to", str(target), "--datasets", "embeddings,id"]) == 0
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == N and set(rows[0]) == {"embeddings", "id"}
    assert rows[5]["embeddings"][1] is None
    assert rows[7]["id"] == "row-7-é"
    np.testing.assert_allclose(rows[3]["embeddings"], vectors[3], rtol=1e-7)
    assert "37 rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to", "x.csv"], "say --format"),
        (["--to", "x.jsonl", "--datasets", "nope"], "no dataset nope"),
    ],
)
def test_bad_requests_are_one_line(tmp_path, output, capsys, args, expected):
    path, _ = output
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    assert main(["export", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpcinfer: error:") and expected in err and "\n" not in err


def test_a_file_that_is_not_an_output_is_refused(tmp_path, capsys):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    assert main(["export", str(other), "--to", str(tmp_path / "x.jsonl")]) == 2
    assert "not an hpcinfer output" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
