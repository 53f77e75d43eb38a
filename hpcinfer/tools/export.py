"""`python -m hpcinfer export OUTPUT.h5 --to FILE`: a finished output as Parquet or JSONL,
for people who live in pandas, Spark or jq.

Every top-level dataset becomes a column, rows in the same order: a scalar per row stays
a scalar, a vector per row becomes a list (Parquet: a fixed-size list), strings stay
strings, and a bfloat16 output (raw bits, `hpcinfer_dtype = "bfloat16"`) becomes its
float32 values. Rows are read and written a block at a time, so memory does not grow with the
file. Written under a temporary name and renamed: the target is whole or absent.
JSON has no NaN or infinity: those become null in JSONL (Parquet keeps them).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcinfer.checkpoint.columns import BFLOAT16, bfloat16_values
from hpcinfer.errors import JobError

FORMATS = ("parquet", "jsonl")
BLOCK_BYTES = 32 * 2**20  # rows per block: about this many bytes of the widest row


def export_format(target: Path, given: str | None) -> str:
    if given:
        return given
    suffix = target.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise JobError(f"{target}: say --format {' or '.join(FORMATS)} (the suffix does not tell)")


def columns_of(f: h5py.File, path: Path, names: list[str] | None) -> dict[str, h5py.Dataset]:
    found = {k: v for k, v in f.items() if isinstance(v, h5py.Dataset)}
    if not found or "n_rows" not in f.attrs:
        raise JobError(f"{path}: not an hpcinfer output (no row datasets or no n_rows)")
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise JobError(f"{path}: no dataset {', '.join(missing)} (has {', '.join(found)})")
        found = {n: found[n] for n in names}
    n_rows = int(f.attrs["n_rows"])
    for name, ds in found.items():
        if ds.ndim < 1 or ds.shape[0] != n_rows:
            raise JobError(f"{path}: dataset {name} has shape {ds.shape}, not {n_rows} rows")
    return found


def blocks(columns: dict[str, h5py.Dataset], n_rows: int) -> Iterator[dict[str, np.ndarray]]:
    widest = max(int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize or 8
                 for ds in columns.values())  # fmt: skip
    step = max(1, BLOCK_BYTES // max(1, widest))
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        yield {name: read(ds, start, stop) for name, ds in columns.items()}


def read(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[start:stop], dtype=object)
    if ds.attrs.get("hpcinfer_dtype") == BFLOAT16:  # raw bits: exported as their values
        return bfloat16_values(ds[start:stop])
    return ds[start:stop]


def write_jsonl(out, block: dict[str, np.ndarray]) -> None:
    names = list(block)
    rows = len(next(iter(block.values())))
    for i in range(rows):
        record = {name: plain(block[name][i]) for name in names}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def plain(value: Any) -> Any:
    """A numpy value as JSON can hold it (NaN and infinities as null)."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype != object else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def write_parquet(target: Path, columns: dict[str, h5py.Dataset], n_rows: int) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise JobError("export to Parquet needs pyarrow: pip install pyarrow") from None

    def arrow(name: str, values: np.ndarray) -> Any:
        if values.dtype == object:
            return pa.array(values.tolist(), type=pa.string())
        if values.ndim == 1:
            return pa.array(values)
        flat = pa.array(values.reshape(len(values), -1).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))

    writer = None
    try:
        for block in blocks(columns, n_rows):
            table = pa.table({name: arrow(name, v) for name, v in block.items()})
            if writer is None:
                writer = pq.ParquetWriter(str(target), table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def export(
    source: Path, target: Path, fmt: str | None = None, names: list[str] | None = None
) -> str:
    """Write `source` (an hpcinfer output) to `target`; returns a one-line summary."""
    fmt = export_format(target, fmt)
    if target.resolve() == source.resolve():
        raise JobError(f"{target}: is the output being exported; choose another file")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with h5py.File(source, "r") as f:
            columns = columns_of(f, source, names)
            n_rows = int(f.attrs["n_rows"])
            if fmt == "parquet":
                write_parquet(tmp, columns, n_rows)
            else:
                with tmp.open("w", encoding="utf-8") as out:
                    for block in blocks(columns, n_rows):
                        write_jsonl(out, block)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise JobError(f"{source}: cannot export to {target} ({e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"hpcinfer: wrote {target}: {n_rows:,} rows, columns {', '.join(columns)} ({fmt})"
