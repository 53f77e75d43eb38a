"""Text input: JSONL (one JSON object per line; in `field` a text, or a list of token
ids) or plain text (one item per line). Each rank reads only the lines of its chunks,
found through a line index.

The index (the byte offset of every line) is built once per rank by scanning the file
for newlines with numpy, a block at a time, 8 bytes per line of memory; a corpus of
10^8 lines needs an index of 800 MB per rank, the point where a shared, precomputed
index would pay off.

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
import json
import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import clip
from hpcinfer.io.json_scan import LineError, read_string, scan_line
from hpcinfer.io.text_cut import TextCut, TextPrefix

INDEX_BLOCK_BYTES = 8 * 2**20
READ_BLOCK_BYTES = 8 * 2**20  # short lines are read and decoded this many bytes at a time
LONG_LINE_BYTES = 2**20  # longer lines are streamed, never held whole
STREAM_BLOCK_BYTES = 2**20  # ... this many bytes at a time
INT64 = (-(2**63), 2**63 - 1)
_SURROGATE = re.compile("[\ud800-\udfff]")

Item = str | TextPrefix | list[int]


def line_ends(path: Path) -> np.ndarray:
    """Byte offset one past every line's end (a last line without a newline counts),
    found reading the file a block at a time: memory is the index, not the file."""
    parts, offset = [], 0
    with path.open("rb") as f:
        while block := f.read(INDEX_BLOCK_BYTES):
            data = np.frombuffer(block, dtype=np.uint8)
            parts.append(np.flatnonzero(data == ord("\n")) + 1 + offset)
            offset += len(block)
    ends = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if offset and (not len(ends) or ends[-1] != offset):
        ends = np.append(ends, offset)
    return ends.astype(np.int64)


def _line_break(tail: str) -> int:
    """Characters of line break at the end of a line whose last characters are `tail`."""
    if not tail.endswith("\n"):
        return 0
    return 2 if tail.endswith("\r\n") else 1


def is_token_ids(value: object) -> bool:
    """A list of integers (whether each is in the vocabulary is the model's to check)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


class TextRows:
    items = True  # rows are texts or token-id lists, not arrays of numbers
    row_shape: tuple[int, ...] = ()
    dtype = np.dtype(object)

    def __init__(self, path: Path, kind: str, field: str = "text"):
        self.path, self.kind, self.dataset = Path(path), kind, field
        if not self.path.is_file():
            raise JobError(f"{self.path}: input file not found (input.path)")
        self._stat = self._version(os.stat(self.path))
        ends = line_ends(self.path)
        grown = len(ends) and ends[-1] != self._stat[0]
        if self._version(os.stat(self.path)) != self._stat or grown:
            raise JobError(f"{self.path}: changed while its lines were indexed (input.path)")
        self._starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self._ends = ends
        self.n_rows = len(ends)
        self.cut: TextCut | None = None  # None: rows whole (no model to bound them)
        if self.n_rows and kind == "jsonl":
            self.validate(range(1))  # the first line tells a wrong field early

    def where(self, i: int) -> str:
        """Row i as a user finds it: file and line number."""
        return f"{self.path}:{i + 1}"

    def sources(self) -> list[Path]:
        return [self.path.resolve()]

    def set_cut(self, cut: TextCut) -> None:
        """Keep at most this much of each row (the model's `text_cut()`)."""
        self.cut = cut

    def validate(self, rows: range) -> None:
        """Parse every line of `rows` (a block at a time, long lines streamed): the first
        bad one is a JobError naming it. Nothing is kept."""
        with self._open() as f:
            for i0, i1 in self._spans(rows.start, rows.stop):
                if self._is_long(i0, i1):
                    self._read_long(f, i0, TextCut(0, 0), check=True)
                    continue
                for i, text in self._lines(f, i0, i1):
                    if self.kind == "jsonl":
                        self._value(i, text)

    def read(self, start: int, stop: int) -> list[Item]:
        """Rows [start, stop): texts (a TextPrefix when cut) or token-id lists."""
        out: list[Item] = []
        with self._open() as f:
            for i0, i1 in self._spans(start, stop):
                if self._is_long(i0, i1) and self.cut is not None:
                    out.append(self._read_long(f, i0, self.cut))
                    continue
                for i, text in self._lines(f, i0, i1):
                    value = self._value(i, text) if self.kind == "jsonl" else text
                    out.append(self._cut(i, value))
        return out

    def close(self) -> None:
        pass

    # ---- reading ----

    @staticmethod
    def _version(st: os.stat_result) -> tuple[int, int]:
        return st.st_size, st.st_mtime_ns

    def _open(self) -> BinaryIO:
        """The file, checked to be the one the index was built from."""
        f = self.path.open("rb")
        now = self._version(os.fstat(f.fileno()))
        if now != self._stat:
            f.close()
            raise JobError(
                f"{self.path}: changed while this run reads it ({self._stat[0]} bytes when "
                f"indexed, now {now[0]}, modified since); rerun once the file is final"
            )
        return f

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
        with self._open() as f:
            start = int(self._starts[i])
            try:
                text, complete = read_string(f, start + offset, int(self._ends[i]), chars)
            except LineError as e:
                raise JobError(f"{self.where(i)}: {e}") from None
        return text if complete else TextPrefix(text, partial(self._more_json, i, offset))

    def _more(self, i: int, chars: int) -> Item:
        """Row i again, keeping `chars` characters (TextPrefix.more)."""
        cut = TextCut(chars, self.cut.ids if self.cut else 0)
        with self._open() as f:
            if self._is_long(i, i + 1):
                return self._read_long(f, i, cut)
            ((_, text),) = self._lines(f, i, i + 1)
        return self._cut(i, self._value(i, text) if self.kind == "jsonl" else text, cut)

    # ---- values ----

    def _value(self, i: int, text: str) -> str | list[int]:
        """The field of JSONL line i, checked."""
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            column = len(text[: e.pos].encode("utf-8", "surrogatepass")) + 1
            raise JobError(f"{self.where(i)}: not valid JSON: {e.msg} (byte {column})") from None
        except RecursionError:
            raise JobError(f"{self.where(i)}: not valid JSON: nested too deeply") from None
        except ValueError as e:  # an int of more than 4300 digits
            raise JobError(f"{self.where(i)}: not valid JSON: {clip(str(e), 80)}") from None
        value = record.get(self.dataset) if isinstance(record, dict) else None
        if isinstance(value, str):
            self._check_text(i, value)
            return value
        if is_token_ids(value):
            for v in value:
                if not INT64[0] <= v <= INT64[1]:
                    raise JobError(
                        f"{self.where(i)}: token id {clip(str(v), 30)} in field "
                        f"{self.dataset!r} does not fit int64"
                    )
            return value
        brief = "nothing (no such field)" if value is None else clip(json.dumps(value), 60)
        raise self._field_error(i, brief)

    def _check_text(self, i: int, text: str) -> None:
        if (m := _SURROGATE.search(text)) is not None:
            raise JobError(
                f"{self.where(i)}: field {self.dataset!r} holds a lone surrogate "
                f"(\\u{ord(m.group()):04x}), not text"
            )

    def _field_error(self, i: int, brief: str) -> JobError:
        return JobError(
            f"{self.where(i)}: field {self.dataset!r} (input.field) must be a text or a list "
            f"of token ids (integers); got {clip(brief, 60)}"
        )

    def _cut(self, i: int, value: str | list[int], cut: TextCut | None = None) -> Item:
        cut = cut or self.cut
        if cut is None:
            return value
        if not isinstance(value, str):
            return value[: cut.ids]
        if len(value) <= cut.chars:
            return value
        return TextPrefix(value[: cut.chars], partial(self._more, i))
