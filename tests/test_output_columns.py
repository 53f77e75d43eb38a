"""The output's datasets: kept input columns (texts in the chunk files' heap), names
chosen by the job, float16 / bfloat16 storage, and `export` of such outputs; and
`run --help`, which lists every job key from job.py."""

from __future__ import annotations

import json
import os

import h5py
import ml_dtypes
import numpy as np
import pytest

from hpcinfer.checkpoint.chunk_files import ChunkStore
from hpcinfer.checkpoint.columns import (
    bfloat16_bits,
    bfloat16_values,
    output_columns,
    stored,
)
from hpcinfer.cli import main
from hpcinfer.errors import JobError, RunError
from hpcinfer.io import keep as kept_columns
from hpcinfer.job import SECTIONS
from hpcinfer.models.base import OutputSpec
from tests.adversarial import keep_thread_settings
from tests.conftest import DATA, write_job

TEXT = OutputSpec((), np.dtype(object))
VEC = OutputSpec((2,), np.dtype("float32"))


# ---- chunk files with texts ----


def chunk_with_texts(tmp_path, texts):
    store = ChunkStore(tmp_path)
    chunk = store.create(3, len(texts), {"v": VEC, "id": TEXT})
    half = len(texts) // 2
    chunk.write_rows(0, {"v": np.ones((half, 2)), "id": texts[:half]})
    chunk.write_rows(half, {"v": np.zeros((len(texts) - half, 2)), "id": texts[half:]})
    chunk.commit()
    return store


def test_texts_round_trip_through_a_chunk_file(tmp_path):
    texts = ["a", "", "héllo 日本", "x" * 5000, "line\nbreak", "🙂"]
    store = chunk_with_texts(tmp_path, texts)
    got = store.read(3)
    assert got["id"].dtype == object and list(got["id"]) == texts
    assert got["v"].shape == (6, 2)


@pytest.mark.parametrize("damage", ["cut heap", "pair outside", "not utf-8"])
def test_a_damaged_heap_is_a_clear_error(tmp_path, damage):
    store = chunk_with_texts(tmp_path, ["abc", "défg", "hi"])
    path = store.path(3)
    data = bytearray(path.read_bytes())
    header = json.loads(data[24 : 24 + int.from_bytes(data[16:24], "little")])
    heap = header["heap"]
    pairs = next(a for a in header["arrays"] if a["name"] == "id")["offset"]
    if damage == "cut heap":
        data = data[:-3]
    elif damage == "pair outside":
        data[pairs + 8 : pairs + 16] = (10**6).to_bytes(8, "little")  # row 0's length
    else:
        data[heap + 3] = 0xFF  # inside "défg"
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match=f"{path.name}: cannot read finished chunk"):
        store.read(3)


# ---- stored values ----


def test_bfloat16_bits_round_to_nearest_even_like_ml_dtypes():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 10_000),
            np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, 1.00390625, 1.01171875]),
        ]
    ).astype(np.float32)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(bfloat16_bits(x), want)
    nan = bfloat16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bfloat16_values(nan)).all()
    np.testing.assert_array_equal(
        bfloat16_values(want), x.astype(ml_dtypes.bfloat16).astype(np.float32)
    )


def test_output_columns_rename_cast_and_refuse_clashes():
    outputs = {
        "logprob": OutputSpec((), np.dtype("float64")),
        "n": OutputSpec((), np.dtype("int64")),
    }
    kept = {"id": TEXT}
    cols = output_columns(outputs, {"logprob": "lp"}, "float16", kept, "job.toml")
    assert list(cols) == ["lp", "n", "id"]
    assert cols["lp"].spec.dtype == np.float16 and cols["n"].spec.dtype == np.int64
    values = stored(
        cols, {"logprob": np.array([1.5, -2.0]), "n": np.array([3, 4])}, {"id": ["a", "b"]}
    )
    assert values["lp"].dtype == np.float16 and values["id"] == ["a", "b"]
    bf = output_columns(outputs, {}, "bfloat16", {}, "job.toml")
    assert bf["logprob"].encoding == "bfloat16" and bf["logprob"].spec.dtype == np.uint16
    for datasets, keep, message in [
        ({"nope": "x"}, {}, "output.datasets names 'nope', but the model writes logprob, n"),
        ({"logprob": "id"}, kept, "two datasets would be named 'id'"),
        ({"logprob": "run"}, {}, "'run' cannot name an output dataset"),
        ({"logprob": "a/b"}, {}, "'a/b' cannot name an output dataset"),
        ({"logprob": "n"}, {}, "two datasets would be named 'n'"),
    ]:
        with pytest.raises(JobError, match=message):
            output_columns(outputs, datasets, "auto", keep, "job.toml")


def test_kept_kinds_merge_across_ranks_or_name_the_rows():
    int_rows = {"int64": (3, "f:4")}
    float_rows = {"float64": (9, "f:10")}
    assert kept_columns.merge("x", [int_rows, float_rows]) == "float64"
    assert kept_columns.merge("x", [int_rows, {}]) == "int64"
    assert kept_columns.merge("x", [{}, {}]) == "str"
    with pytest.raises(
        JobError, match=r"'x' holds values of different types: an integer at f:4 and a text at f:8"
    ):
        kept_columns.merge("x", [int_rows, {"str": (7, "f:8")}, {"bool": (20, "f:21")}])
    assert kept_columns.kind_spec("<f4(3,)") == ((3,), np.dtype("<f4"))
    assert kept_columns.kind_spec(kept_columns.dtype_kind(np.dtype("<i2"), (2, 2))) == (
        (2, 2),
        np.dtype("<i2"),
    )
    for value, message in [
        (None, "null"),
        ([1], "a list"),
        ({"a": 1}, "a dict"),
        (2**64, "does not fit int64"),
        ("x" * 70000, "over 65,536 bytes"),
    ]:
        with pytest.raises(JobError, match=message):
            kept_columns.value_kind(value, "x", "f:1")


