"""Opening a job's input by its format: the one place that knows which reader reads what."""

from __future__ import annotations

from hpcinfer.io.hdf5_input import Hdf5Items, Hdf5Rows, open_hdf5
from hpcinfer.io.text_input import TextRows
from hpcinfer.job import Job

Reader = Hdf5Rows | Hdf5Items | TextRows


def input_format(job: Job) -> str:
    if job.input.format != "auto":
        return job.input.format
    suffix = job.input.path.suffix.lower()
    return {".h5": "hdf5", ".hdf5": "hdf5", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "text")


def open_input(job: Job) -> Reader:
    kind = input_format(job)
    if kind == "hdf5":
        return open_hdf5(job.input.path, job.input.dataset)
    return TextRows(job.input.path, kind, job.input.field)


def describe_reader(reader: Reader) -> str:
    """What the rows are, for messages: "texts (jsonl)", "rows of (64,) float32", ..."""
    if reader.items and reader.kind == "jsonl":
        return f"{reader.n_rows:,} items (jsonl, field {reader.dataset!r})"
    if reader.items:
        return f"{reader.n_rows:,} items ({reader.kind})"
    return f"{reader.n_rows:,} rows of {reader.row_shape} {reader.dtype}"
