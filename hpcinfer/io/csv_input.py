"""CSV and TSV input with a header line: `input.field` names the column holding each row's
text, `output.keep` further columns (kept as texts: CSV has no types). Plain or
compressed; each rank reads only its records, found through the index
(record_index.csv_index: a newline inside quotes does not end a record).

RFC 4180, strictly: a field holding the delimiter, a quote or a line break is quoted
whole, its quotes doubled. A quote inside an unquoted field would shift every record
boundary after it, so it is an error naming the line (as is a record with more or fewer
fields than the header, text that is not UTF-8, or a quote never closed). Blank lines
are skipped. A record longer than LONG_LINE_BYTES is scanned a block at a time
(csv_scan), never held whole.
"""

from __future__ import annotations

import csv
import re
from functools import partial
from typing import Any, BinaryIO

from hpcinfer.errors import JobError
from hpcinfer.io import keep as kept_columns
from hpcinfer.io.csv_scan import CsvError, scan_record
from hpcinfer.io.file_checks import clip
from hpcinfer.io.record_index import RecordError, RecordIndex, csv_index
from hpcinfer.io.text_cut import TextCut, TextPrefix
from hpcinfer.io.text_input import TextRows

DELIMITERS = {"csv": ",", "tsv": "\t"}


def record_pattern(delimiter: str) -> re.Pattern:
    """One record, every field quoted whole or free of quotes and line breaks."""
    d = re.escape(delimiter)
    field = rf'(?:"(?:[^"]|"")*"|[^"{d}\r\n]*)'
    return re.compile(rf"{field}(?:{d}{field})*")


class CsvRows(TextRows):
    json_rows = ()
    index_kind = "csv"
    line_records = False  # a quoted field may hold line breaks

    def __init__(self, path, kind="csv", field="text", keep=(), codec=None, index=None):
        self.delimiter = DELIMITERS[kind]
        self._pattern = record_pattern(self.delimiter)
        super().__init__(path, kind, field, keep, codec, index)

    @property
    def texts_only(self) -> bool:
        return True

    def build_index(self) -> RecordIndex:
        try:
            with self.source.scan() as f:
                index = csv_index(f)
        except RecordError as e:
            line = f":{e.line}" if e.line else ""
            raise JobError(f"{self.path}{line}: {e.message}") from None
        self.source.scanned(index.total)
        return index

    def rows_of(self, index: RecordIndex) -> RecordIndex:
        """Record 0 is the header: the column names, read here."""
        if not len(index.starts):
            raise JobError(f"{self.path}: empty; a {self.kind.upper()} file needs a header line")
        header = RecordIndex(index.starts[:1], index.ends[:1], index.total, index.lines[:1])
        rows = RecordIndex(index.starts[1:], index.ends[1:], index.total, index.lines[1:])
        self.index, self._starts, self._ends = header, header.starts, header.ends
        with self._view(0, 1) as f:
            ((_, text),) = self._records(f, 0, 1)
        self.columns = self._fields(0, text, header=True)
        self._column = self._column_of(self.dataset, "input.field")
        self._kept = tuple(self._column_of(name, "output.keep") for name in self.keep)
        return rows

    def where(self, i: int) -> str:
        return f"{self.path}:{self.index.line(i)}"

    def _column_of(self, name: str, key: str) -> int:
        if self.columns.count(name) > 1:
            raise JobError(f"{self.path}: the header names column {name!r} twice ({key})")
        if name not in self.columns:
            names = clip(", ".join(self.columns), 120)
            raise JobError(f"{self.path}: no column {name!r} ({key}); the header has: {names}")
        return self.columns.index(name)

    def _fields(self, i: int, text: str, header: bool = False) -> list[str]:
        """Record i's fields, checked against RFC 4180 and the header's width."""
        where = f"{self.path}:{self.index.line(i)}" if header else self.where(i)
        if not self._pattern.fullmatch(text):
            raise JobError(
                f"{where}: not valid {self.kind.upper()}: a quote inside an unquoted field, "
                "or text after a closing quote (a field holding quotes, the delimiter or a "
                "line break must be quoted whole, its quotes doubled)"
            )
        (fields,) = csv.reader([text], delimiter=self.delimiter, strict=True)
        if not header and len(fields) != len(self.columns):
            raise JobError(
                f"{where}: {len(fields)} field(s), but the header has {len(self.columns)}"
            )
        return fields

    def _parse(self, i: int, text: str, note: bool = False) -> tuple[Any, tuple]:
        fields = self._fields(i, text)
        kept = tuple(fields[k] for k in self._kept)
        self._check_kept(i, kept, note)
        return fields[self._column], kept

    def _check_kept(self, i: int, kept: tuple, note: bool) -> None:
        for name, value in zip(self.keep, kept, strict=True):
            kept_columns.check_text(value, name, self.where(i))
            if note:
                kept_columns.note(self.kinds[name], "str", i, self.where(i))

    def _scan(self, f: BinaryIO, i: int, wanted: dict[int, int]) -> dict[int, tuple[str, bool]]:
        start, stop = int(self._starts[i]), int(self._ends[i])
        tail = self._bytes(f, max(start, stop - 2), stop)
        stop -= tail.endswith(b"\n") + tail.endswith(b"\r\n")
        try:
            return scan_record(f, start, stop, self.delimiter, len(self.columns), wanted)
        except CsvError as e:
            raise JobError(f"{self.where(i)}: {e}") from None

    def _read_long(self, f: BinaryIO, i: int, cut: TextCut, check: bool = False) -> Any:
        text, complete = self._scan(f, i, {self._column: cut.chars})[self._column]
        return text if complete else TextPrefix(text, partial(self._more, i))

    def _long_kept(self, f: BinaryIO, i: int, note: bool = False) -> tuple:
        if not self.keep:
            return ()
        limit = kept_columns.MAX_KEPT_BYTES
        found = self._scan(f, i, dict.fromkeys(self._kept, limit))
        kept = []
        for name, k in zip(self.keep, self._kept, strict=True):
            text, complete = found[k]
            if not complete:
                raise JobError(
                    f"{self.where(i)}: kept column {name!r} holds a text of over {limit:,} "
                    "bytes (keep is for ids, paths and labels)"
                )
            kept.append(text)
        self._check_kept(i, tuple(kept), note)
        return tuple(kept)
