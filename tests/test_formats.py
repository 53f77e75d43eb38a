"""Input formats by content and name: detection, and every format read exactly as the
same records given as JSONL, a rank's rows at a time, forwards and backwards, with long
rows streamed, kept columns, and compressed files read through their index and window."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcinfer.errors import JobError
from hpcinfer.io import csv_scan, index_cache, json_scan, record_index, sources, text_input
from hpcinfer.io.formats import detect
from hpcinfer.io.inputs import open_input
from hpcinfer.io.text_cut import TextCut, TextPrefix
from hpcinfer.job import job_from_dict
from tests.formats import FORMATS, compress, expected, records, write

OPENED = []  # every reader a test opened, closed after it (open files are warnings)


@pytest.fixture(autouse=True)
def close_readers():
    yield
    while OPENED:
        OPENED.pop().close()


def reader_for(path, tmp_path, keep=(), index_folder=None, **inputs):
    job = job_from_dict(
        {
            "model": {"path": "m"},
            "input": {"path": str(path), **inputs},
            "output": {"path": str(tmp_path / "out.h5"), "keep": list(keep)},
        },
        tmp_path,
    )
    OPENED.append(open_input(job, index_folder))
    return OPENED[-1]


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Indexes, windows and copies a few bytes at a time: every boundary is crossed."""
    monkeypatch.setattr(record_index, "INDEX_BLOCK_BYTES", 5)
    monkeypatch.setattr(sources, "COPY_BYTES", 3)
    monkeypatch.setattr(sources, "WINDOW_MEMORY_BYTES", 7)  # windows spill to a file
    monkeypatch.setattr(text_input, "READ_BLOCK_BYTES", 50)


# ---- detection ----


@pytest.mark.parametrize(
    ("name", "content", "given", "expect"),
    [
        ("a.jsonl", b'{"text": "x"}\n', "auto", "jsonl"),
        ("a.ndjson", b'{"text": "x"}\n', "auto", "jsonl"),
        ("a.json", b'  \n[{"text": "x"}]', "auto", "json"),
        ("a.json", b'{"text": "x"}\n', "auto", "jsonl"),  # JSON lines named .json
        ("a.txt", b"x\n", "auto", "text"),
        ("a.CSV", b"text\nx\n", "auto", "csv"),
        ("a.tab", b"text\nx\n", "auto", "tsv"),
        ("a.jsonl.gz", gzip.compress(b"{}\n"), "auto", "jsonl (gzip)"),
        ("a.json.zst", compress(b'[{"text": "x"}]', "zst"), "auto", "json (zstd)"),
        ("a.tsv.bz2", compress(b"text\nx\n", "bz2"), "auto", "tsv (bz2)"),
        ("a.jsonl", gzip.compress(b"{}\n"), "auto", "jsonl (gzip)"),  # content says gzip
        ("a.data", b"x\n", "text", "text"),  # input.format overrides the name
        ("a.gz", gzip.compress(b"text\nx\n"), "csv", "csv (gzip)"),
    ],
)
def test_formats_are_found_by_content_and_name(tmp_path, name, content, given, expect):
    path = tmp_path / name
    path.write_bytes(content)
    assert str(detect(path, given)) == expect


def test_parquet_and_hdf5_are_found_by_content(tmp_path):
    write(tmp_path, "parquet", records(5))
    (tmp_path / "data.parquet").rename(tmp_path / "rows.bin")
    assert str(detect(tmp_path / "rows.bin")) == "parquet"
    import h5py

    with h5py.File(tmp_path / "x.data", "w") as f:
        f["x"] = np.zeros(3)
    assert str(detect(tmp_path / "x.data")) == "hdf5"


@pytest.mark.parametrize(
    ("name", "content", "given", "message"),
    [
        ("a.xyz", b"x\n", "auto", r"a\.xyz: cannot tell its format from the name \(extension"),
        ("noext", b"x\n", "auto", r"noext: cannot tell its format from the name \(no extension"),
        ("a.gz", gzip.compress(b"x\n"), "auto", r"gzip-compressed, no extension\)"),
        ("a.jsonl.gz", b'{"text": "x"}\n', "auto", r"named \.gz but not gzip-compressed"),
        ("a.zip", b"PK\x03\x04rest", "auto", r"a zip archive \(unzip it first\)"),
        ("a.jsonl.xz", b"\xfd7zXZ\x00rest", "auto", r"xz-compressed"),
        ("a.parquet.gz", gzip.compress(b"PAR1"), "auto", r"cannot be read in place"),
    ],
)
def test_unknown_or_unreadable_files_are_refused_not_read_as_text(
    tmp_path, name, content, given, message
):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(JobError, match=message):
        detect(path, given)


