"""The final HDF5 file: assembled from chunk files, in input order, made visible at once.

It is written under a temporary name inside the run's partial folder, flushed and
fsync'd, then renamed onto the output path: a reader sees either no file or the whole
file, never a half-written one.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcinfer.checkpoint.chunk_files import ChunkStore, fsync_dir
from hpcinfer.errors import DiskError, RunError, io_error
from hpcinfer.io.file_checks import human_bytes
from hpcinfer.models.base import OutputSpec
from hpcinfer.schedule.chunks import Chunk


def assemble_output(
    final_path: Path,
    store: ChunkStore,
    chunks: Iterable[Chunk],
    n_rows: int,
    outputs: dict[str, OutputSpec],
    attrs: dict[str, Any],
    run_records: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Copy every chunk's results into datasets of `n_rows` rows, then publish the file.

    `run_records` are written under the group `run/` (e.g. run/chunks, the chunk log).
    Room is checked first; any failure removes the unfinished file and leaves the chunk
    files as they are, so the same command completes the job once the cause is gone.
    Returns, per output, how many rows hold a non-finite value.
    """
    needed = sum(n_rows * o.row_bytes for o in outputs.values()) + ASSEMBLY_OVERHEAD
    check_room(store.folder, needed, final_path)
    tmp = store.folder / f".assembling-{uuid.uuid4().hex}-{final_path.name}"
    try:
        nonfinite = in_child(
            lambda: _write(tmp, store, chunks, n_rows, outputs, attrs, run_records or {})
        )
        os.replace(tmp, final_path)
        fsync_dir(final_path.parent)
    except (OSError, RunError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, RunError):
            raise type(e)(f"{final_path}: cannot write the output file: {e}") from None
        raise io_error(final_path, "write the output file", e) from None
    return nonfinite


def in_child(write: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Run `write` in a forked child and return its result.

    HDF5 cannot recover from a write that fails half-way (a full disk, a quota): releasing
    the broken file's objects, or exiting, crashes the process (a segfault, seen with h5py
    3.16 / HDF5 1.14). The child answers through a pipe and leaves with os._exit before
    that can happen; should it crash anyway, this process still reports one line, and the
    chunk files stay. The child never touches MPI.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer, then leave at once (no cleanup that could crash)
        os.close(read_end)
        try:
            _answer(write_end, {"ok": write()})
        except BaseException as e:  # noqa: BLE001 (answered while the broken file's objects live)
            full = any(t in str(e) for t in DISK_FULL_TEXT) or getattr(e, "errno", 0) in (
                DiskError.ERRNOS
            )
            _answer(write_end, {"error": " ".join(str(e).split())[:300], "full": full})
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(text) if text else {}
    if "ok" in result and os.waitstatus_to_exitcode(status) == 0:
        return result["ok"]
    if "error" in result:
        kind = DiskError if result["full"] else RunError
        hint = "; free space and rerun the same command" if result["full"] else ""
        raise kind(result["error"] + hint)
    died = f"the writer process died (exit status {os.waitstatus_to_exitcode(status)})"
    raise RunError(died)


def _answer(fd: int, result: dict) -> None:
    """Write the child's answer to the pipe and leave (from inside an except block, the
    failed HDF5 objects are still referenced: releasing them is what crashes)."""
    os.write(fd, json.dumps(result).encode())
    os._exit(0)


def room_left(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


ASSEMBLY_OVERHEAD = 4 * 2**20  # HDF5 metadata, the run log and attributes, generously
DISK_FULL_TEXT = ("No space left", "Disk quota", "File too large")


def check_room(folder: Path, needed: int, final_path: Path) -> None:
    free = room_left(folder)
    if free < needed:
        raise DiskError(
            f"{final_path}: not enough room to assemble the output ({human_bytes(needed)} "
            f"needed, {human_bytes(free)} free in {folder}); free space and rerun the same "
            "command (the finished chunks are kept)"
        )


def _write(
    tmp: Path,
    store: ChunkStore,
    chunks: Iterable[Chunk],
    n_rows: int,
    outputs: dict[str, OutputSpec],
    attrs: dict[str, Any],
    run_records: dict[str, np.ndarray],
) -> dict[str, int]:
    nonfinite = dict.fromkeys(outputs, 0)
    # No `with`: after a failed write, closing the file is what crashes HDF5; the child
    # reports the error and leaves without closing (os._exit).
    f = h5py.File(tmp, "w")
    datasets = {
        name: f.create_dataset(name, shape=(n_rows, *o.shape), dtype=o.dtype)
        for name, o in outputs.items()
    }
    for chunk in chunks:
        arrays = store.read(chunk.index)
        for name, ds in datasets.items():
            values = arrays[name]
            ds[chunk.start : chunk.stop] = values
            if np.issubdtype(values.dtype, np.floating):
                bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
                nonfinite[name] += int(bad.sum())
    for name, records in run_records.items():
        f.create_dataset(f"run/{name}", data=records)
    for key, value in {**attrs, "rows_nonfinite": nonfinite}.items():
        f.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    f.close()
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    return nonfinite


def match_privacy(path: Path, sources: Iterable[Path]) -> None:
    """Results are no more readable than the data they came from: drop the output's
    world (group) read bits when an input file lacks them."""
    mode = path.stat().st_mode
    for source in sources:
        src = source.stat().st_mode
        if not src & stat.S_IROTH:
            mode &= ~(stat.S_IROTH | stat.S_IWOTH)
        if not src & stat.S_IRGRP:
            mode &= ~(stat.S_IRGRP | stat.S_IWGRP)
    os.chmod(path, stat.S_IMODE(mode))


def output_fingerprint(path) -> str | None:
    """The job fingerprint recorded in an existing output file, if any."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("job_fingerprint", ""))
    except OSError:
        return None
