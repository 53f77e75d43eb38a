"""Tensor-parallel kernels and the grid against the serial result, at any rank count.

mpiexec -n 3 python -m pytest tests/mpi
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from hpcinfer.backends import compile_forward, get_backend
from hpcinfer.compute import RunOptions
from hpcinfer.engine import run_job
from hpcinfer.job import load_job
from hpcinfer.parallel.comm import Group, collectives_for
from hpcinfer.parallel.grid import Grid
from hpcinfer.parallel.partition import split_sizes, split_slice
from hpcinfer.parallel.tensor import column_linear, row_linear
from tests.conftest import DIGITS_JOB
from tests.mpi.helpers import WORLD, collective, make_runtime, on_rank_0

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
    pytest.param("jax", "host", marks=pytest.mark.slow),  # (tests/test_tp_mpi.py runs it fast)
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


@pytest.fixture(scope="module")
def mlps():
    """Two MLPs made by rank 0 in a folder all ranks share: widths no tp divides, and an
    odd layer count (the last layer column-parallel and gathered, 1 column over tp ranks)."""
    from tests.test_mlp import make_mlp

    def make() -> Path:
        root = Path(tempfile.mkdtemp(prefix="hpcinfer-tp-"))
        make_mlp(root / "pairs", [64, 50, 30, 23, 10], "relu", "identity")
        make_mlp(root / "odd", [64, 50, 30, 1], "tanh", "identity")
        return root

    root = on_rank_0(make)
    yield root
    WORLD.Barrier()
    if WORLD.rank == 0:
        shutil.rmtree(root, ignore_errors=True)


def mlp_outputs(root: Path, model: str, tp: int, rt, tag: str = "") -> np.ndarray:
    out = root / f"{model}-tp{tp}-of-{rt.size}{tag}.h5"
    sets = [
        f"model.path='{root / model}'",
        f"output.path='{out}'",
        f"run.tp={tp}",
        "run.backend='numpy'",
        "run.batch_size=64",
        "run.chunk_size=200",
    ]
    assert run_job(load_job(DIGITS_JOB, sets), rt, RunOptions(quiet=True)).code == 0
    with h5py.File(out, "r") as f:
        layout = json.loads(f.attrs["layout"])
        assert (layout["tp"], layout["dp"]) == (tp, rt.size // tp)
        return f["outputs"][:]


@pytest.mark.parametrize("model", ["pairs", "odd"])
@collective
def test_every_tp_of_the_launch_gives_the_serial_logits(mlps, model):
    """Every DP x TP layout of this launch's ranks (tp = each divisor of the size)."""
    rt = make_runtime()
    serial = on_rank_0(lambda: mlp_outputs(mlps, model, 1, make_runtime(MPI.COMM_SELF)))
    for tp in (t for t in range(1, WORLD.size + 1) if WORLD.size % t == 0):
        got = mlp_outputs(mlps, model, tp, rt)
        np.testing.assert_allclose(got, serial, rtol=1e-5, atol=1e-5 * np.abs(serial).max())
    again = mlp_outputs(mlps, model, tp, rt, tag="-again")
    assert again.tobytes() == got.tobytes()  # the same layout twice: the same bits


@collective
def test_each_rank_knows_the_ranks_on_its_host_and_the_watched_barrier_passes():
    from hpcinfer.parallel.processes import alive_here
    from hpcinfer.parallel.watch import barrier_watching, peers_on_this_host

    host = socket.gethostname()  # every rank of a test launch runs on this one host
    peers = peers_on_this_host(WORLD, host)
    pids = WORLD.allgather(os.getpid())
    assert {(p.rank, p.pid) for p in peers} == {
        (r, pid) for r, pid in enumerate(pids) if r != WORLD.rank
    }
    assert all(alive_here(p.pid, p.start) for p in peers)
    barrier_watching(WORLD, peers, host)  # nobody died: an ordinary barrier
