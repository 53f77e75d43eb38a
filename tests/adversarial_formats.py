"""Bad inputs of the formats beyond HDF5 and plain JSONL (compressed streams, CSV/TSV,
JSON arrays, Parquet), bad `output.keep` / `output.datasets` / `output.dtype`, and
output paths that cannot be made: cases for tests/test_adversarial.py (one line, exit 2,
nothing written, nothing changed)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.adversarial import Case, Workspace, shrink, with_set
from tests.formats import write


def rows(ws: Workspace) -> list[dict]:
    """The workspace's corpus lines, with an id and a source each."""
    lines = ws.corpus.read_text().splitlines()
    return [dict(json.loads(t), id=i, source=f"s{i}") for i, t in enumerate(lines)]


def as_format(
    fmt: str,
    mutate: Callable[[Path], object] | None = None,
    change: Callable[[list[dict]], object] | None = None,
    sets: tuple[str, ...] = (),
    **inputs: object,
) -> Callable[[Workspace], list[str]]:
    """The gpt2 job over the corpus written as `fmt` (tests.formats), its records changed
    by `change`, the file by `mutate`; `sets` are --set overrides."""

    def make(ws: Workspace) -> list[str]:
        records = rows(ws)
        if change:
            change(records)
        path = write(ws.root, fmt, records, row_group_size=9)
        if mutate:
            mutate(path)
        args = ws.run("gpt2", path=path, **inputs)
        for s in sets:
            args += ["--set", s.format(root=ws.root)]
        return args

    return make


def replace_line(at: int, text: bytes) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        lines = path.read_bytes().splitlines(keepends=True)
        lines[at - 1] = text + b"\n"
        path.write_bytes(b"".join(lines))

    return mutate


def recompress(path: Path, edit: Callable[[bytes], bytes]) -> None:
    """Change a gzip file's content, keeping it whole gzip."""
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for k in range(8):
        data[len(data) // 2 + k] ^= 0x5A
    path.write_bytes(bytes(data))


def set_row(i: int, **values: object) -> Callable[[list[dict]], None]:
    def change(records: list[dict]) -> None:
        records[i].update(values)

    return change


def parquet_of(columns: dict) -> Callable[[Workspace], list[str]]:
    """A gpt2 job over a Parquet file of these pyarrow arrays."""

    def make(ws: Workspace) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = ws.root / "p.parquet"
        pq.write_table(pa.table({k: v(pa) if callable(v) else v for k, v in columns.items()}), path)
        return ws.run("gpt2", path=path)

    return make


def bad_utf8_strings(pa):
    offsets = pa.py_buffer(np.array([0, 2, 5, 7], np.int32).tobytes())
    return pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"okca\xffok")])


def named(name: str, data: bytes, **inputs: object) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        (ws.root / name).write_bytes(data)
        return ws.run("gpt2", path=ws.root / name, **inputs)

    return make


def output_at(where: str, *more: str) -> Callable[[Workspace], list[str]]:
    """The mlp job writing to `where` ({root}: the workspace) after `prepare`."""

    def make(ws: Workspace) -> list[str]:
        (ws.root / "afile").write_text("x\n")
        os.symlink(ws.root / "no-such-folder", ws.root / "dangling")
        return ws.run("mlp", *more, "--set", f"output.path='{where.format(root=ws.root)}'")

    return make


def long_csv_record(ws: Workspace) -> list[str]:
    path = ws.root / "long.csv"
    path.write_bytes(b"id,text\n1,fine\n2," + b"word " * 300_000 + b'a "quote"\n3,ok\n')
    return ws.run("gpt2", path=path)


