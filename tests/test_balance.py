"""Work-stealing policy on in-process words, with real thread interleavings."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcinfer.schedule.balance import Stealer, initial_range, pack, unpack
from hpcinfer.tools.run_attrs import balance_summary


class LockedWords:
    """The Words protocol over a dict, atomic per operation (as MPI atomics are)."""

    def __init__(self, words: dict[int, int]):
        self.words, self.lock = dict(words), threading.Lock()

    def read(self, target):
        with self.lock:
            return self.words[target]

    def compare_and_swap(self, target, expected, new):
        with self.lock:
            if self.words[target] != expected:
                return False
            self.words[target] = new
            return True

    def replace(self, target, new):
        with self.lock:
            self.words[target] = new


def test_pack_round_trips():
    assert unpack(pack(5, 2**32 - 1)) == (5, 2**32 - 1)
    assert initial_range(10, 1, 4) == pack(3, 6)


def test_a_lone_group_takes_its_block_then_steals_the_rest():
    words = LockedWords({g: initial_range(10, g, 2) for g in range(2)})
    thief = Stealer(words, 1, 2)
    got = []
    while (i := thief.claim()) is not None:
        got.append(i)
    assert sorted(got) == list(range(10))
    assert thief.stats.stolen_chunks == 5 and thief.stats.steals == 3  # 3 of 5, 1 of 2, 1


@settings(deadline=None, max_examples=25)
@given(st.integers(0, 400), st.integers(1, 8), st.integers(0, 10**6))
def test_concurrent_claims_take_every_chunk_exactly_once(n_chunks, groups, seed):
    words = LockedWords({g: initial_range(n_chunks, g, groups) for g in range(groups)})
    claimed: list[list[int]] = [[] for _ in range(groups)]

    def work(g):
        stealer = Stealer(words, g, groups, seed)
        while (i := stealer.claim()) is not None:
            claimed[g].append(i)

    threads = [threading.Thread(target=work, args=(g,)) for g in range(groups)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(i for part in claimed for i in part) == list(range(n_chunks))


def test_balance_summary():
    metrics = [{"busy_seconds": b, "stolen_chunks": 1, "steals": 1} for b in (1.0, 3.0)]
    s = balance_summary(metrics, wall=4.0)
    assert s["imbalance"] == pytest.approx(1.5)
    assert s["efficiency"] == pytest.approx(0.5)
    assert s["stolen_chunks"] == 2


def test_thieves_that_give_up_early_lose_no_chunk(monkeypatch):
    monkeypatch.setattr("hpcinfer.schedule.balance.MAX_PROBES", 1)
    words = LockedWords({g: initial_range(300, g, 6) for g in range(6)})
    claimed: list[int] = []
    lock = threading.Lock()

    def work(g):
        stealer = Stealer(words, g, 6, seed=g)
        while (i := stealer.claim()) is not None:
            with lock:
                claimed.append(i)

    threads = [threading.Thread(target=work, args=(g,)) for g in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(claimed) == list(range(300))
