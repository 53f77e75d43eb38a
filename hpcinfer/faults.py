"""Test-only fault injection, driven by the HPCINFER_FAULT environment variable.

Faults are `key=value` lists, several separated by `;`. `rank` limits a fault to one
world rank (default: every rank).

    rank=1,after=2,kind=raise            rank 1 raises before its 3rd chunk
    rank=1,after=2,kind=exit             ... dies without cleanup, as if killed
    rank=0,kind=delay,seconds=0.5        rank 0 sleeps before every chunk (a slow rank)
    kind=jitter,seconds=0.02             every chunk sleeps a random 0..0.02 s first
    kind=rowcost,seconds=1e-4,skew=10    a chunk sleeps seconds x its rows, x skew for
                                         rows in the first half of the input

Unset in normal runs, where this costs one dict lookup per chunk.
"""

from __future__ import annotations

import os
import random
import time


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
        if fault.get("rank", str(rank)) != str(rank):
            continue
        kind = fault.get("kind", "raise")
        seconds = float(fault.get("seconds", "0.1"))
        if kind == "delay":
            time.sleep(seconds)
        elif kind == "jitter":
            time.sleep(random.Random(hash((rank, chunks_done, start))).uniform(0, seconds))
        elif kind == "rowcost":
            skew = float(fault.get("skew", "10"))
            heavy = max(0, min(stop, n_rows // 2) - start)
            time.sleep(seconds * (heavy * skew + (stop - start - heavy)))
        elif chunks_done == int(fault.get("after", "0")):
            if kind == "exit":
                os._exit(int(fault.get("code", "9")))
            raise RuntimeError(f"injected fault before chunk #{chunks_done} (HPCINFER_FAULT)")
