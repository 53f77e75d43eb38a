"""Steal latency: one thief probing a victim's work range with MPI atomics.

    mpiexec -n 2 python benchmarks/steal_latency.py

Rank 0 (the thief) times steal attempts (an atomic read of the victim's packed range,
then a compare-and-swap on it, each flushed: exactly what hpcinfer.schedule.balance does) against
rank 1's word while rank 1 is
  sleeping      outside MPI, idle
  computing     outside MPI, in numpy GEMMs (the passive-target progress trap: an MPI
                that needs the target to enter MPI would stall here)
  in MPI        blocked in a receive (the MPI progress engine running)
and prints the median and 99th-percentile latency of each. Its result decides the design:
if attempts against a busy victim stay fast, one-sided atomics need no help from the
victim, and stealing needs neither polling between batches nor a progress thread.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from hpcinfer.parallel.comm import AtomicWords
from hpcinfer.schedule.balance import pack, unpack

ATTEMPTS = 2000
PHASE_SECONDS = 3.0


def victim(comm, words: AtomicWords) -> None:
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    for state in ("sleeping", "computing", "in MPI"):
        comm.Barrier()
        if state == "sleeping":
            time.sleep(PHASE_SECONDS)
        elif state == "computing":
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < PHASE_SECONDS:
                a = a @ a
                a /= np.abs(a).max()
        comm.recv(source=0, tag=state == "in MPI")  # the thief says when it is done


def thief(comm, words: AtomicWords) -> None:
    for state in ("sleeping", "computing", "in MPI"):
        comm.Barrier()
        time.sleep(0.2)  # let the victim settle into its state
        times = np.empty(ATTEMPTS)
        for i in range(ATTEMPTS):
            t0 = time.perf_counter()
            word = words.read(1)
            head, tail = unpack(word)
            words.compare_and_swap(1, word, pack(head, tail))  # a steal of nothing
            times[i] = time.perf_counter() - t0
        comm.send(None, dest=1, tag=state == "in MPI")
        us = times * 1e6
        print(
            f"  victim {state:10s}: steal attempt (read + CAS) median {np.median(us):6.2f} us, "
            f"p99 {np.percentile(us, 99):7.2f} us, max {us.max():8.1f} us"
        )


def main() -> None:
    comm = MPI.COMM_WORLD.Dup()
    if comm.Get_size() != 2:
        raise SystemExit("run with: mpiexec -n 2 python benchmarks/steal_latency.py")
    words = AtomicWords(comm, initial=pack(0, 1000))
    if comm.Get_rank() == 0:
        print(f"steal latency, 2 ranks on one node, {ATTEMPTS} attempts per victim state")
        thief(comm, words)
    else:
        victim(comm, words)
    comm.Barrier()
    words.free()


if __name__ == "__main__":
    main()
