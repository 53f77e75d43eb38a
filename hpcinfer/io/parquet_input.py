"""Parquet input (pyarrow): `input.field` names the column holding each row's text (a
string column) or token ids (a list of integers); `output.keep` further columns (numbers,
booleans, strings: their Parquet types are kept).

Row groups are the read unit: a rank reads only the columns it needs, of the row groups
that hold its rows, streamed a batch of rows at a time (ParquetFile.iter_batches). One
stream is kept per reader, so consecutive chunks inside a row group cost no re-read; a
range behind the stream restarts at its row group's start, never the file's. Unlike the
text formats, a single value is held whole (Parquet pages are decoded whole); texts are
cut before tokenizing as any text is (text_cut).

Strict like every reader: a null, text that is not UTF-8, a token id beyond int64, a
file that is not Parquet or changed while read: one JobError naming file, column, row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io import keep as kept_columns
from hpcinfer.io.file_checks import clip, error_text
from hpcinfer.io.sources import changed, file_version
from hpcinfer.io.text_cut import TextCut
from hpcinfer.io.text_input import Batch

BATCH_ROWS = 1024  # rows decoded at a time
INT64_MAX = 2**63 - 1


class ParquetRows:
    items = True
    kind = "parquet"
    row_shape: tuple[int, ...] = ()
    dtype = np.dtype(object)
    codec = None

    def __init__(self, path: Path, field: str = "text", keep: tuple[str, ...] = ()):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise JobError("reading Parquet needs pyarrow: pip install pyarrow") from None
        self._pa = pa
        self.path, self.dataset, self.keep = Path(path), field, tuple(keep)
        if not self.path.is_file():
            raise JobError(f"{self.path}: input file not found (input.path)")
        self._file = self.path.open("rb")
        self.version = file_version(os.fstat(self._file.fileno()))
        try:
            self._pf = pq.ParquetFile(self._file, buffer_size=2**20, pre_buffer=False)
            schema = self._pf.schema_arrow
            self.n_rows = self._pf.metadata.num_rows
            meta = self._pf.metadata
            sizes = [meta.row_group(g).num_rows for g in range(self._pf.num_row_groups)]
        except (pa.ArrowException, OSError, ValueError) as e:
            self._file.close()
            raise JobError(f"{self.path}: not a readable Parquet file ({error_text(e)})") from None
        self._group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._texts = self._field_kind(schema)
        self.kinds = {name: {self._kept_kind(schema, name): (0, str(self.path))} for name in keep}
        self._stream: tuple[int, int, Any, list] | None = None  # group, next row, batches, held

    @property
    def texts_only(self) -> bool:
        return self._texts

    def _field_kind(self, schema) -> bool:
        """True for a column of texts, False for token ids; anything else is refused."""
        pa = self._pa
        if self.dataset not in schema.names:
            names = clip(", ".join(schema.names), 120)
            self.close()
            raise JobError(
                f"{self.path}: no column {self.dataset!r} (input.field); it has: {names}"
            )
        kind = schema.field(self.dataset).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return True
        if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_integer(
            kind.value_type
        ):
            return False
        self.close()
        raise JobError(
            f"{self.path}: column {self.dataset!r} (input.field) is {kind}; expected texts "
            "(string) or token ids (a list of integers)"
        )

    def _kept_kind(self, schema, name: str) -> str:
        pa = self._pa
        if name not in schema.names:
            self.close()
            raise JobError(f"{self.path}: no column {name!r} to keep (output.keep)")
        kind = schema.field(name).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return "str"
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            return kept_columns.dtype_kind(np.dtype(kind.to_pandas_dtype()))
        self.close()
        raise JobError(
            f"{self.path}: column {name!r} is {kind}; hpcinfer keeps numbers, booleans and "
            "strings (output.keep)"
        )

    def where(self, i: int, column: str | None = None) -> str:
        return f"{self.path}:{column or self.dataset}[{i}]"

    def sources(self) -> list[Path]:
        return [self.path.resolve()]

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"format": "parquet", "field": self.dataset}
        return {**facts, "keep": list(self.keep)} if self.keep else facts

    def set_cut(self, cut: TextCut) -> None:
        """Values are held whole (Parquet decodes pages whole); texts are cut later."""

    def save_index(self, folder: Path) -> None:
        """Parquet needs no index: its footer says where every row group is."""

    def validate(self, rows: range) -> None:
        """Read and check every value of `rows`, BATCH_ROWS at a time."""
        for start in range(rows.start, rows.stop, BATCH_ROWS):
            self.read_batch(start, min(rows.stop, start + BATCH_ROWS))

    def read(self, start: int, stop: int) -> list[Any]:
        return self.read_batch(start, stop).rows

    def read_batch(self, start: int, stop: int) -> Batch:
        """Rows [start, stop): texts or token-id arrays, and the kept columns."""
        now = file_version(os.fstat(self._file.fileno()))
        if now != self.version:
            raise changed(self.path, self.version[0], now[0])
        parts = list(self._batches(start, stop))
        columns = [self.dataset, *self.keep]
        data = {c: [p.column(c) for p in parts] for c in columns}
        rows = self._values(data[self.dataset], start)
        kept = {name: self._kept_values(name, data[name], start) for name in self.keep}
        return Batch(rows, kept)

    def close(self) -> None:
        self._stream = None
        self._file.close()

    # ---- reading ----

    def _batches(self, start: int, stop: int):
        """Record batches holding exactly rows [start, stop), in order."""
        row = start
        while row < stop:
            group = int(np.searchsorted(self._group_starts, row, side="right")) - 1
            g0, g1 = int(self._group_starts[group]), int(self._group_starts[group + 1])
            local, end = row - g0, min(stop, g1) - g0
            yield from self._from_group(group, local, end)
            row = g0 + end

    def _from_group(self, group: int, local: int, end: int):
        s = self._stream
        if s is None or s[0] != group or s[1] > local:
            columns = [self.dataset, *self.keep]
            try:
                it = self._pf.iter_batches(
                    batch_size=BATCH_ROWS, row_groups=[group], columns=columns, use_threads=False
                )
            except self._errors() as e:
                raise self._unreadable(group, e) from None
            s = (group, 0, it, [])
        group_, at, it, held = s
        while at < end:
            if not held:
                try:
                    held = [next(it)]
                except StopIteration:
                    raise JobError(f"{self.path}: row group {group} ends early") from None
                except self._errors() as e:
                    raise self._unreadable(group, e) from None
            batch = held[0]
            if at + batch.num_rows <= local:  # wholly before the range: skip it
                at += batch.num_rows
                held = []
                continue
            lo, hi = max(0, local - at), min(batch.num_rows, end - at)
            yield batch.slice(lo, hi - lo)
            if hi < batch.num_rows:  # the next range may start inside this batch
                held = [batch.slice(hi)]
                at += hi
                break
            at += batch.num_rows
            held = []
        self._stream = (group_, at, it, held)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._pa.ArrowException, OSError, ValueError)

    def _unreadable(self, group: int, e: BaseException) -> JobError:
        return JobError(
            f"{self.path}: row group {group} cannot be read (damaged file?): {error_text(e)}"
        )

    # ---- values ----

    def _values(self, chunks: list, start: int) -> list[Any]:
        array = self._combined(chunks, self.dataset, start)
        if self._texts:
            return array.to_pylist()
        lists = array.cast(self._pa.large_list(self._pa.int64()))  # checked to fit
        offsets = lists.offsets.to_numpy()
        values = lists.flatten().to_numpy(zero_copy_only=False)
        return [values[offsets[i] : offsets[i + 1]] for i in range(len(lists))]

    def _kept_values(self, name: str, chunks: list, start: int) -> Any:
        array = self._combined(chunks, name, start)
        if self._pa.types.is_string(array.type) or self._pa.types.is_large_string(array.type):
            values = array.to_pylist()
            for i, v in enumerate(values):
                kept_columns.check_text(v, name, self.where(start + i, name))
            return values
        return array.to_numpy(zero_copy_only=False)

    def _combined(self, chunks: list, column: str, start: int):
        """One array of the rows' values in `column`, checked: no null, UTF-8 texts,
        token ids that fit int64."""
        pa = self._pa
        array = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
        if array.null_count:
            bad = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
            raise JobError(f"{self.where(start + bad, column)}: null (a missing value)")
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            ids = array.flatten()
            parents = pa.compute.list_parent_indices(array).to_numpy()
            bad = np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))
            if bad.size:
                where = self.where(start + int(parents[bad[0]]), column)
                raise JobError(f"{where}: a null token id")
            if ids.type == pa.uint64():
                over = np.flatnonzero(ids.to_numpy() > INT64_MAX)
                if over.size:
                    where = self.where(start + int(parents[over[0]]), column)
                    value = ids[int(over[0])].as_py()
                    raise JobError(f"{where}: token id {value} does not fit int64")
            return array
        try:
            array.validate(full=True)
        except pa.ArrowInvalid as e:
            text = str(e)
            at = text.rsplit("index", 1)[-1].strip()
            row = start + int(at) if at.isdigit() else start
            raise JobError(f"{self.where(row, column)}: not valid UTF-8") from None
        return array
