"""Parallelism: the only package that talks MPI.

    runtime     start-up (threads per rank, pinning), agree on errors, abort on failure
    grid        the DP x TP process grid: which ranks share a model, which share rows
    comm        mpi4py: Group (a communicator for one purpose), AtomicWords (RMA),
                tensor collectives for numpy / JAX / CuPy arrays
    partition   pure arithmetic: n items over ranks (rows, weight slices)
    tensor      tensor-parallel kernels (column / row linear, region operations) over any
                `Collectives`; no MPI import, so models may use it

Only `runtime`, `grid` and `comm` import mpi4py. This `__init__` imports nothing, so
`hpcinfer.parallel.tensor` and `.partition` load without MPI (inspect, status).
"""
