"""Test-only fault injection, driven by the HPCINFER_FAULT environment variable.

Faults are `key=value` lists, several separated by `;`. `rank` limits a fault to one
world rank (default: every rank).

    rank=1,after=2,kind=raise            rank 1 raises before its 3rd chunk
    rank=1,after=2,kind=exit             ... dies without cleanup, as if killed
    rank=0,after=3,kind=exit,at=write    rank 0 dies half-way through writing its 4th
                                         chunk file (points: write, journal)
    rank=0,kind=delay,seconds=0.5        rank 0 sleeps before every chunk (a slow rank)
    kind=jitter,seconds=0.02             every chunk sleeps a random 0..0.02 s first
    kind=warn,after=0                    a Python warning before every chunk
    kind=rowcost,seconds=1e-4,skew=10    a chunk sleeps seconds x its rows, x skew for
                                         rows in the first half of the input

Unset in normal runs, where this costs one dict lookup per chunk.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections import Counter

_hits: Counter[str] = Counter()
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")  # set by the launchers


def _parse(text: str) -> list[dict[str, str]]:
    faults = []
    for part in text.split(";"):
        items = dict(item.split("=", 1) for item in part.split(",") if "=" in item)
        if items:
            faults.append(items)
    return faults


def before_chunk(rank: int, chunks_done: int, start: int, stop: int, n_rows: int) -> None:
    """Called by the engine before each chunk (rows [start, stop)) a rank computes."""
    spec = os.environ.get("HPCINFER_FAULT")
    if not spec:
        return
    for fault in _parse(spec):
        if fault.get("rank", str(rank)) != str(rank) or fault.get("at", "chunk") != "chunk":
            continue
        kind = fault.get("kind", "raise")
        seconds = float(fault.get("seconds", "0.1"))
        if kind == "delay":
            time.sleep(seconds)
        elif kind == "jitter":
            time.sleep(random.Random(hash((rank, chunks_done, start))).uniform(0, seconds))
        elif kind == "warn":
            warnings.warn("injected warning", stacklevel=2)
        elif kind == "rowcost":
            skew = float(fault.get("skew", "10"))
            heavy = max(0, min(stop, n_rows // 2) - start)
            time.sleep(seconds * (heavy * skew + (stop - start - heavy)))
        elif chunks_done == int(fault.get("after", "0")):
            _fail(kind, fault, f"before chunk #{chunks_done}")


def at_point(point: str) -> None:
    """A named place inside a step (`write`: half-way through a chunk file)."""
    spec = os.environ.get("HPCINFER_FAULT")
    if not spec:
        return
    rank = next((os.environ[v] for v in RANK_VARS if v in os.environ), "0")
    _hits[point] += 1
    for fault in _parse(spec):
        if fault.get("at") != point or fault.get("rank", rank) != rank:
            continue
        if _hits[point] - 1 == int(fault.get("after", "0")):
            _fail(fault.get("kind", "raise"), fault, f"at {point} #{_hits[point] - 1}")


def _fail(kind: str, fault: dict[str, str], where: str) -> None:
    if kind == "exit":
        os._exit(int(fault.get("code", "9")))
    raise RuntimeError(f"injected fault {where} (HPCINFER_FAULT)")
