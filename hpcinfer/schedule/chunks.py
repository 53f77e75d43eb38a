"""Chunks and their assignment to ranks: pure arithmetic, testable without MPI.

Rows are cut into fixed chunks of `chunk_size` (the last may be shorter). A chunk is
the unit of scheduling and of durable progress; its bounds depend only on the row count
and the chunk size, never on the rank count, so a chunk's result is the same whoever
computes it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first row
    stop: int  # one past the last row

    @property
    def rows(self) -> int:
        return self.stop - self.start


def make_chunks(n_rows: int, chunk_size: int) -> list[Chunk]:
    """[Chunk(0, 0, chunk_size), Chunk(1, chunk_size, 2 * chunk_size), ...] covering n_rows."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [
        Chunk(i, start, min(start + chunk_size, n_rows))
        for i, start in enumerate(range(0, n_rows, chunk_size))
    ]
