"""Collectives over numpy, JAX and CuPy arrays: the one place where data meets MPI.

Models never call MPI. They call `hpcinfer.parallel.tensor.row_linear(x, w, b, tp)`, and `tp` is a
`Collectives` object from `collectives_for(group, backend)`, chosen once per run:

    backend  run.tp_comm  how tensors cross ranks ("auto": the first, or mpi4jax for jax
                          when it is installed)
    numpy    mpi          mpi4py buffer methods (Allreduce / Allgatherv) on the arrays
    jax      host         staged through host memory, outside jax.jit: the forward runs
                          op by op (each op still compiled by XLA)
             mpi4jax      inside jax.jit through mpi4jax (optional extra): one compiled
                          forward; measured ~5 % faster than host staging at tp=2
    cupy     host         staged through host memory (works with any MPI)
             mpi          device pointers handed to a CUDA-aware MPI
             nccl         cupy.cuda.nccl on the group, initialised over MPI

A group of one rank gets `Solo`, whose collectives are the identity: tp = 1 costs nothing.

(An ordered `jax.experimental.io_callback` around the numpy path was tried and dropped:
when a rank's XLA pool has one thread, which is what one pinned core gives, the callback
waits on a buffer that only that busy thread could complete, and the job deadlocks.)
Every collective adds its wall time to `group.seconds`, so runs can report the share of
time spent communicating.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcinfer.errors import JobError
from hpcinfer.parallel.tensor import Collectives, Solo


class Group:
    """A communicator for one purpose (a TP group, a DP group) and its time in collectives."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.seconds = 0.0  # wall time inside collectives on tensors
        self.calls = 0

    def host_all_reduce(self, x: np.ndarray) -> np.ndarray:
        """Sum of `x` over the group; `x` must be a writable C-contiguous array (reused)."""
        t0 = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        self._count(t0)
        return x

    def host_all_gather_last(self, x: np.ndarray, counts: tuple[int, ...]) -> np.ndarray:
        """Concatenate each rank's (..., counts[r]) along the last axis, in rank order."""
        t0 = time.perf_counter()
        lead = x.shape[:-1]
        rows = int(np.prod(lead, dtype=np.int64))
        send = np.ascontiguousarray(np.moveaxis(x, -1, 0))  # (counts[rank], *lead)
        recv = np.empty((sum(counts), *lead), dtype=x.dtype)
        self.comm.Allgatherv(send, [recv, [c * rows for c in counts]])
        self._count(t0)
        return np.moveaxis(recv, 0, -1)

    def _count(self, t0: float) -> None:
        self.seconds += time.perf_counter() - t0
        self.calls += 1

    def bcast_int(self, value: int | None, root: int = 0) -> int:
        """Small control message: the root's integer, on every rank (no pickling)."""
        buf = np.array([0 if value is None else value], dtype=np.int64)
        self.comm.Bcast(buf, root=root)
        return int(buf[0])


class AtomicWords:
    """One int64 per rank of a communicator, read and swapped with MPI atomics.

    A passive-target RMA window (MPI_Win_allocate, lock_all): any rank reads or
    compare-and-swaps any rank's word without the owner taking part. Within a node
    MPICH does these through shared memory, so a victim busy in numpy does not delay
    them; across nodes that depends on the MPI (benchmarks/steal_latency.py measures).
    Collective to create and to free.
    """

    def __init__(self, comm: Any, initial: int):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.win = MPI.Win.Allocate(8, disp_unit=8, comm=comm)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self._one = np.zeros(1, dtype=np.int64)
        self._cmp = np.zeros(1, dtype=np.int64)
        self._out = np.zeros(1, dtype=np.int64)
        self.replace(self.rank, initial)
        comm.Barrier()  # every word is set before anyone reads one

    def read(self, target: int) -> int:
        self.win.Fetch_and_op(self._one, self._out, target, 0, MPI.NO_OP)
        self.win.Flush(target)
        return int(self._out[0])

    def compare_and_swap(self, target: int, expected: int, new: int) -> bool:
        self._one[0], self._cmp[0] = new, expected
        self.win.Compare_and_swap(self._one, self._cmp, self._out, target, 0)
        self.win.Flush(target)
        return int(self._out[0]) == expected

    def replace(self, target: int, new: int) -> None:
        self._one[0] = new
        self.win.Fetch_and_op(self._one, self._out, target, 0, MPI.REPLACE)
        self.win.Flush(target)

    def add(self, target: int, value: int) -> None:
        self._one[0] = value
        self.win.Accumulate(self._one, target, 0, MPI.SUM)
        self.win.Flush(target)

    def local_value(self) -> int:
        """This rank's own word, read from memory without an MPI call (any thread may)."""
        return int(np.frombuffer(self.win.tomemory(), dtype=np.int64)[0])

    def free(self) -> None:
        self.win.Unlock_all()
        self.win.Free()


class NumpyCollectives:
    traceable = False

    def __init__(self, group: Group):
        self.group, self.rank, self.size = group, group.rank, group.size

    def all_reduce(self, x: np.ndarray) -> np.ndarray:
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, order="C")
        return self.group.host_all_reduce(x)

    def all_gather_last(self, x: np.ndarray, counts: tuple[int, ...]) -> np.ndarray:
        return self.group.host_all_gather_last(x, counts)


