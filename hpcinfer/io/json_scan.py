"""One JSONL line too long to parse whole, scanned in constant memory.

`scan_line` reads a line a block at a time, checks that it is valid UTF-8 and one valid
JSON value (as `json.loads` would, including its NaN/Infinity literals), and keeps only
the start of the top-level object's `field`: a text's first `max_chars` characters
(escapes decoded), or a token-id list's first `max_ids` ids (every id, kept or not,
checked to fit int64). Memory is one block plus what is kept, whatever the line's length;
a text value streams at memchr speed, a list of numbers at regex speed (~30 MB/s).

Like `json.loads`, a repeated key counts once, with its last value; nesting may be as deep
as the line likes (an explicit stack, no recursion).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from hpcinfer.io.utf8_blocks import BlockError, Utf8Blocks

BLOCK_BYTES = 1 << 20
LOOKAHEAD = 64  # bytes kept in the buffer ahead of any token but a string or a number
MAX_NUMBER_BYTES = 4400  # Python refuses ints over 4300 digits; a longer number is an error
INT64 = (-(2**63), 2**63 - 1)

# No possessive quantifiers: Python 3.11.2 matches some wrongly. Repeated groups are
# bounded (RUN, callers loop): unbounded, sre keeps ~70 bytes per repetition.
_NUM = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_NUMBER = re.compile(_NUM)
_LITERAL = re.compile(rb"true|false|null|NaN|Infinity|-Infinity")
_SCALAR = rb"(?:" + _NUM + rb'|true|false|null|"[^"\\\x00-\x1f]*")'
_W = rb"[ \t\n\r]*"
_SPACE = re.compile(_W)
RUN = 1024  # repetitions of a group per match; the callers loop
# A string's body: text and whole escapes, up to a quote, a control byte or a bad escape.
_BODY = re.compile(rb'(?:[^"\\\x00-\x1f]+|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})){0,%d}' % RUN)
# ... of a text: a surrogate escape only as a high + low pair (json.loads would make a
# lone one a str that no UTF-8 encoder, nor a tokenizer, accepts).
_TEXT_BODY = re.compile(
    rb'(?:[^"\\\x00-\x1f]+|\\(?:["\\/bfnrt]|u(?![dD][89a-fA-F])[0-9a-fA-F]{4})'
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}){0,%d}" % RUN
)
_LONE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# Runs of simple elements, each ending with its comma: skipped RUN at a time.
_ARRAY_RUN = re.compile(rb"(?:" + _W + _SCALAR + _W + rb",){1,%d}" % RUN)
_MEMBER_RUN = re.compile(
    rb"(?:" + _W + rb'"[^"\\\x00-\x1f]*"' + _W + rb":" + _W + _SCALAR + _W + rb",){1,%d}" % RUN
)
_INT_RUN = re.compile(rb"(?:" + _W + rb"-?(?:0|[1-9][0-9]{0,17})" + _W + rb",){1,%d}" % RUN)


def body_end(pattern: re.Pattern, buf: bytes | bytearray, pos: int) -> int:
    """Where a string body that starts at `pos` ends (`pattern` matches RUN pieces)."""
    while (end := pattern.match(buf, pos).end()) > pos:
        pos = end
    return pos


class LineError(ValueError):
    """The line is not valid UTF-8 or not valid JSON; `column` is the 1-based byte."""

    def __init__(self, message: str, column: int):
        super().__init__(f"{message} (byte {column})")
        self.message, self.column = message, column


@dataclass(frozen=True)
class FieldValue:
    """What the line holds under `field`, cut as asked."""

    # "text", "ids", "scalar" (a number, true, false, null), "missing" (no such key, or
    # not an object), "other"
    kind: str
    value: object  # the text's or the ids' start, a scalar's value; None otherwise
    complete: bool  # `value` is the whole value
    brief: str  # the value as written, its first characters (for messages)
    offset: int = -1  # a text's opening quote, bytes into the line (for `read_string`)


def scan_line(
    f: BinaryIO, start: int, stop: int, field: str, max_chars: int, max_ids: int
) -> FieldValue:
    """Scan bytes [start, stop) of `f` (one line); a fault raises LineError."""
    return _Scanner(f, start, stop, field, max_chars, max_ids).run()


def read_string(f: BinaryIO, start: int, stop: int, max_chars: int) -> tuple[str, bool]:
    """The first `max_chars` characters of the JSON string whose opening quote is at
    byte `start` (a FieldValue's offset, in a line already scanned), and whether that is
    all of it; reads only as far as those characters go."""
    scanner = _Scanner(f, start, stop, "", max_chars, 0)
    scanner.need(1)
    raw, whole = scanner.string(12 * max_chars + 12, early=True, text=True)
    text = _decode(raw, whole)
    return text[:max_chars], whole and len(text) <= max_chars


class _Scanner(Utf8Blocks):
    def __init__(self, f: BinaryIO, start: int, stop: int, field: str, chars: int, ids: int):
        super().__init__(f, start, stop)
        self.field, self.max_chars, self.max_ids = field, chars, ids
        self.key_keep = 12 * len(field) + 12  # raw bytes that can spell `field`
        self.found = FieldValue("missing", None, True, "nothing (no such field)")
        self.ids: list[int] | None = None  # the field's token ids while its list is open
        self.ids_whole = True

    # ---- the buffer ----

    def block_bytes(self) -> int:
        return BLOCK_BYTES

    def fill(self) -> bool:
        try:
            return super().fill()
        except BlockError as e:
            column = self.at() if e.column is None else e.column
            raise LineError(f"the line {e.what}" if e.column is None else e.what, column) from None

    def at(self, pos: int | None = None) -> int:
        return self.base + (self.pos if pos is None else pos) + 1

    def need(self, n: int) -> None:
        while len(self.buf) - self.pos < n and self.fill():
            pass

    def peek(self) -> int | None:
        """The next byte after whitespace, None at the end of the line."""
        while True:
            self.need(LOOKAHEAD)
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                self.need(LOOKAHEAD)
                return self.buf[self.pos]
            if not self.fill():
                return None

    def fail(self, message: str) -> LineError:
        return LineError(f"not valid JSON: {message}", self.at())

    # ---- the grammar, with an explicit stack ----

    def run(self) -> FieldValue:
        stack: list[int] = []
        state, field_next = "value", False
        while True:
            c = self.peek()
            if state == "after":
                if not stack:
                    if c is not None:
                        raise self.fail("Extra data")
                    return self.found
                if c == ord(","):
                    self.pos += 1
                    state = "key" if stack[-1] == ord("{") else "value"
                    if state == "value":
                        self.skip_array_run(len(stack))
                    else:
                        self.skip_member_run(len(stack))
                elif c is not None and c == stack[-1] + 2:  # "[" + 2 == "]", "{" + 2 == "}"
                    self.close(stack)
                else:
                    raise self.fail("Expecting ',' delimiter")
            elif c is None:
                raise self.fail("Expecting value")
            elif state in ("key", "key or close"):
                if c == ord("}") and state == "key or close":
                    state = self.close(stack)
                    continue
                if c != ord('"'):
                    raise self.fail("Expecting property name enclosed in double quotes")
                raw, whole = self.string(self.key_keep if len(stack) == 1 else 0)
                field_next = len(stack) == 1 and whole and _decode(raw, True) == self.field
                if self.peek() != ord(":"):
                    raise self.fail("Expecting ':' delimiter")
                self.pos += 1
                state = "value"
            elif state == "value or close" and c == ord("]"):
                state = self.close(stack)
            else:
                state = self.value(c, stack, field_next)
                field_next = False

    def value(self, c: int, stack: list[int], is_field: bool) -> str:
        """Consume a value starting with byte `c`; the state that follows."""
        in_ids = self.ids is not None and len(stack) == 2
        if in_ids and c in b'{["':
            self.not_ids()
        if is_field:
            self.ids = None
            brief = self.brief()
        if c in b"{[":
            self.pos += 1
            stack.append(c)
            if is_field and c == ord("["):
                self.ids, self.ids_whole = [], True
                self.found = FieldValue("ids", None, False, brief)
            elif is_field:
                self.found = FieldValue("other", None, True, brief)
            if c == ord("["):
                self.skip_array_run(len(stack))
                return "value or close"
            return "key or close"
        if c == ord('"'):
            offset = self.at() - 1
            keep = 12 * self.max_chars + 12 if is_field else 0
            raw, whole = self.string(keep, text=is_field)
            if is_field:
                text = _decode(raw, whole)
                complete = whole and len(text) <= self.max_chars
                self.found = FieldValue("text", text[: self.max_chars], complete, brief, offset)
            return "after"
        token = self.number() or self.literal()
        if is_field:
            self.found = _scalar(token, brief)
        elif in_ids:
            self.add_id(token)
        return "after"

    def close(self, stack: list[int]) -> str:
        """Consume the bracket that closes the innermost container; the field's id list
        may be done. The state that follows."""
        self.pos += 1
        stack.pop()
        if len(stack) == 1 and self.ids is not None:
            self.found = FieldValue("ids", self.ids, self.ids_whole, self.found.brief)
            self.ids = None
        return "after"

    # ---- the field's token ids ----

    def add_id(self, token: bytes) -> None:
        if not re.fullmatch(rb"-?(?:0|[1-9][0-9]*)", token):
            self.not_ids()
            return
        if len(token) > 18 and not INT64[0] <= int(token) <= INT64[1]:
            raise LineError(
                f"token id {token[:30].decode()} in field {self.field!r} does not fit int64",
                self.at() - len(token),
            )
        assert self.ids is not None
        if len(self.ids) < self.max_ids:
            self.ids.append(int(token))
        else:
            self.ids_whole = False

    def not_ids(self) -> None:
        """The field's list holds something other than integers."""
        self.ids = None
        self.found = FieldValue("other", None, True, self.found.brief)

    # ---- tokens ----

    def brief(self) -> str:
        self.need(LOOKAHEAD)
        raw = self.buf[self.pos : self.pos + LOOKAHEAD]
        return " ".join(codecs.getincrementaldecoder("utf-8")().decode(raw).split()) + "..."

    def skip_array_run(self, depth: int) -> None:
        """Skip elements of an array at `depth` while they are simple and complete."""
        run = _INT_RUN if self.ids is not None and depth == 2 else _ARRAY_RUN
        if self.ids is not None and depth == 2 and len(self.ids) < self.max_ids:
            return  # still keeping ids: one at a time
        self.skip_run(run, self.ids is not None and depth == 2)

    def skip_member_run(self, depth: int) -> None:
        if depth >= 2:  # the top level's keys must each be compared with the field
            self.skip_run(_MEMBER_RUN, False)

    def skip_run(self, run: re.Pattern, of_ids: bool) -> None:
        while True:
            self.need(BLOCK_BYTES // 2)
            m = run.match(self.buf, self.pos)
            if not m:
                return
            self.pos = m.end()
            if of_ids:
                self.ids_whole = False

    def string(self, keep: int, early: bool = False, text: bool = False) -> tuple[bytes, bool]:
        """Consume a string; its raw bytes (up to `keep`) and whether that is all of it;
        `early`: stop once `keep` bytes are kept (the rest of the string is not read);
        `text`: it is the field's text, so a lone surrogate escape is an error.

        Plain text between escapes is found with memchr (bytes.find), each byte's next
        occurrence remembered; a run of escapes (JSON's \\uXXXX for non-ASCII text) goes
        through one regex match.
        """
        start = self.at()
        self.pos += 1
        kept, whole = bytearray(), True
        quote, backslash = _Next(b'"'), _Next(b"\\")
        while True:
            if self.pos >= len(self.buf) and not self.fill():
                raise LineError("not valid JSON: Unterminated string starting at", start)
            buf, pos = self.buf, self.pos
            stop = min(quote.find(self), backslash.find(self))
            segment = np.frombuffer(buf, np.uint8, stop - pos, pos)
            if (bad := np.flatnonzero(segment < 32)).size:
                at = self.at(pos + int(bad[0]))
                raise LineError("not valid JSON: Invalid control character at", at)
            whole = _keep(kept, buf, pos, stop, keep) and whole
            self.pos = stop
            if early and not whole:
                return bytes(kept), False
            if stop == len(buf):
                continue
            if buf[stop] == ord('"'):
                self.pos += 1
                return bytes(kept), whole
            self.need(12)
            end = body_end(_TEXT_BODY if text else _BODY, self.buf, self.pos)
            if end == self.pos:
                lone = _LONE.match(self.buf, self.pos)
                if text and lone:
                    raise LineError(
                        f"field {self.field!r} holds a lone surrogate "
                        f"({lone.group().decode().lower()}), not text",
                        self.at(),
                    )
                raise self.fail("Invalid \\escape")
            whole = _keep(kept, self.buf, self.pos, end, keep) and whole
            self.pos = end

    def number(self) -> bytes | None:
        self.need(MAX_NUMBER_BYTES + 1)  # the whole number is in the buffer
        m = _NUMBER.match(self.buf, self.pos)
        if not m:
            return None
        if m.end() - m.start() > MAX_NUMBER_BYTES:
            raise self.fail(f"a number longer than {MAX_NUMBER_BYTES} characters")
        self.pos = m.end()
        return m.group()

    def literal(self) -> bytes:
        m = _LITERAL.match(self.buf, self.pos)
        if not m:
            raise self.fail("Expecting value")
        self.pos = m.end()
        return m.group()


def _scalar(token: bytes, brief: str) -> FieldValue:
    try:
        return FieldValue("scalar", json.loads(token), True, brief)
    except ValueError:  # an int of over 4300 digits: no use to anyone
        return FieldValue("other", None, True, brief)


class _Next:
    """Where one byte next occurs in the scanner's buffer, remembered as a line offset so
    that a long string with many escapes is searched once, not once per escape."""

    def __init__(self, byte: bytes):
        self.byte, self.found, self.clear_until = byte, -1, 0

    def find(self, s: _Scanner) -> int:
        """Its index in s.buf at or after s.pos, or len(s.buf) if not there yet."""
        if self.found >= s.base + s.pos:
            return self.found - s.base
        i = s.buf.find(self.byte, max(s.pos, self.clear_until - s.base))
        if i < 0:
            self.clear_until = s.base + len(s.buf)
            return len(s.buf)
        self.found = s.base + i
        return i


def _keep(kept: bytearray, buf: bytes, start: int, stop: int, keep: int) -> bool:
    """Add buf[start:stop] to `kept` up to `keep` bytes; False if some did not fit."""
    room = keep - len(kept)
    if room > 0:
        kept += buf[start : start + min(room, stop - start)]
    return stop - start <= room


def _decode(raw: bytes, whole: bool) -> str:
    """A string's raw bytes (escapes whole) -> its text; a cut one loses a split last
    character (a partial UTF-8 sequence or half a surrogate pair)."""
    if not whole:
        raw = raw[: body_end(_BODY, raw, 0)]  # no escape cut in two
    text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=whole)
    value = json.loads('"' + text + '"')
    if not whole and value and "\ud800" <= value[-1] <= "\udbff":
        value = value[:-1]
    return value
