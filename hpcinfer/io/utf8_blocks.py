"""A byte range of a file read a block at a time, its UTF-8 checked as it arrives: what
the streaming JSON and CSV scanners share (memory is a block, whatever the range's length)."""

from __future__ import annotations

import codecs
from typing import BinaryIO


class BlockError(ValueError):
    """`what` went wrong at 1-based byte `column` of the range (None: at its end)."""

    def __init__(self, what: str, column: int | None):
        super().__init__(what)
        self.what, self.column = what, column


class Utf8Blocks:
    """buf[pos:] is what is unread; base is the range offset of buf[0]."""

    def __init__(self, f: BinaryIO, start: int, stop: int):
        self.f, self.left = f, stop - start
        f.seek(start)
        self.buf, self.pos, self.base = b"", 0, 0
        self.utf8 = codecs.getincrementaldecoder("utf-8")()

    def block_bytes(self) -> int:
        """How much one read takes (the scanner's module constant: tests shrink it)."""
        raise NotImplementedError

    def fill(self) -> bool:
        """Append the next block (its UTF-8 checked); False at the end of the range."""
        if self.left <= 0:
            return False
        block = self.f.read(min(self.block_bytes(), self.left))
        if not block:
            raise BlockError("ends early (the file shrank while it was read)", None)
        pending = len(self.utf8.getstate()[0])
        self.left -= len(block)
        try:
            self.utf8.decode(block, final=self.left <= 0)
        except UnicodeDecodeError as e:
            column = self.base + len(self.buf) - pending + e.start + 1
            raise BlockError("not valid UTF-8", column) from None
        self.buf = self.buf[self.pos :] + block
        self.base += self.pos
        self.pos = 0
        return True
