"""Tensor-parallel kernels and the grid against the serial result, at any rank count.

mpiexec -n 3 python -m pytest tests/mpi
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hpcinfer.backends import compile_forward, get_backend
from hpcinfer.parallel.comm import Group, collectives_for
from hpcinfer.parallel.grid import Grid
from hpcinfer.parallel.partition import split_sizes, split_slice
from hpcinfer.parallel.tensor import column_linear, row_linear
from tests.mpi.helpers import WORLD, collective

B, IN, OUT = 6, 11, 7  # widths not divisible by 2, 3 or 4


def serial_weights():
    rng = np.random.default_rng(0)  # same on every rank
    return (
        rng.standard_normal((B, IN)),
        rng.standard_normal((OUT, IN)),
        rng.standard_normal(OUT),
    )


def as_slice(r: range) -> slice:
    return slice(r.start, r.stop)


@pytest.fixture(scope="module")
def world_group():
    return Group(WORLD.Dup())


PATHS = [
    ("numpy", "mpi"),
    ("jax", "host"),
    pytest.param(
        "jax",
        "mpi4jax",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("mpi4jax") is None, reason="mpi4jax not installed"
        ),
    ),
]


@pytest.mark.parametrize(("backend_name", "tp_comm"), PATHS)
@collective
def test_column_linear_gathered_equals_serial(world_group, backend_name, tp_comm):
    backend = get_backend(backend_name, "float64")
    tp = collectives_for(world_group, backend_name, tp_comm)
    x, w, b = serial_weights()
    rows = split_slice(OUT, WORLD.rank, WORLD.size)
    counts = tuple(split_sizes(OUT, WORLD.size))

    def fn(x, w, b):
        return column_linear(x, w, b, tp, counts)

    got = compile_forward(backend, tp, fn)(
        backend.asarray(x), backend.asarray(w[rows].T), backend.asarray(b[rows])
    )
    np.testing.assert_allclose(backend.to_host(got), x @ w.T + b, rtol=1e-12)


@pytest.mark.parametrize(("backend_name", "tp_comm"), PATHS)
@collective
def test_row_linear_sums_partials_and_adds_the_bias_once(world_group, backend_name, tp_comm):
    backend = get_backend(backend_name, "float64")
    tp = collectives_for(world_group, backend_name, tp_comm)
    x, w, b = serial_weights()
    cols = split_slice(IN, WORLD.rank, WORLD.size)

    def fn(x, w, b):
        return row_linear(x, w, b, tp)

    got = compile_forward(backend, tp, fn)(
        backend.asarray(x[:, cols]), backend.asarray(w[:, cols].T), backend.asarray(b)
    )
    np.testing.assert_allclose(backend.to_host(got), x @ w.T + b, rtol=1e-12)


@collective
def test_collective_time_is_counted(world_group):
    tp = collectives_for(world_group, "numpy")
    calls = world_group.calls
    tp.all_reduce(np.ones(3))
    assert world_group.calls == calls + (1 if WORLD.size > 1 else 0)


@pytest.mark.parametrize("tp", [1, "all"])
@collective
def test_grid_groups_consecutive_ranks(tp):
    tp = WORLD.size if tp == "all" else tp
    grid = Grid.build(WORLD, tp)
    assert grid.tp == tp and grid.dp_size == WORLD.size // tp
    assert (grid.dp_rank, grid.tp_rank) == divmod(WORLD.rank, tp)
    members = grid.tp_group.comm.allgather(WORLD.rank)
    assert members == list(range(grid.dp_rank * tp, grid.dp_rank * tp + tp))
    assert grid.is_leader == (WORLD.rank % tp == 0)
