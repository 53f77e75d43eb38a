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


def make_runtime() -> Runtime:
    comm = WORLD.Dup()
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
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        error = None
        try:
            test(*args, **kwargs)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        failures = [(r, e) for r, e in enumerate(WORLD.allgather(error)) if e]
        if failures:
            pytest.fail("; ".join(f"rank {r} of {WORLD.size}: {e}" for r, e in failures))

    return wrapper
