"""Collectives over numpy, JAX and CuPy arrays: the one place where data meets MPI.

Models never call MPI. They call `parallel.row_linear(x, w, b, tp)`, and `tp` is a
`Collectives` object from `collectives_for(group, backend)`, chosen once per run:

    backend  how tensors cross ranks
    numpy    mpi4py buffer methods (Allreduce / Allgatherv) on the arrays themselves
    jax      inside jax.jit: an ordered host callback (io_callback) around the same MPI
             buffer calls; the rest of the forward stays one compiled program
    cupy     "host": staged through host memory (default, works with any MPI)
             "mpi":  device pointers handed to a CUDA-aware MPI
             "nccl": cupy.cuda.nccl on the group, initialised over MPI

A group of one rank gets `Solo`, whose collectives are the identity: tp = 1 costs nothing.
Every collective adds its wall time to `group.seconds`, so runs can report the share of
time spent communicating.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
from mpi4py import MPI


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


class Collectives(Protocol):
    """What tensor-parallel kernels need from their group."""

    size: int

    def all_reduce(self, x: Any) -> Any:
        """Element-wise sum over the group."""

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        """Shards (..., counts[r]) from every rank -> (..., sum(counts)), in rank order."""


class Solo:
    """A group of one: nothing to communicate."""

    size = 1

    def all_reduce(self, x: Any) -> Any:
        return x

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        return x


class NumpyCollectives:
    def __init__(self, group: Group):
        self.group, self.size = group, group.size

    def all_reduce(self, x: np.ndarray) -> np.ndarray:
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, order="C")
        return self.group.host_all_reduce(x)

    def all_gather_last(self, x: np.ndarray, counts: tuple[int, ...]) -> np.ndarray:
        return self.group.host_all_gather_last(x, counts)


class JaxCallbackCollectives:
    """Collectives inside `jax.jit` as ordered host callbacks into the numpy path.

    `ordered=True` keeps every rank's collectives in program order (a reordering would
    pair one rank's all-reduce with another's all-gather and deadlock).
    """

    def __init__(self, group: Group):
        import jax
        from jax.experimental import io_callback

        self.jax, self.io_callback = jax, io_callback
        self.host = NumpyCollectives(group)
        self.size = group.size

    def all_reduce(self, x: Any) -> Any:
        out = self.jax.ShapeDtypeStruct(x.shape, x.dtype)
        return self.io_callback(lambda a: self.host.all_reduce(np.array(a)), out, x, ordered=True)

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        out = self.jax.ShapeDtypeStruct((*x.shape[:-1], sum(counts)), x.dtype)

        def gather(a):
            return np.ascontiguousarray(self.host.all_gather_last(np.asarray(a), counts))

        return self.io_callback(gather, out, x, ordered=True)


class CupyCollectives:
    """CuPy arrays through host memory, a CUDA-aware MPI, or NCCL (`mode`)."""

    MODES = ("host", "mpi", "nccl")

    def __init__(self, group: Group, mode: str = "host"):
        import cupy

        if mode not in self.MODES:
            raise ValueError(f"cupy collectives: mode {mode!r} not in {self.MODES}")
        self.cp, self.group, self.mode, self.size = cupy, group, mode, group.size
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


def collectives_for(group: Group, backend_name: str, gpu_comm: str = "host") -> Collectives:
    """The collectives a model on `backend_name` uses within `group`."""
    if group.size == 1:
        return Solo()
    if backend_name == "numpy":
        return NumpyCollectives(group)
    if backend_name == "jax":
        return JaxCallbackCollectives(group)
    if backend_name == "cupy":
        return CupyCollectives(group, gpu_comm)
    raise ValueError(f"no collectives for backend {backend_name!r}")
