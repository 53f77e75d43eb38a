"""Waiting for the other ranks without waiting forever for a dead one.

A rank killed mid-run (out of memory, a node's OOM killer, `kill -9`) leaves the others
in the run's closing barrier. The launcher usually ends them (mpiexec's auto-cleanup,
srun --kill-on-bad-exit), but not always: hydra has races, and a plain `srun` without
--kill-on-bad-exit leaves them waiting until the time limit, burning the allocation.

So the closing barrier is non-blocking and polled, and while it waits each rank checks
the ranks on its own host (pid and start time, /proc): a rank found dead stops the job
with one line, its finished chunks kept for the rerun. A rank on another host is seen
by the ranks of that host. Dead nodes are the launcher's to notice.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

from hpcinfer.errors import RunError
from hpcinfer.parallel.processes import alive_here, process_start

CHECK_SECONDS = 1.0  # how often a waiting rank looks at its neighbours
MAX_PAUSE = 0.05  # the longest sleep between two tests of the barrier


class PeerLost(RunError):
    """A rank of this run ended (killed) while the others still needed it."""


@dataclass(frozen=True)
class Peer:
    rank: int
    pid: int
    start: str | None  # /proc start time: a reused pid is not the rank


def peers_on_this_host(comm: Any, host: str) -> tuple[Peer, ...]:
    """Collective: the other ranks of `comm` that run on this host. Ranks are grouped by
    a hash of the host name first, so each exchanges with its own node, not with all P
    ranks (names whose hashes collide are told apart by the name itself)."""
    rank = comm.Get_rank()
    node = comm.Split(zlib.crc32(host.encode()) & 0x7FFFFFFF, rank)
    try:
        everyone = node.allgather((host, rank, os.getpid(), process_start(os.getpid())))
    finally:
        node.Free()
    return tuple(Peer(r, pid, start) for h, r, pid, start in everyone if h == host and r != rank)


def barrier_watching(comm: Any, peers: tuple[Peer, ...], host: str) -> None:
    """Collective: a barrier that raises PeerLost if one of `peers` dies meanwhile."""
    request = comm.Ibarrier()
    pause, next_check = 0.0005, time.monotonic() + CHECK_SECONDS
    while not request.Test():
        if time.monotonic() >= next_check:
            for peer in peers:
                if not alive_here(peer.pid, peer.start):
                    raise PeerLost(
                        f"rank {peer.rank} (pid {peer.pid} on {host}) ended before the run "
                        "did (killed? out of memory?); the chunks finished so far are kept: "
                        "rerun the same command to resume"
                    )
            next_check = time.monotonic() + CHECK_SECONDS
        time.sleep(pause)
        pause = min(MAX_PAUSE, pause * 2)
