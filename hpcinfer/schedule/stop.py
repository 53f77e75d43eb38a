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
