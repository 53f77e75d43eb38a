"""Opening a job's input by its format: the one place that knows which reader reads what.

Every reader offers the same surface: `n_rows`, `read(start, stop)` and `read_batch(start,
stop)` (rows and the kept columns' values), `validate(rows)`, `where(i)`, `sources()`,
`describe()`, `set_cut(cut)`, `save_index(folder)`, `close()`, and the facts `items`,
`kind`, `dataset` (field or dataset), `row_shape`, `dtype`, `texts_only`, `keep`, `kinds`.
"""

from __future__ import annotations

from pathlib import Path

from hpcinfer.io import index_cache
from hpcinfer.io.csv_input import CsvRows
from hpcinfer.io.formats import InputFormat, detect
from hpcinfer.io.hdf5_input import Hdf5Items, Hdf5Rows, open_hdf5
from hpcinfer.io.json_array import JsonArrayRows
from hpcinfer.io.parquet_input import ParquetRows
from hpcinfer.io.text_input import TextRows
from hpcinfer.job import Job

Reader = Hdf5Rows | Hdf5Items | TextRows | ParquetRows


def input_format(job: Job) -> InputFormat:
    return detect(job.input.path, job.input.format)


def open_input(job: Job, index_folder: Path | None = None) -> Reader:
    """The reader of `job`'s input; a compressed file's index is loaded from
    `index_folder` (the run's partial folder) when a valid one is there."""
    fmt = input_format(job)
    path, field, keep = job.input.path, job.input.field, job.output.keep
    if fmt.name == "hdf5":
        return open_hdf5(path, job.input.dataset, keep)
    if fmt.name == "parquet":
        return ParquetRows(path, field, keep)
    make = {
        "jsonl": lambda index: TextRows(path, "jsonl", field, keep, fmt.codec, index),
        "text": lambda index: TextRows(path, "text", field, keep, fmt.codec, index),
        "json": lambda index: JsonArrayRows(path, field, keep, fmt.codec, index),
        "csv": lambda index: CsvRows(path, "csv", field, keep, fmt.codec, index),
        "tsv": lambda index: CsvRows(path, "tsv", field, keep, fmt.codec, index),
    }[fmt.name]
    kind = {"json": JsonArrayRows, "csv": CsvRows, "tsv": CsvRows}.get(fmt.name, TextRows)
    index = None
    if fmt.codec and index_folder is not None:
        index = index_cache.load(index_folder, path, kind.index_kind)
    return make(index)


def describe_reader(reader: Reader) -> str:
    """What the rows are, for messages: "texts (jsonl)", "rows of (64,) float32", ..."""
    if not reader.items:
        return f"{reader.n_rows:,} rows of {reader.row_shape} {reader.dtype}"
    facts = reader.describe()
    parts = [facts["format"] if "rows" not in facts else f"hdf5 {facts['rows']}"]
    if "compression" in facts:
        parts.append(f"{facts['compression']}-compressed")
    if "field" in facts:
        parts.append(f"field {facts['field']!r}")
    if facts.get("keep"):
        parts.append(f"keep {', '.join(facts['keep'])}")
    return f"{reader.n_rows:,} items ({', '.join(parts)})"
