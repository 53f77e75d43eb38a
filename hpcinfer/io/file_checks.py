"""Checks and helpers that every model-file reader shares (safetensors, GGUF, tokenizers).

A model file is user input: these turn its faults into one JobError line naming the file
(`strict_json`, `read_into`, `regular_file_size`), keep the file's own strings from making
a message long or multi-line (`short_repr`, `clip`, `error_text`), and refuse a read
before its buffer is taken when the memory is not there (`check_memory`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hpcinfer.errors import JobError

FINITE_BLOCK_ELEMENTS = 2**20  # nonfinite_count's temporary mask is at most this long
# Reads smaller than this skip the memory check (a /proc lookup, ~60 us): they cannot be
# the allocation that sinks a node, and read_transposed makes many of them.
MEMORY_CHECK_MIN_BYTES = 16 * 2**20
ERROR_TEXT_LIMIT = 200  # characters of a library's exception message put in ours


# ---- values ----


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (as uint16) -> float32: they are the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def nonfinite_count(array: np.ndarray) -> int:
    """How many NaN or +-Inf values `array` holds (none in integer or bool arrays).

    Counted a block of rows at a time, so checking a large weight costs no mask as big as
    the weight and no copy of a strided view.
    """
    a = np.asarray(array)
    if a.dtype.kind in "biu":
        return 0
    if a.ndim == 0:
        return int(not np.isfinite(a))
    step = max(1, FINITE_BLOCK_ELEMENTS // max(1, a[0].size if len(a) else 1))
    return sum(
        int(a[i : i + step].size - np.count_nonzero(np.isfinite(a[i : i + step])))
        for i in range(0, len(a), step)
    )


def contiguous(s: slice, n: int, what: str) -> tuple[int, int]:
    """(start, stop) of slice `s` of `n` items, stop >= start; a step is a ValueError
    (`what`: "row" or "column"), since readers read whole runs of bytes."""
    start, stop, step = s.indices(n)
    if step != 1:
        raise ValueError(f"{what} slices must be contiguous, got step {step}")
    return start, max(start, stop)


def transposed_by_rows(
    read_rows: Callable[[int, int], np.ndarray],
    n_rows: int,
    n_cols: int,
    dtype: np.dtype | str,
    block_rows: int,
) -> np.ndarray:
    """The (n_cols, n_rows) C-contiguous transpose of the rows `read_rows(start, stop)`
    returns, read `block_rows` at a time: the only memory held is the result itself."""
    out = np.empty((n_cols, n_rows), dtype=dtype)
    for i in range(0, n_rows, block_rows):
        m = min(block_rows, n_rows - i)
        out[:, i : i + m] = read_rows(i, i + m).T
    return out


# ---- one-line messages ----


def short_repr(value: object, limit: int = 60) -> str:
    """repr, shortened: the file's own strings must not make a message long or multi-line."""
    return clip(repr(value), limit)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, "..." marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(e: BaseException) -> str:
    """An exception's message for one of ours: an OSError's strerror, else its text on one
    line and cut short (libraries put whole documents in theirs)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split())[:ERROR_TEXT_LIMIT]


def human_bytes(n: float) -> str:
    """A byte count as people read it: "512 B", "1.5 KiB", ... up to GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return f"{n:,.1f} GiB"


# ---- files ----


def regular_file_size(path: Path) -> int:
    """The size of `path`, which must be a regular file (not a folder, FIFO or device)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise JobError(f"{path}: file not found") from None
    except OSError as e:
        raise JobError(f"{path}: cannot read ({error_text(e)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise JobError(f"{path}: not a regular file")
    return info.st_size


def read_into(f: BinaryIO, path: Path, name: str, offset: int, view: memoryview) -> None:
    """Fill `view` with the bytes of tensor `name` at `offset`; a short read (the file
    shrank since its header was checked) is a JobError."""
    f.seek(offset)
    got = f.readinto(view)
    if got != len(view):
        raise JobError(
            f"{path}: tensor {name!r} truncated (wanted {len(view)} bytes at offset "
            f"{offset}, got {got})"
        )


def strict_json(path: Path, raw: bytes, what: str) -> object:
    """Parse `raw` as UTF-8 JSON with no duplicate keys, no NaN/Infinity literals, and no
    nesting deep enough to exhaust the stack; any failure is one JobError line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: bad JSON {what}: not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise JobError(f"{path}: bad JSON {what}: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, duplicates, NaN, too many digits
        raise JobError(f"{path}: bad JSON {what}: {error_text(e)}") from None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short_repr(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


# ---- memory ----


def check_memory(path: Path, name: str, shape: tuple[int, ...], bytes_per_element: int) -> None:
    """Refuse a read of tensor `name` whose buffers would exceed the memory available,
    before any is taken (a header can guarantee the bytes exist; a sparse file can still
    claim TiB)."""
    need = math.prod(shape) * bytes_per_element
    if need < MEMORY_CHECK_MIN_BYTES:
        return
    avail = available_memory_bytes()
    if avail is not None and need > avail:
        raise JobError(
            f"{path}: tensor {name!r}: reading {list(shape)} needs "
            f"{human_bytes(need)} of memory but only {human_bytes(avail)} is available"
        )


def available_memory_bytes() -> int | None:
    """Memory a new allocation can count on: MemAvailable, capped by a cgroup limit.

    MemAvailable is the kernel's own estimate (free memory plus reclaimable page cache).
    A cgroup (a SLURM job's --mem) can allow less than the node has; only its limit is
    used, not its usage, which counts page cache the kernel would reclaim. None where
    neither can be read (then reads are not refused for memory).
    """
    found = [m for m in (_meminfo_available(), _cgroup_limit()) if m is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: free pages (an underestimate, but the best the OS says)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit (v2 memory.max or v1 limit_in_bytes), if set."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controllers == "":
            root, name = Path("/sys/fs/cgroup"), "memory.max"
        elif "memory" in controllers.split(","):
            root, name = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        # Inside a container the cgroup is mounted as the root: try its own path, then /.
        for folder in (root / where.lstrip("/"), root):
            try:
                limit = int((folder / name).read_text())
            except (OSError, ValueError):  # absent, or "max" (no limit)
                continue
            return limit if limit < 2**60 else None  # v1 writes "no limit" as ~2**63
    return None