# ---- end to end, in this process ----


@pytest.fixture
def digits_with_columns(tmp_path):
    with h5py.File(DATA / "digits.h5", "r") as f:
        x = f["x"][:200]
    path = tmp_path / "digits.h5"
    with h5py.File(path, "w") as f:
        f["x"] = x
        f["label"] = np.arange(200) % 10
        f["pos"] = np.stack([np.arange(200), -np.arange(200)], axis=1).astype(np.float32)
        f.create_dataset("name", data=[f"img-{i}-é" for i in range(200)], dtype=h5py.string_dtype())
    return path


def run_digits(tmp_path, input_path, name, **output):
    job = write_job(
        tmp_path / f"{name}.toml",
        model={"path": str(DATA / "models" / "digits-mlp")},
        input={"path": str(input_path), "dataset": "x"},
        output={"path": str(tmp_path / f"{name}.h5")},
        run={"backend": "numpy", "batch_size": 32, "chunk_size": 48},
    )
    sets = [f"output.{k}={v}" for k, v in output.items()]
    args = ["run", str(job), "--quiet"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    return tmp_path / f"{name}.h5"


def test_hdf5_columns_kept_outputs_renamed_and_stored_as_bfloat16(
    tmp_path, digits_with_columns, monkeypatch, capsys
):
    keep_thread_settings(monkeypatch)
    plain = run_digits(tmp_path, digits_with_columns, "plain")
    out = run_digits(
        tmp_path,
        digits_with_columns,
        "bf16",
        keep='["label", "name", "pos"]',
        datasets='{outputs = "probs"}',
        dtype='"bfloat16"',
    )
    with h5py.File(plain) as f:
        reference = f["outputs"][:]
    with h5py.File(out) as f, h5py.File(digits_with_columns) as src:
        assert sorted(f) == ["label", "name", "pos", "probs", "run"]
        assert f["probs"].dtype == np.uint16 and f["probs"].attrs["hpcinfer_dtype"] == "bfloat16"
        np.testing.assert_array_equal(f["probs"][:], bfloat16_bits(reference))
        np.testing.assert_array_equal(f["label"][:], src["label"][:])
        assert f["label"].dtype == src["label"].dtype
        np.testing.assert_array_equal(f["pos"][:], src["pos"][:])
        assert h5py.check_string_dtype(f["name"].dtype).encoding == "utf-8"
        assert list(f["name"].asstr()[:3]) == ["img-0-é", "img-1-é", "img-2-é"]
        assert json.loads(f.attrs["input"])["keep"] == ["label", "name", "pos"]
    capsys.readouterr()
    assert main(["export", str(out), "--to", str(tmp_path / "x.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert rows[7]["name"] == "img-7-é" and rows[7]["label"] == 7 and rows[7]["pos"] == [7.0, -7.0]
    np.testing.assert_array_equal(
        np.array([r["probs"] for r in rows], np.float32), bfloat16_values(bfloat16_bits(reference))
    )
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["export", str(out), "--to", str(tmp_path / "x.parquet")]) == 0
    table = pq.read_table(tmp_path / "x.parquet")
    got = np.array(table["probs"].to_pylist(), np.float32)
    np.testing.assert_array_equal(got, bfloat16_values(bfloat16_bits(reference)))
    assert table["name"].to_pylist()[:2] == ["img-0-é", "img-1-é"]


def test_float16_outputs_and_integers_left_alone(tmp_path, monkeypatch):
    keep_thread_settings(monkeypatch)
    corpus = tmp_path / "c.jsonl"
    with (DATA / "corpus.jsonl").open() as f:
        corpus.write_text("".join(next(f) for _ in range(12)))
    outs = {}
    for dtype in ("auto", "float16"):
        job = write_job(
            tmp_path / f"{dtype}.toml",
            model={"path": str(DATA / "models" / "tiny-gpt2")},
            input={"path": str(corpus)},
            output={"path": str(tmp_path / f"{dtype}.h5"), "dtype": dtype},
            run={"backend": "numpy", "batch_size": 4, "chunk_size": 5},
        )
        assert main(["run", str(job), "--quiet"]) == 0
        with h5py.File(tmp_path / f"{dtype}.h5") as f:
            outs[dtype] = {k: f[k][:] for k in ("logprob", "num_tokens")}
    assert outs["float16"]["logprob"].dtype == np.float16
    np.testing.assert_array_equal(
        outs["float16"]["logprob"], outs["auto"]["logprob"].astype(np.float16)
    )
    assert outs["float16"]["num_tokens"].dtype == np.int64


# ---- run --help: every job key, from job.py ----


def test_run_help_lists_every_job_key_with_its_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    import dataclasses

    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        block = text.split(f"[{section}]", 1)[1]
        for field in dataclasses.fields(cls):
            assert f"    {field.name} " in block, (section, field.name)
            assert field.metadata["help"], (section, field.name)
    for default in ('(default "auto")', "(default 256)", "(default [])", "(default true)"):
        assert default in " ".join(text.split()), default
    assert "exit codes" in text and os.linesep in text