FORMAT_CASES = [
    # ---- compressed streams ----
    Case(
        "gz-truncated", as_format("jsonl.gz", lambda p: shrink(p, 0.6)), "the gzip data ends early"
    ),
    Case("gz-damaged", as_format("jsonl.gz", flip_middle), "data.jsonl.gz: not valid gzip data"),
    Case("zst-truncated", as_format("jsonl.zst", lambda p: shrink(p, 0.6)), "zstd data ends early"),
    Case("bz2-damaged", as_format("txt.bz2", flip_middle), "data.txt.bz2: not valid bz2 data"),
    Case(
        "bz2-trailing-garbage",
        as_format("csv.bz2", lambda p: p.write_bytes(p.read_bytes() + b"junk")),
        "data after the end of the last bz2 stream",
    ),
    Case("gz-named-not-gzip", named("x.jsonl.gz", b'{"text": "a"}\n'), "named .gz but not gzip"),
    Case(
        "json-gz-truncated",
        as_format("json.gz", lambda p: recompress(p, lambda data: data[:-9])),
        "the JSON array is never closed",
    ),
    # ---- names and contents hpcinfer does not read ----
    Case("unknown-extension", named("x.dat", b'{"text": "a"}\n'), "x.dat: cannot tell its format"),
    Case("zip-archive", named("x.jsonl", b"PK\x03\x04" + b"\0" * 40), "x.jsonl: a zip archive"),
    Case("xz-stream", named("x.txt.xz", b"\xfd7zXZ\x00" + b"\0" * 40), "xz-compressed"),
    Case(
        "parquet-gz",
        named("x.parquet.gz", gzip.compress(b"PAR1")),
        "cannot be read in place",
    ),
    Case(
        "format-override-wrong",
        with_set("input.format='parquet'", model="gpt2"),
        "corpus.jsonl: not a readable Parquet file",
    ),
    # ---- CSV / TSV ----
    Case(
        "csv-no-column",
        as_format("csv", field="body"),
        "no column 'body' (input.field); the header has: id, text, source",
    ),
    Case(
        "csv-quote-in-unquoted-field",
        as_format("csv", replace_line(5, b'7,he said "hi" twice,s7')),
        "data.csv:5: not valid CSV: a quote inside an unquoted field",
    ),
    Case(
        "csv-short-row",
        as_format("csv", replace_line(9, b"8,only two")),
        "data.csv:9: 2 field(s), but the header has 3",
    ),
    Case(
        "csv-not-utf8",
        as_format("tsv", replace_line(4, b"3\tcaf\xe9\ts3")),
        "data.tsv:4: not valid UTF-8 (byte 6)",
    ),
    Case(
        "csv-quote-never-closed",
        as_format("csv", lambda p: p.write_bytes(p.read_bytes() + b'99,"open\n')),
        "data.csv:42: a quoted field is never closed",
    ),
    Case("csv-empty", named("e.csv", b""), "e.csv: empty; a CSV file needs a header line"),
    Case(
        "csv-long-record-bad",
        long_csv_record,
        "long.csv:3: not valid CSV: a quote inside an unquoted field",
    ),
    # ---- JSON arrays ----
    Case(
        "json-object",
        named("o.json", b'{"text": [1, 2]}', format="json"),
        "a JSON object, not an array",
    ),
    Case(
        "json-data-after",
        as_format("json", lambda p: p.write_bytes(p.read_bytes() + b' {"text": "x"}')),
        "data after the array",
    ),
    Case(
        "json-element-no-field",
        as_format("json", change=set_row(2, text=None)),
        "(element 3): field 'text' (input.field) must be a text",
    ),
    Case(
        "json-element-bad",
        named("b.json", b'[{"text": "a"},\n {oops}]'),
        "b.json:2 (element 2): not valid JSON",
    ),
    Case(
        "json-trailing-comma",
        named("c.json", b'[{"text": "a"},]'),
        "c.json: not valid JSON: Expecting value",
    ),
    # ---- Parquet ----
    Case(
        "parquet-not-parquet",
        named("t.parquet", b"text\nhello\n"),
        "t.parquet: not a readable Parquet file",
    ),
    Case("parquet-no-column", as_format("parquet", field="body"), "no column 'body' (input.field)"),
    Case(
        "parquet-number-field",
        as_format("parquet", field="id"),
        "column 'id' (input.field) is int64",
    ),
    Case("parquet-null", parquet_of({"text": ["a", None, "c"]}), "p.parquet:text[1]: null"),
    Case(
        "parquet-not-utf8",
        parquet_of({"text": bad_utf8_strings}),
        "p.parquet:text[1]: not valid UTF-8",
    ),
    Case(
        "parquet-ids-beyond-int64",
        parquet_of({"text": lambda pa: pa.array([[1], [2, 2**64 - 1]], pa.list_(pa.uint64()))}),
        "p.parquet:text[1]: token id 18446744073709551615 does not fit int64",
    ),
    # ---- output.keep ----
    Case("keep-on-text", as_format("txt.gz", sets=("output.keep=['id']",)), "a text file has none"),
    Case(
        "keep-missing-key",
        as_format("jsonl", sets=("output.keep=['nope']",)),
        "data.jsonl:1: no key 'nope' to keep",
    ),
    Case(
        "keep-mixed-types",
        as_format("jsonl.zst", change=set_row(17, id="seventeen"), sets=("output.keep=['id']",)),
        "kept column 'id' holds values of different types: an integer at",
    ),
    Case(
        "keep-null",
        as_format("json", change=set_row(4, source=None), sets=("output.keep=['source']",)),
        "(element 5): kept column 'source' holds null",
    ),
    Case(
        "keep-nested",
        as_format("jsonl", change=set_row(6, id=[1]), sets=("output.keep=['id']",)),
        "data.jsonl:7: kept column 'id' holds a list",
    ),
    Case(
        "keep-csv-no-column",
        as_format("csv", sets=("output.keep=['nope']",)),
        "no column 'nope' (output.keep)",
    ),
    Case(
        "keep-parquet-no-column",
        as_format("parquet", sets=("output.keep=['nope']",)),
        "no column 'nope' to keep",
    ),
    Case(
        "keep-hdf5-no-dataset",
        with_set("output.keep=['nope']"),
        "digits.h5:nope: no such dataset to keep",
    ),
    Case(
        "keep-bad-name",
        with_set("output.keep=['a/b']"),
        "output.keep: 'a/b' cannot name an output dataset",
    ),
    Case(
        "keep-twice",
        as_format("jsonl", sets=("output.keep=['id', 'id']",)),
        "output.keep names a column twice",
    ),
    Case("keep-not-a-list", with_set("output.keep='id'"), "output.keep must be a list of strings"),
    # ---- output.datasets, output.dtype ----
    Case(
        "datasets-unknown",
        with_set("output.datasets={{nope='x'}}"),
        "output.datasets names 'nope', but the model writes outputs",
    ),
    Case(
        "datasets-clash-with-keep",
        as_format("jsonl", sets=("output.keep=['id']", "output.datasets={{logprob='id'}}")),
        "two datasets would be named 'id'",
    ),
    Case(
        "datasets-run",
        with_set("output.datasets={{outputs='run'}}"),
        "'run' cannot name an output dataset",
    ),
    Case(
        "datasets-not-a-table",
        with_set("output.datasets='x'"),
        "output.datasets must be a table of names",
    ),
    Case(
        "output-dtype", with_set("output.dtype='int8'"), "output.dtype must be one of auto, float32"
    ),
    # ---- output paths that cannot be made (run, and --dry-run) ----
    Case("output-under-a-file", output_at("{root}/afile/m.h5"), "afile is a file, not a folder"),
    Case(
        "output-under-a-file-dry",
        output_at("{root}/afile/m.h5", "--dry-run"),
        "afile is a file, not a folder",
    ),
    Case(
        "output-dangling-link",
        output_at("{root}/dangling/m.h5"),
        "dangling is a symbolic link to nothing",
    ),
    Case(
        "output-dangling-dry",
        output_at("{root}/dangling/m.h5", "--dry-run"),
        "symbolic link to nothing",
    ),
    Case(
        "output-name-too-long",
        output_at("{root}/" + "n" * 220 + ".h5"),
        "the file name is 223 bytes long",
    ),
    Case(
        "output-name-too-long-dry",
        output_at("{root}/" + "n" * 300 + ".h5", "--dry-run"),
        "File name too long",
    ),
]
