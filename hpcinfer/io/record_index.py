"""Where every record of a file's content lies: the index a reader seeks by.

One pass over the content, a block at a time with numpy (memory: the index, 8-24 bytes
per record, never the file):

    line_index        JSONL and text: the end of every line
    csv_index         CSV/TSV (RFC 4180): a newline ends a record only outside quotes,
                      i.e. after an even number of quote characters (an escaped quote is
                      two); blank lines are skipped; record 0 is the header
    json_array_index  a JSON array: the span of every top-level element, found from its
                      structural bytes ([ ] { } , outside strings, a quote escaped when
                      an odd run of backslashes precedes it)

`lines` (CSV, JSON array) holds the 1-based line each record starts on, for messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

INDEX_BLOCK_BYTES = 8 * 2**20
NL, QUOTE, BACKSLASH = ord("\n"), ord('"'), ord("\\")
WHITESPACE = np.zeros(256, bool)
WHITESPACE[[ord(" "), ord("\t"), ord("\n"), ord("\r")]] = True
OPENERS, CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))


class RecordError(ValueError):
    """The content is not records of its format; `line` (1-based) where known. Readers
    put the file's name in front (the stream's own errors are JobErrors already)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message, self.line = message, line


@dataclass(frozen=True)
class RecordIndex:
    """Record i is content bytes [starts[i], ends[i]); `total` bytes in all."""

    starts: np.ndarray
    ends: np.ndarray
    total: int
    lines: np.ndarray | None = None  # the line each record starts on (None: line i + 1)

    def line(self, i: int) -> int:
        return int(self.lines[i]) if self.lines is not None else i + 1


def _blocks(f: BinaryIO):
    """(offset, block as uint8) of the content, INDEX_BLOCK_BYTES at a time."""
    offset = 0
    while block := f.read(INDEX_BLOCK_BYTES):
        yield offset, np.frombuffer(block, dtype=np.uint8)
        offset += len(block)


def line_index(f: BinaryIO) -> RecordIndex:
    """Every line: one past its end (a last line without a newline counts)."""
    parts, total = [], 0
    for offset, data in _blocks(f):
        parts.append(np.flatnonzero(data == NL) + 1 + offset)
        total = offset + len(data)
    ends = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if total and (not len(ends) or ends[-1] != total):
        ends = np.append(ends, np.int64(total))
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return RecordIndex(starts, ends, total)


def csv_index(f: BinaryIO) -> RecordIndex:
    """Every CSV record but blank lines; a quote left open at the end is an error naming
    the line it opened on."""
    ends_parts, line_parts, cr_parts = [], [], []
    quotes_before = newlines_before = total = last_quote_line = 0
    last_byte = 0
    for offset, data in _blocks(f):
        quotes = np.flatnonzero(data == QUOTE)
        newlines = np.flatnonzero(data == NL)
        parity = (quotes_before + np.searchsorted(quotes, newlines)) % 2
        ends = newlines[parity == 0]
        ends_parts.append(ends + 1 + offset)
        line_parts.append(np.flatnonzero(parity == 0) + newlines_before + 2)
        cr_parts.append(np.where(ends > 0, data[np.maximum(ends - 1, 0)], last_byte) == 13)
        if len(quotes):
            last_quote_line = newlines_before + int(np.searchsorted(newlines, quotes[-1])) + 1
        quotes_before += len(quotes)
        newlines_before += len(newlines)
        total, last_byte = offset + len(data), int(data[-1])
    if quotes_before % 2:
        raise RecordError("a quoted field is never closed", last_quote_line)
    cat = lambda parts, empty: np.concatenate(parts) if parts else empty  # noqa: E731
    ends = cat(ends_parts, np.zeros(0, np.int64)).astype(np.int64)
    cr = cat(cr_parts, np.zeros(0, bool))
    lines = np.concatenate([[1], *line_parts]).astype(np.int64)  # record k starts on lines[k]
    if total and (not len(ends) or ends[-1] != total):
        ends, cr = np.append(ends, np.int64(total)), np.append(cr, False)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    size = ends - starts
    keep = ~((size == 1) | ((size == 2) & cr))  # a blank line: only its line break
    return RecordIndex(starts[keep], ends[keep], total, lines[: len(starts)][keep])