class JaxHostCollectives:
    """JAX arrays staged through host memory into the numpy path, outside jax.jit.

    Collectives here cannot be traced, so a model using them runs op by op (each JAX
    operation still compiled by XLA): the big matmuls dominate, fusion is lost.
    """

    traceable = False

    def __init__(self, group: Group):
        import jax

        self.jax = jax
        self.host = NumpyCollectives(group)
        self.rank, self.size = group.rank, group.size

    def all_reduce(self, x: Any) -> Any:
        return self.jax.device_put(self.host.all_reduce(np.array(x)))

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        gathered = self.host.all_gather_last(np.asarray(x), counts)
        return self.jax.device_put(np.ascontiguousarray(gathered))


class JaxMpi4jaxCollectives:
    """Collectives inside `jax.jit` through mpi4jax (optional extra `mpi4jax`).

    mpi4jax gets its own clone of the group's communicator: its traffic must never meet
    mpi4py's on one communicator. Time inside its collectives is not measured (they run
    inside the compiled program), so `group.seconds` stays 0 with this choice.
    """

    traceable = True

    def __init__(self, group: Group):
        import mpi4jax

        self.mpi4jax = mpi4jax
        self.comm = group.comm.Clone()
        self.rank, self.size = group.rank, group.size

    def all_reduce(self, x: Any) -> Any:
        return self.mpi4jax.allreduce(x, op=MPI.SUM, comm=self.comm)

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        import jax.numpy as jnp

        # mpi4jax gathers equal shapes: pad every shard to the widest, then trim.
        widest = max(counts)
        pad = [(0, 0)] * (x.ndim - 1) + [(0, widest - x.shape[-1])]
        gathered = self.mpi4jax.allgather(jnp.pad(x, pad), comm=self.comm)  # (tp, ..., widest)
        return jnp.concatenate([gathered[r, ..., :c] for r, c in enumerate(counts)], axis=-1)


class CupyCollectives:
    """CuPy arrays through host memory, a CUDA-aware MPI, or NCCL (`mode`)."""

    MODES = ("host", "mpi", "nccl")
    traceable = False

    def __init__(self, group: Group, mode: str = "host"):
        import cupy

        if mode not in self.MODES:
            raise ValueError(f"cupy collectives: mode {mode!r} not in {self.MODES}")
        self.cp, self.group, self.mode = cupy, group, mode
        self.rank, self.size = group.rank, group.size
        self.host = NumpyCollectives(group)
        self.nccl = None
        if mode == "nccl":
            from cupy.cuda import nccl

            uid = group.comm.bcast(nccl.get_unique_id() if group.rank == 0 else None, root=0)
            self.nccl = nccl.NcclCommunicator(group.size, uid, group.rank)

    def all_reduce(self, x: Any) -> Any:
        if self.mode == "host":
            return self.cp.asarray(self.host.all_reduce(self.cp.asnumpy(x)))
        x = self.cp.ascontiguousarray(x)
        t0 = time.perf_counter()
        stream = self.cp.cuda.get_current_stream()
        if self.mode == "nccl":
            from cupy.cuda import nccl

            dtype = {np.float32: nccl.NCCL_FLOAT32, np.float64: nccl.NCCL_FLOAT64}[x.dtype.type]
            self.nccl.allReduce(x.data.ptr, x.data.ptr, x.size, dtype, nccl.NCCL_SUM, stream.ptr)
            stream.synchronize()
        else:
            stream.synchronize()  # MPI reads device memory outside CUDA's stream order
            self.group.comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        self.group._count(t0)
        return x

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        # Rare (an odd last layer) and small (the model's output): always host-staged.
        return self.cp.asarray(self.host.all_gather_last(self.cp.asnumpy(x), counts))


# backend -> {run.tp_comm choice: what it means}; "auto" is the first entry.
TP_COMMS = {
    "numpy": ("mpi",),
    "jax": ("host", "mpi4jax"),
    "cupy": ("host", "mpi", "nccl"),
}


def resolve_tp_comm(backend_name: str, tp_comm: str) -> str:
    """The concrete collective path for `run.tp_comm` (JobError if it does not apply)."""
    choices = TP_COMMS[backend_name]
    if tp_comm == "auto":
        # mpi4jax measured faster than host staging (README); use it when it is installed.
        if backend_name == "jax" and importlib.util.find_spec("mpi4jax") is not None:
            return "mpi4jax"
        return choices[0]
    if tp_comm not in choices:
        raise JobError(
            f"run.tp_comm = {tp_comm!r} is not available with backend {backend_name!r} "
            f"(choose auto, {', '.join(choices)})"
        )
    if tp_comm == "mpi4jax" and importlib.util.find_spec("mpi4jax") is None:
        raise JobError("run.tp_comm = 'mpi4jax' needs mpi4jax: pip install -e '.[mpi4jax]'")
    return tp_comm


def collectives_for(group: Group, backend_name: str, tp_comm: str = "auto") -> Collectives:
    """The collectives a model on `backend_name` uses within `group`."""
    path = resolve_tp_comm(backend_name, tp_comm)
    if group.size == 1:
        return Solo()
    if backend_name == "numpy":
        return NumpyCollectives(group)
    if backend_name == "jax":
        return JaxMpi4jaxCollectives(group) if path == "mpi4jax" else JaxHostCollectives(group)
    return CupyCollectives(group, path)
