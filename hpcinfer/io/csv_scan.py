"""One CSV record too long to hold whole, scanned in constant memory.

`scan_record` reads the record a block at a time, checks it as csv_input does a short one
(valid UTF-8; every field quoted whole, its quotes doubled, or free of quotes; as many
fields as the header) and keeps only the start of the wanted columns: memory is a block
plus what is kept, whatever the record's length. Quoted text is crossed with memchr
(bytes.find), so a long field streams at memory speed.
"""

from __future__ import annotations

import codecs
from typing import BinaryIO

from hpcinfer.io.utf8_blocks import BlockError, Utf8Blocks

BLOCK_BYTES = 1 << 20
QUOTE = ord('"')


class CsvError(ValueError):
    """The record is not valid CSV (or not UTF-8)."""


class _Record(Utf8Blocks):
    def block_bytes(self) -> int:
        return BLOCK_BYTES

    def fill(self) -> bool:
        try:
            return super().fill()
        except BlockError as e:
            raise CsvError(
                f"the record {e.what}" if e.column is None else f"{e.what} (byte {e.column})"
            ) from None

    def at_end(self) -> bool:
        return self.pos >= len(self.buf) and not self.fill()

    def peek(self) -> int | None:
        if self.pos >= len(self.buf) and not self.fill():
            return None
        return self.buf[self.pos]


def scan_record(
    f: BinaryIO, start: int, stop: int, delimiter: str, n_fields: int, wanted: dict[int, int]
) -> dict[int, tuple[str, bool]]:
    """Bytes [start, stop) of `f` (one record, no line break): for each wanted column
    (index -> characters to keep), its first characters and whether that is all of it."""
    r = _Record(f, start, stop)
    delim = delimiter.encode()
    kept: dict[int, bytearray] = {c: bytearray() for c in wanted}
    whole = dict.fromkeys(wanted, True)
    column = 0
    while True:
        keep = 4 * wanted[column] + 4 if column in wanted else 0
        if r.peek() == QUOTE:
            r.pos += 1
            while True:
                q = r.buf.find(b'"', r.pos)
                if q < 0:  # the field goes on past the buffer
                    _keep(kept, whole, column, r.buf[r.pos :], keep)
                    r.pos = len(r.buf)
                    if not r.fill():
                        raise CsvError("a quoted field is never closed")
                    continue
                _keep(kept, whole, column, r.buf[r.pos : q], keep)
                r.pos = q + 1
                if r.peek() != QUOTE:
                    break
                _keep(kept, whole, column, b'"', keep)  # a doubled quote: one quote of text
                r.pos += 1
            nxt = r.peek()
            if nxt is not None and bytes([nxt]) != delim:
                raise CsvError(f"not valid CSV: text after a closing quote (field {column + 1})")
        else:
            while True:
                d = r.buf.find(delim, r.pos)
                end = len(r.buf) if d < 0 else d
                if r.buf.find(b'"', r.pos, end) >= 0:
                    raise CsvError(
                        f"not valid CSV: a quote inside an unquoted field (field {column + 1}); "
                        "a field holding quotes must be quoted whole, its quotes doubled"
                    )
                _keep(kept, whole, column, r.buf[r.pos : end], keep)
                r.pos = end
                if d >= 0 or not r.fill():
                    break
        if r.at_end():
            break
        r.pos += len(delim)
        column += 1
    if column + 1 != n_fields:
        raise CsvError(f"{column + 1} field(s), but the header has {n_fields}")
    out = {}
    for c, raw in kept.items():
        text = codecs.getincrementaldecoder("utf-8")().decode(bytes(raw), final=whole[c])
        out[c] = (text[: wanted[c]], whole[c] and len(text) <= wanted[c])
    return out


def _keep(kept: dict, whole: dict, column: int, data: bytes, keep: int) -> None:
    if column not in kept:
        return
    room = keep - len(kept[column])
    kept[column] += data[: max(0, room)]
    if len(data) > room:
        whole[column] = False