class _ArrayScan:
    """json_array_index's state between blocks, and the array's top-level events: its
    opening bracket, its commas and its closing bracket, each with the content bytes
    (not whitespace) nearest before and after it."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.backslashes = 0  # the run of backslashes that ends the previous block
        self.newlines = 0  # before the current block
        self.last_content = -1  # the last content byte so far (-1: none)
        self.waiting = False  # the last event's next content byte is in a later block
        self.pos: list[np.ndarray] = []  # per block: event positions
        self.byte: list[np.ndarray] = []  # ... the bracket or comma
        self.opens: list[np.ndarray] = []  # ... an opening bracket at depth 0
        self.before: list[np.ndarray] = []  # ... the content byte before (-1: none)
        self.after: list[np.ndarray] = []  # ... (the content byte after, its line)


def json_array_index(f: BinaryIO) -> RecordIndex:
    """Every top-level element of a JSON array: byte spans, whitespace trimmed. What is
    not one array (another value, data after it, no closing bracket) is an error naming
    the byte; each element's own JSON is checked when its rows are read or validated."""
    s, total = _ArrayScan(), 0
    for offset, data in _blocks(f):
        _scan_block(s, offset, data)
        total = offset + len(data)
    if not s.pos:
        raise RecordError("not a JSON array (no '[' found; for one object per line use JSONL)")
    pos, byte = np.concatenate(s.pos), np.concatenate(s.byte)
    opens, before = np.concatenate(s.opens), np.concatenate(s.before)
    after = np.concatenate(s.after)
    if not opens[0] or before[0] >= 0:
        at = before[0] + 1 if before[0] >= 0 else pos[0] + 1
        raise RecordError(f"not a JSON array (byte {at}; for one object per line use JSONL)")
    if byte[0] != ord("["):
        raise RecordError("a JSON object, not an array (for one object per line use JSONL)")
    if opens[1:].any():
        raise RecordError(f"data after the array (byte {pos[1:][opens[1:]][0] + 1})")
    if len(pos) < 2 or s.depth != 0:
        raise RecordError("the JSON array is never closed (a ']' is missing: truncated file?)")
    if byte[-1] != ord("]"):
        raise RecordError(
            f"not valid JSON: '{chr(byte[-1])}' closes the array (byte {pos[-1] + 1})"
        )
    if s.last_content > pos[-1]:
        raise RecordError(f"data after the array (byte {s.last_content + 1})")
    empty = after[:-1, 0] == pos[1:]  # nothing between two events
    if len(pos) == 2 and empty.all():
        none = np.zeros(0, np.int64)
        return RecordIndex(none, none, total, none)  # []
    if empty.any():
        at = pos[1:][empty][0]
        raise RecordError(f"not valid JSON: Expecting value (byte {at + 1})")
    return RecordIndex(after[:-1, 0], before[1:] + 1, total, after[:-1, 1])


STRUCTURAL = np.zeros(256, bool)
STRUCTURAL[[*OPENERS, *CLOSERS, ord(",")]] = True
STEP = np.zeros(256, np.int64)
STEP[list(OPENERS)], STEP[list(CLOSERS)] = 1, -1
NEAR_STEPS = 32  # whitespace crossed one byte at a time before a full search


