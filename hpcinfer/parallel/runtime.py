"""MPI start-up, threads per rank, and the error policy: abort the job, never hang.

Order matters: `start()` initialises MPI (mpi4py does not import numpy), learns how many
ranks share this node, sets the BLAS/OpenMP thread variables and pins the rank to its
share of the cores, and only then may numpy, jax or cupy be imported.

Error policy (after mpi4py's `run.py`): an exception on any rank prints one line naming
the rank and host, then calls `MPI_Abort`, which ends every rank of the job within
seconds, even those blocked in a collective. Errors found while validating the job,
before any rank computes, are instead agreed on collectively (`agree`) so that every
rank exits cleanly with code 2 and only rank 0 prints.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcinfer.errors import Agreed, JobError, RunError

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",  # the tokenizers library's pool
)


@dataclass(frozen=True)
class Runtime:
    """This rank's place in the job. `comm` is hpcinfer's own duplicate of COMM_WORLD."""

    comm: Any
    rank: int
    size: int
    local_rank: int
    local_size: int
    threads: int
    host: str

    def who(self) -> str:
        return f"rank {self.rank} of {self.size} ({self.host})"


LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    """This process's rank as the launcher told it, before MPI starts (0 when launched
    alone): lets rank 0 alone speak for command-line errors and signals."""
    for var in LAUNCHER_RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def threads_per_rank(available_cores: int, ranks_on_node: int, requested: int = 0) -> int:
    """Threads each rank may use: the explicit request, else its share of the cores."""
    if requested > 0:
        return requested
    return max(1, available_cores // max(1, ranks_on_node))


def pinned_cores(cores: list[int], local_rank: int, threads: int) -> list[int]:
    """The cores a rank is pinned to: a contiguous run of `threads`, wrapping around."""
    start = (local_rank * threads) % len(cores)
    return [cores[(start + i) % len(cores)] for i in range(min(threads, len(cores)))]


def start(requested_threads: int = 0) -> Runtime:
    """Initialise MPI and limit this rank's threads; call before importing numpy."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()

    if comm.Get_rank() != 0 and os.environ.get("HPCINFER_ALL_WARNINGS") != "1":
        # The same warning from N ranks is noise: rank 0 speaks for all.
        warnings.simplefilter("ignore")
    env_request = os.environ.get("HPCINFER_THREADS", "")
    requested = requested_threads or (int(env_request) if env_request.isdigit() else 0)
    affinity = sorted(os.sched_getaffinity(0))
    threads = threads_per_rank(len(affinity), local_size, requested)
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    # A launcher that already bound the rank (srun --cpu-bind, mpiexec -bind-to) wins.
    bound_by_launcher = len(affinity) < (os.cpu_count() or len(affinity))
    shares_cores = local_size > 1 or threads < len(affinity)
    if shares_cores and not bound_by_launcher and os.environ.get("HPCINFER_BIND", "1") != "0":
        # XLA's CPU thread pool sizes itself from the affinity mask, not from env vars.
        os.sched_setaffinity(0, pinned_cores(affinity, local_rank, threads))
    return Runtime(
        comm=comm,
        rank=comm.Get_rank(),
        size=comm.Get_size(),
        local_rank=local_rank,
        local_size=local_size,
        threads=threads,
        host=socket.gethostname(),
    )


def agree(rt: Runtime, error: JobError | None) -> None:
    """Collective: if validation failed on any rank, every rank raises `Agreed` (exit 2).

    Only rank 0 prints, one line; the message is the lowest failing rank's.
    """
    errors = rt.comm.allgather(str(error) if error is not None else None)
    failing = [(r, msg) for r, msg in enumerate(errors) if msg is not None]
    if not failing:
        return
    if rt.rank == 0:
        r, msg = failing[0]
        where = "" if len(failing) == rt.size else f" (on rank {r} of {rt.size})"
        print(f"hpcinfer: error: {msg}{where}", file=sys.stderr, flush=True)
    r, msg = failing[0]
    raise Agreed(msg + ("" if len(failing) == rt.size else f" (on rank {r} of {rt.size})"))


def run_or_abort(rt: Runtime, fn: Callable[[], int]) -> int:
    """Run `fn`; an exception on this rank aborts the whole job with a one-line message."""
    try:
        return fn()
    except (SystemExit, Agreed):  # every rank knows already: nothing to abort
        raise
    except BaseException as e:  # noqa: BLE001 (any failure must end every rank)
        code = e.exit_code if isinstance(e, JobError | RunError) else 1
        if not isinstance(e, JobError | RunError | KeyboardInterrupt):
            traceback.print_exc(file=sys.stderr)
        message = str(e) or type(e).__name__
        print(f"hpcinfer: error on {rt.who()}: {message}", file=sys.stderr, flush=True)
        if rt.size > 1:
            rt.comm.Abort(code)
        return code
