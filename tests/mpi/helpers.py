"""Tests written once over a communicator, run at any rank count (after heat's habit).

`collective` makes every rank pass or fail a test together: each rank runs the body,
the verdicts are all-gathered, and a failure on any rank fails the test on all of them,
naming the rank. Without it, one rank moves on to the next test's collectives while
another is still reporting a failure.
"""

from __future__ import annotations

import functools
import socket

import pytest
from mpi4py import MPI

from hpcinfer.parallel.runtime import Runtime

WORLD = MPI.COMM_WORLD


def make_runtime(comm=None) -> Runtime:
    """A Runtime over a duplicate of `comm` (COMM_WORLD; MPI.COMM_SELF for a serial run
    inside the launch)."""
    comm = (WORLD if comm is None else comm).Dup()
    return Runtime(
        comm=comm,
        rank=comm.Get_rank(),
        size=comm.Get_size(),
        local_rank=comm.Get_rank(),
        local_size=comm.Get_size(),
        threads=1,
        host=socket.gethostname(),
    )


def collective(test):
    """Every rank passes, skips or fails together. Anything a rank raises counts, pytest's
    own outcomes included (pytest.fail and pytest.skip raise BaseExceptions): a rank that
    left without the allgather would leave the others waiting in it."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        outcome = None
        try:
            test(*args, **kwargs)
        except pytest.skip.Exception as e:
            outcome = ("skip", str(e))
        except BaseException as e:  # noqa: BLE001 (a verdict every rank must hear)
            outcome = ("fail", f"{type(e).__name__}: {e}")
        outcomes = WORLD.allgather(outcome)
        failures = [(r, o[1]) for r, o in enumerate(outcomes) if o and o[0] == "fail"]
        if failures:
            pytest.fail("; ".join(f"rank {r} of {WORLD.size}: {e}" for r, e in failures))
        if all(o and o[0] == "skip" for o in outcomes):
            pytest.skip(outcomes[0][1])
        if any(outcomes):
            pytest.fail(f"skipped on some ranks only: {outcomes}")

    return wrapper


def on_rank_0(work):
    """`work()` on rank 0 alone, its result given to every rank. A failure there is
    raised on every rank (the others would otherwise wait for rank 0 in a collective)."""
    result, error = None, None
    if WORLD.rank == 0:
        try:
            result = work()
        except BaseException as e:  # noqa: BLE001 (every rank must hear it)
            error = f"on rank 0: {type(e).__name__}: {e}"
    result, error = WORLD.bcast((result, error))
    if error is not None:
        raise AssertionError(error)
    return result
