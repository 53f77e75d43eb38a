"""Test-only fault injection, driven by the HPCINFER_FAULT environment variable.

    HPCINFER_FAULT="rank=1,after=2,kind=raise"   # rank 1 raises before its 3rd chunk
    HPCINFER_FAULT="rank=0,kind=delay,seconds=0.5"  # rank 0 sleeps before every chunk

Kinds: `raise` (a Python exception), `exit` (the process dies without cleanup, as if
killed), `delay` (a slow rank). Unset in normal runs, where this costs one dict lookup.
"""

from __future__ import annotations

import os
import time


def _parse(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def before_chunk(rank: int, chunks_done: int) -> None:
    """Called by the engine before each chunk a rank computes."""
    spec = os.environ.get("HPCINFER_FAULT")
    if not spec:
        return
    fault = _parse(spec)
    if fault.get("rank", str(rank)) != str(rank):
        return
    kind = fault.get("kind", "raise")
    if kind == "delay":
        time.sleep(float(fault.get("seconds", "0.1")))
    elif chunks_done == int(fault.get("after", "0")):
        if kind == "exit":
            os._exit(int(fault.get("code", "9")))
        raise RuntimeError(f"injected fault before chunk #{chunks_done} (HPCINFER_FAULT)")
