"""Text input: JSONL (one JSON object per line; in `field` a text, or a list of token
ids) or plain text (one item per line), plain or compressed (gzip, zstd, bz2: see
sources). Each rank reads only the lines of its chunks, found through a line index;
io.csv_input and io.json_array read CSV/TSV records and JSON array elements the same way.

The index (the byte offset of every line, record_index) is built once per rank by
scanning the content for newlines with numpy, a block at a time, 16 bytes per line of
memory; a corpus of 10^8 lines needs 1.6 GB per rank, the point where a shared,
precomputed index would pay off. A compressed file's index is built on its first read
and kept in the output's partial folder (index_cache), so a resumed run skips that pass.

`output.keep` names JSON keys whose values are copied to the output (`read_batch`);
the values' kinds are noted while validating (io.keep).

Strict, because a bad row must never become a silent wrong result: a line that is not
UTF-8, not JSON, holds ints beyond int64 or a lone surrogate, or lacks the field is a
JobError naming `file:line` (and the byte); a file that changes under the index (size or
mtime) is an error naming it. `validate(rows)` finds all of that before any compute.

Memory per row is bounded: with a `TextCut` (the model's, see text_cut), a line over
LONG_LINE_BYTES is never read whole; a text keeps its first `cut.chars` characters (a
`TextPrefix` that can read more), a token-id list its first `cut.ids` ids. Long JSONL
lines go through json_scan's constant-memory scanner.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io import index_cache, json_values
from hpcinfer.io import keep as kept_columns
from hpcinfer.io.json_scan import LineError, read_string, scan_line
from hpcinfer.io.record_index import RecordIndex, line_index
from hpcinfer.io.sources import CompressedFile, PlainFile
from hpcinfer.io.text_cut import TextCut, TextPrefix

VALIDATE_BYTES = 64 * 2**20  # validate() views (and, compressed, decompresses) this much at once
READ_BLOCK_BYTES = 8 * 2**20  # short lines are read and decoded this many bytes at a time
LONG_LINE_BYTES = 2**20  # longer lines are streamed, never held whole
STREAM_BLOCK_BYTES = 2**20  # ... this many bytes at a time

Item = str | TextPrefix | list[int]


@dataclass(frozen=True)
class Batch:
    """Rows as a reader read them, and the values of the kept columns of those rows."""

    rows: Any  # a list of items, or an array of numeric rows
    kept: dict[str, Any] = field(default_factory=dict)  # column -> a list or an array


def _line_break(tail: str) -> int:
    """Characters of line break at the end of a line whose last characters are `tail`."""
    if not tail.endswith("\n"):
        return 0
    return 2 if tail.endswith("\r\n") else 1


class TextRows:
    """Lines of a file: `kind` "jsonl" (the JSON value under `field`) or "text"."""

    items = True  # rows are texts or token-id lists, not arrays of numbers
    row_shape: tuple[int, ...] = ()
    dtype = np.dtype(object)
    json_rows = ("jsonl", "json")  # kinds whose records are JSON objects
    index_kind = "lines"  # what its index holds (a cached index is kept per kind)
    line_records = True  # a record is a line (else: a span of bytes, decoded alone)

    def __init__(
        self,
        path: Path,
        kind: str,
        field: str = "text",
        keep: tuple[str, ...] = (),
        codec: str | None = None,
        index: RecordIndex | None = None,
    ):
        self.path, self.kind, self.dataset = Path(path), kind, field
        self.keep, self.codec = tuple(keep), codec
        if self.keep and kind == "text":
            raise JobError(
                f"{self.path}: output.keep names columns, but a text file has none (one "
                "text per line): use JSONL, CSV or Parquet to carry columns through"
            )
        self.source = CompressedFile(self.path, codec) if codec else PlainFile(self.path)
        self.index_built = index is None  # built here, not loaded from a cache
        self.cut: TextCut | None = None  # None: rows whole (no model to bound them)
        self.kinds: dict[str, kept_columns.Kinds] = {name: {} for name in self.keep}
        try:
            self.built = index if index is not None else self.build_index()  # a cache holds
            self.index = self.rows_of(self.built)
            self._starts, self._ends = self.index.starts, self.index.ends
            self.n_rows = len(self._starts)
            if self.n_rows and kind in self.json_rows:
                self.validate(range(1))  # the first row tells a wrong field early
        except BaseException:
            self.source.close()
            raise

    @property
    def texts_only(self) -> bool:
        """Every row is a text (no row can be token ids)."""
        return self.kind == "text"

    def build_index(self) -> RecordIndex:
        """One pass over the content: the end of every line."""
        with self.source.scan() as f:
            index = line_index(f)
        self.source.scanned(index.total)
        return index

    def rows_of(self, index: RecordIndex) -> RecordIndex:
        """The rows among the records (CSV: all but the header)."""
        return index

    def where(self, i: int) -> str:
        """Row i as a user finds it: file and line number."""
        return f"{self.path}:{self.index.line(i)}"

    def sources(self) -> list[Path]:
        return [self.path.resolve()]

    def describe(self) -> dict[str, Any]:
        """What the input is, for the output's `input` attribute."""
        facts: dict[str, Any] = {"format": self.kind}
        if self.kind != "text":
            facts["field"] = self.dataset
        if self.codec:
            facts["compression"] = self.codec
        if self.keep:
            facts["keep"] = list(self.keep)
        return facts

    def set_cut(self, cut: TextCut) -> None:
        """Keep at most this much of each row (the model's `text_cut()`)."""
        self.cut = cut

    def save_index(self, folder: Path) -> None:
        """Keep a compressed file's index in `folder` (the run's partial folder), for a
        rerun to load (index_cache); a plain file's is rebuilt at memory speed."""
        if self.codec and self.index_built:
            with contextlib.suppress(OSError):  # a cache: a full disk costs only time
                index_cache.save(folder, self.path, self.index_kind, self.built)
                self.index_built = False

    def validate(self, rows: range) -> None:
        """Parse every row of `rows` (a block at a time, long lines streamed): the first
        bad one is a JobError naming it. Kept columns' kinds are noted; nothing is kept."""
        for p0, p1 in self._parts(rows.start, rows.stop, VALIDATE_BYTES):
            with self._view(p0, p1) as f:
                for i0, i1 in self._spans(p0, p1):
                    if self._is_long(i0, i1):
                        self._read_long(f, i0, TextCut(0, 0), check=True)
                        self._long_kept(f, i0, note=True)
                        continue
                    for i, text in self._lines(f, i0, i1):
                        self._parse(i, text, note=True)

    def read(self, start: int, stop: int) -> list[Item]:
        """Rows [start, stop): texts (a TextPrefix when cut) or token-id lists."""
        return self.read_batch(start, stop).rows

    def read_batch(self, start: int, stop: int) -> Batch:
        """Rows [start, stop), and their kept columns' values (lists, one per column)."""
        out: list[Item] = []
        kept: dict[str, list] = {name: [] for name in self.keep}
        with self._view(start, stop) as f:
            for i0, i1 in self._spans(start, stop):
                if self._is_long(i0, i1) and self.cut is not None:
                    out.append(self._read_long(f, i0, self.cut))
                    values = self._long_kept(f, i0)
                    for name, v in zip(self.keep, values, strict=True):
                        kept[name].append(v)
                    continue
                for i, text in self._lines(f, i0, i1):
                    value, values = self._parse(i, text)
                    out.append(self._cut(i, value))
                    for name, v in zip(self.keep, values, strict=True):
                        kept[name].append(v)
        return Batch(out, kept)

    def close(self) -> None:
        self.source.close()

    # ---- reading ----

    def _view(self, start: int, stop: int):
        """A file in which rows [start, stop)'s bytes can be read (see sources)."""
        if stop <= start:
            return self.source.view(0, 0)  # reads nothing
        return self.source.view(int(self._starts[start]), int(self._ends[stop - 1]))

    def _parts(self, start: int, stop: int, budget: int) -> Iterator[tuple[int, int]]:
        """[p0, p1) runs of rows adding up to at most `budget` bytes (or one row)."""
        i = start
        while i < stop:
            end = self._starts[i] + budget
            j = i + max(1, int(np.searchsorted(self._ends[i:stop], end, "right")))
            yield i, j
            i = j

    def _spans(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """[i0, i1) runs of lines: a long line alone, or short lines adding up to at most
        READ_BLOCK_BYTES."""
        long_lines = self._ends[start:stop] - self._starts[start:stop] > LONG_LINE_BYTES
        i = start
        while i < stop:
            if long_lines[i - start]:
                j = i + 1
            else:
                end = self._starts[i] + READ_BLOCK_BYTES
                j = i + max(1, int(np.searchsorted(self._ends[i:stop], end, "right")))
                long = np.flatnonzero(long_lines[i - start : j - start])
                j = i + int(long[0]) if long.size else j
            yield i, j
            i = j

    def _is_long(self, i0: int, i1: int) -> bool:
        return i1 - i0 == 1 and self._ends[i0] - self._starts[i0] > LONG_LINE_BYTES

    def _lines(self, f: BinaryIO, i0: int, i1: int) -> Iterator[tuple[int, str]]:
        """(i, line i decoded, without its line break) for lines [i0, i1); invalid UTF-8
        is an error naming the line and byte, after the lines before it."""
        if not self.line_records:
            yield from self._records(f, i0, i1)
            return
        base = int(self._starts[i0])
        blob = self._bytes(f, base, int(self._ends[i1 - 1]))
        breaks = self._ends[i0:i1] - base - 1
        if i1 == self.n_rows and not blob.endswith(b"\n"):
            breaks = breaks[:-1]  # the last line of a file needs no newline
        if len(breaks) and (np.frombuffer(blob, np.uint8)[breaks] != ord("\n")).any():
            raise self._changed()
        bad = None
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError as e:
            j = i0 + int(np.searchsorted(self._ends[i0:i1] - base, e.start, side="right"))
            good = int(self._starts[j]) - base
            text, bad = blob[:good].decode("utf-8"), (j, e.start - good + 1)
        for k, line in enumerate(text.split("\n")[: (bad[0] if bad else i1) - i0]):
            yield i0 + k, line[:-1] if line.endswith("\r") else line
        if bad:
            raise JobError(f"{self.where(bad[0])}: not valid UTF-8 (byte {bad[1]})")

    def _records(self, f: BinaryIO, i0: int, i1: int) -> Iterator[tuple[int, str]]:
        """(i, record i decoded, its line break left out) for records [i0, i1), each
        decoded alone."""
        base = int(self._starts[i0])
        blob = self._bytes(f, base, int(self._ends[i1 - 1]))
        for i in range(i0, i1):
            raw = blob[int(self._starts[i]) - base : int(self._ends[i]) - base]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JobError(f"{self.where(i)}: not valid UTF-8 (byte {e.start + 1})") from None
            yield i, text[: len(text) - _line_break(text[-2:])]

    def _bytes(self, f: BinaryIO, start: int, stop: int) -> bytes:
        f.seek(start)
        blob = f.read(stop - start)
        if len(blob) != stop - start:
            raise self._changed()
        return blob

    def _changed(self) -> JobError:
        return JobError(
            f"{self.path}: changed while this run reads it (its lines are no longer where "
            "the index found them); rerun once the file is final"
        )

    def _read_long(self, f: BinaryIO, i: int, cut: TextCut, check: bool = False) -> Item:
        """Line i, too long to hold whole, kept as `cut` says. A JSONL line is scanned
        to its end (the field's last occurrence counts); a text line only with `check`
        (validate() did, before any rank computed)."""
        start, stop = int(self._starts[i]), int(self._ends[i])
        if self.kind == "text":
            return self._long_text(f, i, start, stop, cut.chars, check)
        tail = self._bytes(f, max(start, stop - 2), stop)  # scanned without its line break,
        stop -= tail.endswith(b"\n") + tail.endswith(b"\r\n")  # as json.loads sees a line
        try:
            found = scan_line(f, start, stop, self.dataset, cut.chars, cut.ids)
        except LineError as e:
            raise JobError(f"{self.where(i)}: {e}") from None
        if found.kind == "text":
            self._check_text(i, found.value)
            if found.complete:
                return found.value
            return TextPrefix(found.value, partial(self._more_json, i, found.offset))
        if found.kind == "ids":
            return found.value
        raise self._field_error(i, found.brief)

    def _long_text(
        self, f: BinaryIO, i: int, start: int, stop: int, chars: int, check: bool
    ) -> Item:
        """A plain-text line's first `chars` characters; with `check`, every byte is
        decoded (UTF-8 checked), but only what is kept stays in memory."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        kept, total, tail, offset = "", 0, "", start
        f.seek(start)
        while offset < stop:
            block = f.read(min(STREAM_BLOCK_BYTES, stop - offset))
            if not block:
                raise self._changed()
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=offset + len(block) >= stop)
            except UnicodeDecodeError as e:
                column = offset - start - pending + e.start + 1
                raise JobError(f"{self.where(i)}: not valid UTF-8 (byte {column})") from None
            if len(kept) < chars:
                kept += text[: chars - len(kept)]
            total, tail = total + len(text), (tail + text[-2:])[-2:]
            offset += len(block)
            if not check and total > chars + 2:  # more than `chars`, line break or not
                return TextPrefix(kept, partial(self._more, i))
        length = total - _line_break(tail)
        if length <= chars:
            return kept[:length]
        return TextPrefix(kept, partial(self._more, i))

    def _more_json(self, i: int, offset: int, chars: int) -> Item:
        """The text of long JSONL line i again, from its value at `offset` (found by
        the scan that read it), keeping `chars` characters (TextPrefix.more)."""
        with self._view(i, i + 1) as f:
            start = int(self._starts[i])
            try:
                text, complete = read_string(f, start + offset, int(self._ends[i]), chars)
            except LineError as e:
                raise JobError(f"{self.where(i)}: {e}") from None
        return text if complete else TextPrefix(text, partial(self._more_json, i, offset))

    def _more(self, i: int, chars: int) -> Item:
        """Row i again, keeping `chars` characters (TextPrefix.more)."""
        cut = TextCut(chars, self.cut.ids if self.cut else 0)
        with self._view(i, i + 1) as f:
            if self._is_long(i, i + 1):
                return self._read_long(f, i, cut)
            ((_, text),) = self._lines(f, i, i + 1)
        return self._cut(i, self._parse(i, text)[0], cut)

    # ---- values ----

    def _parse(self, i: int, text: str, note: bool = False) -> tuple[Item, tuple]:
        """Row i's value and its kept columns' values, checked (`note`: their kinds)."""
        if self.kind not in self.json_rows:
            return text, ()
        record = json_values.parse(text, self.where(i))
        value = json_values.field_value(record, self.dataset, self.where(i))
        kept = json_values.kept_values(record, self.keep, self.where(i))
        if note:
            self._note(i, kept)
        return value, kept

    def _note(self, i: int, values: tuple) -> None:
        for name, value in zip(self.keep, values, strict=True):
            kind = kept_columns.value_kind(value, name, self.where(i))
            kept_columns.note(self.kinds[name], kind, i, self.where(i))

    def _long_kept(self, f: BinaryIO, i: int, note: bool = False) -> tuple:
        """The kept keys of a long JSON line, each found by a scan of its own."""
        if not self.keep:
            return ()
        start, stop = int(self._starts[i]), int(self._ends[i])
        tail = self._bytes(f, max(start, stop - 2), stop)
        stop -= tail.endswith(b"\n") + tail.endswith(b"\r\n")
        values = json_values.long_kept(f, start, stop, self.keep, self.where(i))
        if note:
            self._note(i, values)
        return values

    def _check_text(self, i: int, text: str) -> None:
        json_values.check_text(text, self.dataset, self.where(i))

    def _field_error(self, i: int, brief: str) -> JobError:
        return json_values.field_error(self.where(i), self.dataset, brief)

    def _cut(self, i: int, value: str | list[int], cut: TextCut | None = None) -> Item:
        cut = cut or self.cut
        if cut is None:
            return value
        if not isinstance(value, str):
            return value[: cut.ids]
        if len(value) <= cut.chars:
            return value
        return TextPrefix(value[: cut.chars], partial(self._more, i))
