"""Texts into batches under a token budget: bounded memory whatever the lengths, few
shapes for XLA to compile, little padding.

`packed_batches` puts several sequences in a row, each attending only to itself (every
text model: encoders, GPT-2, Llama-family decoders): rows of one length from a short
ladder (16, 24, 32, 48, ...) filled best-fit, longest first, as many rows as fit in
`max_tokens` padded tokens, so the dense layers see almost no padding. Every sequence's
result comes back at its input row.

Under a compiler a batch's rows are a power of two (max_tokens // length when full), so a
run compiles a few programs per ladder length it meets.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

MIN_SEGMENT_TOKENS = 8  # sizes the per-batch segment slots: max_tokens // this


def padded_length(n: int) -> int:
    """The padded sequence length for a batch whose longest text has n tokens: the next of
    16, 24, 32, 48, 64, 96, 128, ... (at most ~1.5x padding; few shapes for XLA to compile)."""
    size = 16
    while True:
        for candidate in (size, size * 3 // 2):
            if n <= candidate:
                return candidate
        size *= 2


@dataclass
class TokenCounts:
    """Tokens of real text, and tokens computed (padding included): their ratio is the
    padding efficiency, reported per rank in the output's rank_metrics. And rows that lost
    tokens: cut before tokenizing, or truncated to the maximum length."""

    real: int = 0
    computed: int = 0
    rows_truncated: int = 0
    shapes: set[tuple[int, ...]] = field(default_factory=set)  # batch shapes run (compiles)


def rows_for(length: int, max_tokens: int) -> int:
    """Rows of `length` tokens in a batch: as many as the budget holds (at least one)."""
    return max(1, max_tokens // length)


def height_for(used: int, full: int, compiled: bool) -> int:
    """Rows a batch is given: just those used, or under a compiler the next power of two
    (at most `full`): a chunk's last, part-filled batch then wastes at most half, and
    each row length still compiles only a few shapes."""
    if not compiled:
        return used
    height = 1
    while height < used:
        height *= 2
    return min(height, full)


@dataclass(frozen=True)
class PackedBatch:
    """Sequences packed into rows: token t of row r belongs to segment segments[r, t]
    (n_segments where it is padding) at position positions[r, t] of its sequence."""

    rows: np.ndarray  # (S,) the item each segment holds, in segment order
    ids: np.ndarray  # (R, L) token ids (0 in padding)
    segments: np.ndarray  # (R, L) int32
    positions: np.ndarray  # (R, L) int32: position ids for the embeddings
    first: np.ndarray  # (n_segments,) int32: flat index (r * L + t) of a segment's first token
    lengths: np.ndarray  # (n_segments,) int32: its tokens (0 for an unused slot)
    n_segments: int  # segment slots (static under a compiler)


def packed_batches(
    ids: list[np.ndarray],
    max_tokens: int,
    full_height: bool,
    counts: TokenCounts,
    position_ids: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[PackedBatch]:
    """Sequences packed best-fit into rows, longest first: each batch has rows of one
    ladder length L (that of its longest sequence), max_tokens // L of them, and at most
    max_tokens // MIN_SEGMENT_TOKENS sequences. `position_ids(ids)` gives a sequence's
    position ids (default 0, 1, 2, ...: RoBERTa's count from its padding id)."""
    lengths = np.array([max(1, len(t)) for t in ids], dtype=np.int64)
    waiting = [int(i) for i in np.argsort(-lengths, kind="stable")]
    slots = max(1, max_tokens // MIN_SEGMENT_TOKENS)
    while waiting:
        width = padded_length(int(lengths[waiting[0]]))
        height = rows_for(width, max_tokens)
        placed, waiting = fill_rows(waiting, lengths, width, height, slots)
        used = height_for(1 + max(r for _, r, _ in placed), height, full_height)
        counts.real += int(sum(lengths[i] for i, _, _ in placed))
        counts.computed += used * width
        counts.shapes.add((used, width))
        yield pack(ids, placed, used, width, slots, position_ids)


def fill_rows(
    order: list[int], lengths: np.ndarray, width: int, height: int, slots: int
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Best fit, in the given order: ([(item, row, offset)], the items left over)."""
    free = [(width, r) for r in range(height)]  # (space left, row), sorted
    filled = [0] * height
    placed, left = [], []
    for n, i in enumerate(order):
        need = int(lengths[i])
        k = bisect.bisect_left(free, (need, -1))
        if k == len(free) or len(placed) == slots:
            left.append(i)
            if len(placed) == slots or not free or free[-1][0] < int(lengths[order[-1]]):
                return placed, left + order[n + 1 :]  # nothing more fits
            continue
        space, r = free.pop(k)
        placed.append((i, r, filled[r]))
        filled[r] += need
        if space > need:
            bisect.insort(free, (space - need, r))
    return placed, left


def pack(
    ids: list[np.ndarray],
    placed: list[tuple[int, int, int]],
    height: int,
    width: int,
    slots: int,
    position_ids: Callable[[np.ndarray], np.ndarray] | None,
) -> PackedBatch:
    tokens = np.zeros((height, width), np.int64)
    segments = np.full((height, width), slots, np.int32)
    positions = np.zeros((height, width), np.int32)
    first = np.zeros(slots, np.int32)
    lengths = np.zeros(slots, np.int32)
    for s, (i, r, at) in enumerate(placed):
        seq, n = ids[i], len(ids[i])  # an empty row keeps one padding token: no segment
        tokens[r, at : at + n] = seq
        segments[r, at : at + n] = s
        positions[r, at : at + n] = np.arange(n) if position_ids is None else position_ids(seq)
        first[s], lengths[s] = r * width + at, n
    rows = np.array([i for i, _, _ in placed], dtype=np.int64)
    return PackedBatch(rows, tokens, segments, positions, first, lengths, slots)


def sequence_sums(batch: PackedBatch, token_terms: np.ndarray) -> np.ndarray:
    """Per-sequence sums, in float64, of a decoder's per-next-token terms (R, L-1): a term
    belongs to the sequence of the token it predicts; padding's fall in a slot dropped here.
    In the order of `batch.rows`."""
    target = batch.segments[:, 1:].ravel()
    sums = np.bincount(target, token_terms.ravel().astype(np.float64), batch.n_segments + 1)
    return sums[: len(batch.rows)]