# ---- every format reads as its JSONL twin ----


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_records_given_as_jsonl(tmp_path, tiny_blocks, fmt):
    rows = records(40)
    path = write(tmp_path, fmt, rows)
    keep = () if fmt.startswith("txt") else ("id", "source")
    reader = reader_for(path, tmp_path, keep)
    texts, kept = expected(fmt, rows)
    assert reader.n_rows == len(rows)
    reader.validate(range(reader.n_rows))
    rng = random.Random(fmt)
    ranges = [(0, 40), (30, 40), (0, 5), (5, 17), (17, 18), (12, 39), (39, 40), (3, 3)]
    ranges += [tuple(sorted(rng.sample(range(41), 2))) for _ in range(10)]
    for a, b in ranges:  # forwards, backwards, empty: the stream restarts when it must
        batch = reader.read_batch(a, b)
        assert list(batch.rows) == texts[a:b], (a, b)
        for name in keep:
            assert list(batch.kept[name]) == kept[name][a:b], (name, a, b)


@pytest.mark.parametrize("fmt", ["jsonl.gz", "json.bz2", "csv.zst", "txt.gz"])
def test_long_rows_are_streamed_and_cut_in_compressed_files(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(text_input, "LONG_LINE_BYTES", 0)  # every row is "long"
    monkeypatch.setattr(json_scan, "BLOCK_BYTES", 7)
    monkeypatch.setattr(csv_scan, "BLOCK_BYTES", 5)
    rows = records(20)
    path = write(tmp_path, fmt, rows)
    keep = () if fmt.startswith("txt") else ("id", "source")
    reader = reader_for(path, tmp_path, keep)
    reader.validate(range(20))
    texts, kept = expected(fmt, rows)
    reader.set_cut(TextCut(chars=6, ids=3))
    batch = reader.read_batch(2, 20)
    for got, want in zip(batch.rows, texts[2:], strict=True):
        if len(want) <= 6:
            assert got == want
        else:  # cut, and its `more` reads the row again from the chunk's window
            assert isinstance(got, TextPrefix) and got.text == want[:6]
            assert got.more(10_000) == want
    for name in keep:
        assert list(batch.kept[name]) == kept[name][2:]


def test_gzip_zstd_bz2_of_many_members_frames_and_streams(tmp_path):
    data = "".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(500)).encode()
    for codec in ("gz", "zst", "bz2"):
        path = tmp_path / f"x.jsonl.{codec}"
        path.write_bytes(compress(data, codec, pieces=7))
        reader = reader_for(path, tmp_path)
        assert reader.n_rows == 500
        assert reader.read(499, 500) == ["row 499"] and reader.read(0, 2) == ["row 0", "row 1"]


def test_a_zip_bomb_costs_time_not_memory(tmp_path):
    """256 MiB of zeros in a 250 KiB gzip: indexed and read in bounded blocks."""
    import resource

    path = tmp_path / "bomb.txt.gz"
    block = gzip.compress(b"\0" * 2**24, 9)
    path.write_bytes(block * 16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader = reader_for(path, tmp_path)
    assert reader.n_rows == 1
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 100 * 2**10, f"peak memory grew by {grown} KiB"  # ru_maxrss is in KiB


# ---- the cached index of a compressed file ----


def test_the_index_of_a_compressed_file_is_cached_and_checked(tmp_path):
    rows = records(30)
    path = write(tmp_path, "csv.zst", rows)
    folder = tmp_path / "partial"
    folder.mkdir()
    reader = reader_for(path, tmp_path, ("id",), folder)
    assert reader.index_built
    reader.save_index(folder)
    (cache,) = folder.glob("input-index-*.npz")
    again = reader_for(path, tmp_path, ("id",), folder)
    assert not again.index_built and again.read(0, 30) == expected("csv", rows)[0]
    np.testing.assert_array_equal(again.index.starts, reader.index.starts)
    # a changed file (same size, other content) never reuses the stale index
    other = write(tmp_path / "partial", "csv.zst", [dict(r, text=r["text"][::-1]) for r in rows])
    path.write_bytes(other.read_bytes())
    other.unlink()
    fresh = reader_for(path, tmp_path, ("id",), folder)
    assert fresh.index_built
    assert fresh.read(0, 30) == [r["text"][::-1] for r in rows]
    # a damaged cache is rebuilt, never trusted
    fresh.save_index(folder)
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache.write_bytes(bytes(data))
    assert index_cache.load(folder, path, "csv") is None
    assert reader_for(path, tmp_path, ("id",), folder).index_built


# ---- the record indexes against the reference parsers ----

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab,[]{}"\\ \n\tü'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    elements=st.lists(JSON_VALUES, max_size=6),
    indent=st.sampled_from([None, 0, 2]),
    block=st.integers(1, 9),
)
def test_json_array_index_finds_every_element(elements, indent, block):
    text = json.dumps(elements, indent=indent, ensure_ascii=bool(block % 2)).encode()
    record_index.INDEX_BLOCK_BYTES = block
    try:
        index = record_index.json_array_index(io.BytesIO(text))
    finally:
        record_index.INDEX_BLOCK_BYTES = 8 * 2**20
    got = [json.loads(text[s:e]) for s, e in zip(index.starts, index.ends, strict=True)]
    assert got == elements
    lines = [text[:s].count(b"\n") + 1 for s in index.starts]
    assert list(index.lines) == lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=st.lists(st.lists(st.text(alphabet='ab,"\n\r\t ü'), min_size=2, max_size=2), max_size=6),
    block=st.integers(1, 9),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_csv_index_finds_every_record(table, block, terminator):
    if terminator == "\n":  # csv.writer leaves a lone "\r" unquoted then: not CSV
        table = [[v.replace("\r", "") for v in row] for row in table]
    out = io.StringIO()
    csv.writer(out, lineterminator=terminator).writerows([["a", "b"], *table])
    data = out.getvalue().encode()
    record_index.INDEX_BLOCK_BYTES = block
    try:
        index = record_index.csv_index(io.BytesIO(data))
    finally:
        record_index.INDEX_BLOCK_BYTES = 8 * 2**20
    records_ = [data[s:e].decode() for s, e in zip(index.starts, index.ends, strict=True)]
    parsed = [next(csv.reader([r.removesuffix("\n").removesuffix("\r")])) for r in records_]
    # csv.writer writes an empty row of two fields as `,`; blank lines only for no fields
    assert parsed == [["a", "b"], *table]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", r"not a JSON array \(no '\['"),
        (b'{"a": [1]}', r"a JSON object, not an array"),
        (b"[1,]", r"Expecting value \(byte 4\)"),
        (b"[1] 2", r"data after the array \(byte 5\)"),
        (b"[1][2]", r"data after the array \(byte 4\)"),
        (b"[1, 2", r"never closed"),
        (b"x[1]", r"not a JSON array \(byte 1"),
        (b"[1}", r"'\}' closes the array"),
    ],
)
def test_what_is_not_one_json_array_is_named(text, message):
    with pytest.raises(record_index.RecordError, match=message):
        record_index.json_array_index(io.BytesIO(text))


