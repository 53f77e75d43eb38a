"""Graceful stop: SIGTERM or SIGUSR1 (what SLURM sends before a time limit or on
preemption) and Ctrl-C (SIGINT) ask every rank to finish the chunk in hand and stop
claiming new ones; a second Ctrl-C aborts at once.

The run then makes its progress durable and exits with EXIT_STOPPED (75, EX_TEMPFAIL:
"try again later"), which a batch script can test to requeue; rerunning the job
resumes it. A rank that misses the signal does not hang the others: it keeps working
(stealing what the stopped groups left) until the work runs out.
"""

from __future__ import annotations

import signal
import sys

from hpcinfer.parallel.runtime import launcher_rank

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_STOPPED = 75

_requested = False


def _handler(signum: int, frame: object) -> None:
    global _requested
    if _requested and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now (every rank is aborted)
    if not _requested and signum == signal.SIGINT and launcher_rank() == 0:
        print(
            "hpcinfer: stopping after the chunks in hand (Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )
    _requested = True


def install() -> None:
    """Call once, from the main thread, before the work starts."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def requested() -> bool:
    return _requested


class SharedStop:
    """A stop any rank can raise for all: the first failing rank writes its number into
    rank 0's word (one MPI atomic); every group's leader reads that word before it claims
    a chunk (~4 us) and stops, so a bad row found mid-run ends the run cleanly on every
    rank, with no MPI_Abort. Collective to create and to free.
    """

    def __init__(self, comm: object):
        from hpcinfer.parallel.comm import AtomicWords

        self.words = AtomicWords(comm, initial=0)

    def raise_for_all(self, rank: int) -> None:
        self.words.compare_and_swap(0, 0, rank + 1)  # the first failure is the one named

    def raised(self) -> bool:
        return self.words.read(0) != 0

    def should_stop(self) -> bool:
        """Between chunks: a signal here, or a failure on any rank."""
        return requested() or self.raised()

    def free(self) -> None:
        self.words.free()