def _scan_block(s: _ArrayScan, offset: int, data: np.ndarray) -> None:
    quotes = _unescaped_quotes(s, data)
    structural = np.flatnonzero(STRUCTURAL[data])
    # a byte is inside a string when an odd number of quotes precede it (with the carry)
    inside = (np.searchsorted(quotes, structural) + s.in_string) % 2 == 1
    structural = structural[~inside]
    s.in_string = bool((len(quotes) + s.in_string) % 2)
    space = WHITESPACE[data]
    nl = np.flatnonzero(data == NL)
    if s.waiting:  # the previous block's last event: its next content byte may be here
        (first,) = _nearest(space, np.array([0]), +1, inclusive=True)
        if first >= 0:
            s.after[-1][-1] = [offset + first, s.newlines + int(np.searchsorted(nl, first)) + 1]
            s.waiting = False
    byte = data[structural]
    step = STEP[byte]
    depth_before = s.depth + np.concatenate([[0], np.cumsum(step)[:-1]]).astype(np.int64)
    if len(step) and (depth_before + step).min() < 0:
        at = structural[int(np.argmax(depth_before + step < 0))]
        raise RecordError(f"not valid JSON: a bracket closes nothing (byte {offset + at + 1})")
    s.depth += int(step.sum())
    top = ((depth_before == 0) & (step == 1)) | ((depth_before == 1) & (step != 1))
    pos = structural[top]
    if len(pos):
        prev = _nearest(space, pos, -1)
        prev = np.where(prev >= 0, offset + prev, s.last_content)
        nxt = _nearest(space, pos, +1)
        after_line = s.newlines + np.searchsorted(nl, np.maximum(nxt, 0)) + 1
        s.pos.append(pos + offset)
        s.byte.append(data[pos])
        s.opens.append((depth_before == 0)[top])
        s.before.append(prev.astype(np.int64))
        after = np.where(nxt >= 0, offset + nxt, -1)
        s.after.append(np.stack([after, after_line], axis=1).astype(np.int64))
        s.waiting = bool(nxt[-1] < 0)
    (last,) = _nearest(space, np.array([len(data) - 1]), -1, inclusive=True)
    if last >= 0:
        s.last_content = offset + int(last)
    s.newlines += len(nl)


def _nearest(space: np.ndarray, pos: np.ndarray, direction: int, inclusive: bool = False):
    """For each position, the nearest byte that is not whitespace, after it (direction
    +1) or before it (-1), itself too when `inclusive`; -1 where the block has none.
    Whitespace runs between elements are short: they are crossed a byte at a time, and
    only a long one is searched for in full."""
    n = len(space)
    at = pos.astype(np.int64) + (0 if inclusive else direction)
    for _ in range(NEAR_STEPS):
        inside = (at >= 0) & (at < n)
        moving = inside & space[np.clip(at, 0, n - 1)]
        if not moving.any():
            return np.where(inside, at, -1)
        at[moving] += direction
    content = np.flatnonzero(~space)  # a long run of whitespace: search in full
    inside = (at >= 0) & (at < n)
    if direction > 0:
        k = np.searchsorted(content, np.clip(at, 0, n))
        found = np.where(k < len(content), content[np.minimum(k, len(content) - 1)], -1)
    else:
        k = np.searchsorted(content, np.clip(at, -1, n - 1), side="right") - 1
        found = np.where(k >= 0, content[np.maximum(k, 0)], -1)
    return np.where(inside, found, -1) if len(content) else np.full(len(at), -1)


def _unescaped_quotes(s: _ArrayScan, data: np.ndarray) -> np.ndarray:
    """The block's quote characters that no odd run of backslashes escapes."""
    quotes = np.flatnonzero(data == QUOTE)
    slashes = np.flatnonzero(data == BACKSLASH)
    carry = s.backslashes
    if not len(slashes):
        s.backslashes = 0
        return quotes if not carry % 2 or not len(quotes) or quotes[0] else quotes[1:]
    # runs of consecutive backslashes: where each ends and how long it is
    breaks = np.flatnonzero(np.diff(slashes) != 1)
    ends = np.append(slashes[breaks], slashes[-1])
    starts = np.insert(slashes[breaks + 1], 0, slashes[0])
    lengths = ends - starts + 1
    if starts[0] == 0:
        lengths[0] += carry  # the run goes on from the previous block
    s.backslashes = int(lengths[-1]) if ends[-1] == len(data) - 1 else 0
    k = np.searchsorted(ends, quotes - 1)  # the run that ends just before each quote
    hit = (k < len(ends)) & (ends[np.minimum(k, len(ends) - 1)] == quotes - 1)
    run = np.where(hit, lengths[np.minimum(k, len(ends) - 1)], 0)
    run = np.where(quotes == 0, carry, run)
    return quotes[run % 2 == 0]
