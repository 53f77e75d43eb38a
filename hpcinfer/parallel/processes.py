"""Whether a process on this host is still alive: for the run lock (is its holder gone?)
and for ranks waiting on their peers (did one die?). No MPI here."""

from __future__ import annotations

import os
from pathlib import Path


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (ticks since boot), to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None  # field 22 of stat, counting from 1


def alive_here(pid: int, start: str | None) -> bool:
    """Whether the process `pid` that started at `start` still runs on this host (a
    killed process not yet reaped, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc here: trust kill(0)
    return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)
