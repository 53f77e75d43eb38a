"""Load balance between DP groups: static blocks, or work stealing with no master.

Every DP group owns a range [head, tail) of chunk indices, packed into one int64 word
(head << 32 | tail) that any group can read and compare-and-swap (hpcinfer.parallel.comm's
AtomicWords: MPI passive-target atomics).

    owner   takes its next chunk from the head:  (h, t) -> (h + 1, t)
    thief   whose range is empty picks victims in a random order and takes the tail
            half of the first non-empty range:   (h, t) -> (h, t - k), k = ceil((t - h) / 2)
            then publishes [t - k, t) as its own range, which others may steal from in turn;
            after MAX_PROBES empty victims (all of them, on fewer groups) it stops

Every change is one compare-and-swap on the word it changes, so a chunk index leaves a
range exactly once: each chunk is computed exactly once, whatever the timing. Taking
half keeps stolen work contiguous and makes the number of steals logarithmic in the
imbalance.

Termination needs no master: no work is ever created and every range is finished by
whoever holds it, so a group that finds no work among the victims it probes is done;
work in flight between a victim and a thief is computed by the thief. The run's closing
barrier is the global "all done".

A TP group steals as one unit: its leader claims (the only rank in the window), its
members follow the leader's claims by broadcast.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hpcinfer.parallel.partition import split_range

if TYPE_CHECKING:  # the stealing logic itself is pure: tests and simulations need no MPI
    from hpcinfer.parallel.grid import Grid

STEAL_RETRIES = 3  # compare-and-swap retries on one victim whose range keeps changing
# Victims probed before a thief gives up. A thief that stops early loses nothing (every
# range is finished by its owner); probing all P - 1 others would make the end of a run
# cost P probes per group, which the model in benchmarks/steal_simulation.py shows
# dominating at 16,384 ranks.
MAX_PROBES = 64


def pack(head: int, tail: int) -> int:
    return (head << 32) | tail


def unpack(word: int) -> tuple[int, int]:
    return word >> 32, word & 0xFFFFFFFF


class Words(Protocol):
    """Shared int64 words, one per group (AtomicWords, or a dict in tests/simulation)."""

    def read(self, target: int) -> int: ...

    def compare_and_swap(self, target: int, expected: int, new: int) -> bool: ...

    def replace(self, target: int, new: int) -> None: ...


@dataclass
class ClaimStats:
    stolen_chunks: int = 0  # chunks this group got by stealing
    steals: int = 0  # successful steals
    steal_attempts: int = 0  # victims probed (reads, and compare-and-swaps tried)
    steal_seconds: float = 0.0  # time spent looking for work once the own range was empty
    stolen: set[int] = field(default_factory=set)  # indices that came from a steal


class Stealer:
    """Claims chunk indices for group `me` of `size`, stealing when its range runs dry."""

    def __init__(self, words: Words, me: int, size: int, seed: int = 0):
        self.words, self.me, self.size = words, me, size
        self.rng = random.Random(seed * 7919 + me)
        self.stats = ClaimStats()

    def claim(self) -> int | None:
        """The next chunk index for this group, or None when no range holds any."""
        while True:
            index = self._take_own()
            if index is not None:
                return index
            t0 = time.perf_counter()
            found = self._steal()
            self.stats.steal_seconds += time.perf_counter() - t0
            if not found:
                return None

    def _take_own(self) -> int | None:
        while True:
            word = self.words.read(self.me)
            head, tail = unpack(word)
            if head >= tail:
                return None
            if self.words.compare_and_swap(self.me, word, pack(head + 1, tail)):
                return head

    def _steal(self) -> bool:
        others = [v for v in range(self.size) if v != self.me]
        victims = self.rng.sample(others, min(len(others), MAX_PROBES))
        for victim in victims:
            for _ in range(STEAL_RETRIES):
                self.stats.steal_attempts += 1
                word = self.words.read(victim)
                head, tail = unpack(word)
                if head >= tail:
                    break
                k = (tail - head + 1) // 2
                if self.words.compare_and_swap(victim, word, pack(head, tail - k)):
                    self.words.replace(self.me, pack(tail - k, tail))
                    self.stats.steals += 1
                    self.stats.stolen_chunks += k
                    self.stats.stolen.update(range(tail - k, tail))
                    return True
        return False


def initial_range(n_chunks: int, group: int, groups: int) -> int:
    """The packed word of a group's starting block."""
    block = split_range(n_chunks, group, groups)
    return pack(block.start, block.stop)


def static_claims(n_chunks: int, group: int, groups: int) -> Iterator[int]:
    yield from split_range(n_chunks, group, groups)


def stealing_claims(stealer: Stealer) -> Iterator[int]:
    while (index := stealer.claim()) is not None:
        yield index


class GroupClaims:
    """This rank's stream of chunk indices: its DP group's claims, shared across its TP group.

    The TP leader claims (statically, or by stealing through an AtomicWords window over
    the leaders); the other TP ranks receive each claim by broadcast, -1 meaning "done".
    """

    def __init__(
        self,
        grid: Grid,
        n_chunks: int,
        mode: str,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        from hpcinfer.parallel.comm import AtomicWords

        self.grid, self.n_chunks, self.mode = grid, n_chunks, mode
        self.should_stop = should_stop
        self.stealer: Stealer | None = None
        self.words = None
        if grid.is_leader and mode == "steal":
            self.words = AtomicWords(
                grid.dp_group.comm, initial_range(n_chunks, grid.dp_rank, grid.dp_size)
            )
            self.stealer = Stealer(self.words, grid.dp_rank, grid.dp_size)

    @property
    def stats(self) -> ClaimStats:
        return self.stealer.stats if self.stealer else ClaimStats()

    def _leader(self) -> Iterator[int]:
        if self.stealer is not None:
            claims = stealing_claims(self.stealer)
        else:
            claims = static_claims(self.n_chunks, self.grid.dp_rank, self.grid.dp_size)
        while not self.should_stop():  # checked between chunks, before each claim
            index = next(claims, None)
            if index is None:
                return
            yield index

    def __iter__(self) -> Iterator[int]:
        tp = self.grid.tp_group
        if tp.size == 1:
            yield from self._leader()
        elif self.grid.is_leader:
            for index in self._leader():
                tp.bcast_int(index)
                yield index
            tp.bcast_int(-1)
        else:
            while (index := tp.bcast_int(None)) >= 0:
                yield index

    def close(self) -> None:
        """Collective over the leaders: free the window (after every group is done)."""
        if self.words is not None:
            self.words.free()
