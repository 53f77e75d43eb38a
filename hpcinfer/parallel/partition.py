"""Even splits of n items over ranks: pure arithmetic, shared by rows and weights.

Used for a DP group's block of chunks and for a TP rank's slice of a weight dimension.
Items are split as evenly as possible, the remainder going to the lowest ranks:
n=10 over 4 ranks -> 3, 3, 2, 2. Ranks beyond n own nothing (a valid, empty share).
"""

from __future__ import annotations


def split_range(n: int, rank: int, size: int) -> range:
    """The contiguous share of `n` items owned by `rank` of `size`."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside 0..{size - 1}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def split_sizes(n: int, size: int) -> list[int]:
    """len(split_range(n, r, size)) for every rank r."""
    return [len(split_range(n, r, size)) for r in range(size)]


def split_slice(n: int, rank: int, size: int) -> slice:
    """split_range as a slice, for indexing arrays and reading tensor slices."""
    r = split_range(n, rank, size)
    return slice(r.start, r.stop)
