"""Inputs of every format made on the fly from the same records, for the format tests
(tests/test_formats.py, tests/mpi/test_formats_mpi.py, tests/test_formats_resume_mpi.py).

Each record has a text (from the corpus, and a few made to be awkward: quotes, commas,
line breaks, tabs, non-ASCII, empty), an integer `id` and a string `source`; `write`
writes them in one format, and `expected` is what a reader must give back.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from pathlib import Path

from tests.conftest import DATA

AWKWARD = [
    'she said "yes", then left',
    "two\nlines, and a comma",
    "tab\tinside",
    "café — naïve 日本語 🙂",
    "",
    '"quoted" start',
    'ends with a quote"',
    "trailing spaces   ",
    "[brackets] {braces}, \\ backslash",
]

# name -> (file name, writer); the plain JSONL is the reference every other one matches
FORMATS = (
    "jsonl",
    "jsonl.gz",
    "jsonl.zst",
    "jsonl.bz2",
    "txt.gz",
    "json",
    "json.gz",
    "csv",
    "csv.bz2",
    "tsv",
    "tsv.zst",
    "parquet",
)
KEEPS = ("id", "source")


def records(n: int = 40) -> list[dict]:
    """n records: corpus texts with the awkward ones spread among them."""
    with (DATA / "corpus.jsonl").open() as f:
        texts = [json.loads(next(f))["text"] for _ in range(n)]
    for k, text in enumerate(AWKWARD):
        texts[(k * 7 + 3) % n] = text
    return [{"id": i * 10 - 5, "text": t, "source": f"doc-{i}/é"} for i, t in enumerate(texts)]


def compress(data: bytes, codec: str, pieces: int = 3) -> bytes:
    """`data` compressed in `pieces` members (gzip), frames (zstd) or streams (bz2), as
    parallel compressors write them."""
    import zstandard

    step = -(-len(data) // pieces) or 1
    parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    one = {
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "zst": lambda b: zstandard.ZstdCompressor().compress(b),
    }[codec]
    return b"".join(one(p) for p in parts)


def write(folder: Path, fmt: str, rows: list[dict], row_group_size: int = 7) -> Path:
    """The records in format `fmt` (a name in FORMATS) at folder/data.<fmt>."""
    path = Path(folder) / f"data.{fmt}"
    base, _, codec = fmt.partition(".")
    if base == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: [r[k] for r in rows] for k in ("id", "text", "source")})
        pq.write_table(table, path, row_group_size=row_group_size)
        return path
    if base == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    elif base == "txt":
        data = "".join(r["text"].replace("\n", " ") + "\n" for r in rows).encode()
    elif base == "json":
        data = json.dumps(rows, indent=1, ensure_ascii=False).encode()
    else:
        out = io.StringIO()
        delimiter = "," if base == "csv" else "\t"
        writer = csv.DictWriter(out, ["id", "text", "source"], delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
        data = out.getvalue().encode()
    path.write_bytes(compress(data, codec) if codec else data)
    return path


def expected(fmt: str, rows: list[dict]) -> tuple[list[str], dict[str, list]]:
    """What a reader of `fmt` gives: the texts, and the kept columns (CSV keeps texts)."""
    base = fmt.partition(".")[0]
    if base == "txt":
        return [r["text"].replace("\n", " ") for r in rows], {}
    text_ids = base in ("csv", "tsv")
    kept = {
        "id": [str(r["id"]) if text_ids else r["id"] for r in rows],
        "source": [r["source"] for r in rows],
    }
    return [r["text"] for r in rows], kept
