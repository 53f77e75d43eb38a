"""Test-only fault injection: hooks the engine calls, driven by HPCINFER_FAULT.

Off in production: the command line loads this module only when HPCINFER_TESTING=1 is
set as well, so a stray HPCINFER_FAULT in a user's environment changes nothing.

Faults are `key=value` lists, several separated by `;`. `rank` limits a fault to one
world rank (default: every rank).

    rank=1,after=2,kind=raise            rank 1 raises before its 3rd chunk
    rank=1,after=2,kind=exit             ... dies without cleanup, as if killed
    rank=0,after=3,kind=exit,at=write    rank 0 dies half-way through writing its 4th
                                         chunk file
    rank=0,kind=delay,seconds=0.5        rank 0 sleeps before every chunk (a slow rank)
    kind=jitter,seconds=0.02             every chunk sleeps a random 0..0.02 s first
    kind=warn,after=0                    a Python warning before every chunk
    kind=rowcost,seconds=1e-4,skew=10    a chunk sleeps seconds x its rows, x skew for
                                         rows in the first half of the input
    at=assemble,kind=fsize,bytes=N       rank 0 may write files of at most N bytes while
                                         it assembles the output (a full disk)
"""

from __future__ import annotations

import os
import random
import resource
import time
import warnings

from hpcinfer.compute import Hooks
from hpcinfer.schedule.chunks import Chunk

SWITCH = "HPCINFER_TESTING"  # must be "1" for HPCINFER_FAULT to be read at all


def parse(text: str) -> list[dict[str, str]]:
    faults = []
    for part in text.split(";"):
        items = dict(item.split("=", 1) for item in part.split(",") if "=" in item)
        if items:
            faults.append(items)
    return faults


class FaultHooks(Hooks):
    def __init__(self, faults: list[dict[str, str]]):
        self.faults = faults
        self.rank = None
        self.files_started = 0

    def _mine(self, point: str) -> list[dict[str, str]]:
        return [
            f
            for f in self.faults
            if f.get("rank", str(self.rank)) == str(self.rank) and f.get("at", "chunk") == point
        ]

    def before_chunk(self, rank: int, chunks_done: int, chunk: Chunk, n_rows: int) -> None:
        self.rank = rank
        for fault in self._mine("chunk"):
            kind = fault.get("kind", "raise")
            seconds = float(fault.get("seconds", "0.1"))
            if kind == "delay":
                time.sleep(seconds)
            elif kind == "jitter":
                time.sleep(
                    random.Random(hash((rank, chunks_done, chunk.start))).uniform(0, seconds)
                )
            elif kind == "warn":
                warnings.warn("injected warning", stacklevel=2)
            elif kind == "rowcost":
                skew = float(fault.get("skew", "10"))
                heavy = max(0, min(chunk.stop, n_rows // 2) - chunk.start)
                time.sleep(seconds * (heavy * skew + (chunk.rows - heavy)))
            elif chunks_done == int(fault.get("after", "0")):
                fail(kind, fault, f"before chunk #{chunks_done}")

    def chunk_file_started(self) -> None:
        for fault in self._mine("write"):
            if self.files_started == int(fault.get("after", "0")):
                fail(fault.get("kind", "raise"), fault, f"at write #{self.files_started}")
        self.files_started += 1

    def before_assembly(self) -> None:
        for fault in self._mine("assemble"):
            if fault.get("kind") == "fsize":  # writes past it fail with EFBIG
                limit = int(fault.get("bytes", "0"))
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def fail(kind: str, fault: dict[str, str], where: str) -> None:
    if kind == "exit":
        os._exit(int(fault.get("code", "9")))
    raise RuntimeError(f"injected fault {where} (HPCINFER_FAULT)")


def hooks_from_env() -> Hooks:
    """FaultHooks when both HPCINFER_TESTING=1 and HPCINFER_FAULT are set; else no-ops."""
    spec = os.environ.get("HPCINFER_FAULT", "")
    if os.environ.get(SWITCH) != "1" or not spec:
        return Hooks()
    return FaultHooks(parse(spec))