def test_an_empty_range_leaves_the_stream_where_it_is(tmp_path):
    reader = reader_for(write(tmp_path, "jsonl.gz", records(40)), tmp_path)
    reader.read(30, 40)
    position = reader.source._stream.position
    assert reader.read(5, 5) == [] and reader.source._stream.position == position


def test_hdf5_kept_datasets_are_read_with_the_rows(tmp_path):
    import h5py

    from hpcinfer.io.hdf5_input import open_hdf5

    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("text", data=["a", "bé", "c"], dtype=h5py.string_dtype())
        f["id"] = np.array([7, 8, 9], np.int32)
        f.create_dataset("name", data=[b"x", b"caf\xc3\xa9", b"z"])  # fixed-length bytes
        f["short"] = np.zeros(2)
        f.create_dataset("ids", (3,), dtype=h5py.vlen_dtype(np.int64))
        f.create_dataset("bad", data=[b"ok", b"b\xffd", b"z"])
    reader = open_hdf5(path, "text", ("id", "name"))
    OPENED.append(reader)
    batch = reader.read_batch(1, 3)
    assert batch.rows == ["bé", "c"] and list(batch.kept["id"]) == [8, 9]
    assert batch.kept["name"] == ["café", "z"] and reader.kinds["id"] == {"<i4": (0, f"{path}:id")}
    for keep, message in [
        ("short", r"in\.h5:short has shape \(2,\): a kept dataset needs one row per input row"),
        ("ids", r"in\.h5:ids has dtype object .* hpcinfer keeps numbers, booleans and texts"),
        ("nope", r"in\.h5:nope: no such dataset to keep"),
    ]:
        with pytest.raises(JobError, match=message):
            open_hdf5(path, "text", (keep,))
    bad = open_hdf5(path, "text", ("bad",))
    OPENED.append(bad)
    with pytest.raises(JobError, match=r"in\.h5:bad\[1\]: not valid UTF-8 \(byte 2\)"):
        bad.validate(range(3))


def test_a_long_csv_record_names_a_bad_byte_and_a_file_that_shrank(tmp_path, monkeypatch):
    from hpcinfer.io import csv_scan

    monkeypatch.setattr(csv_scan, "BLOCK_BYTES", 4)  # the record crosses several blocks
    path = tmp_path / "r.csv"
    path.write_bytes(b"abc,de\xfffg")
    with path.open("rb") as f, pytest.raises(csv_scan.CsvError, match=r"UTF-8 \(byte 7\)$"):
        csv_scan.scan_record(f, 0, 9, ",", 2, {1: 10})
    path.write_bytes(b"abc,defg")
    with path.open("rb") as f, pytest.raises(csv_scan.CsvError, match="the record ends early"):
        csv_scan.scan_record(f, 0, 50, ",", 2, {1: 10})
