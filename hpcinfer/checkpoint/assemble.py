"""The final HDF5 file: assembled from chunk files, in input order, made visible at once.

It is written (by hpcinfer.checkpoint.output_writer, in its own process) under a
temporary name inside the run's partial folder, flushed and fsync'd, then renamed onto
the output path: a reader sees either no file or the whole file, never a half-written one.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterable
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
    encodings: dict[str, str] | None = None,
) -> dict[str, int]:
    """Copy every chunk's results into datasets of `n_rows` rows, then publish the file.

    `run_records` are written under the group `run/` (e.g. run/chunks, the chunk log);
    `encodings` name outputs stored as raw bits (columns.BFLOAT16).
    Room is checked first; the file is written by a separate process
    (hpcinfer.checkpoint.output_writer), so a failing disk cannot crash this one; any
    failure removes the unfinished file and leaves the chunk files as they are: the same
    command completes the job once the cause is gone. Returns, per output, how many rows
    hold a non-finite value.
    """
    chunks = list(chunks)
    check_room(store.folder, needed_bytes(store, chunks, n_rows, outputs), final_path)
    stem = store.folder / f".assembling-{uuid.uuid4().hex}"
    tmp = stem.with_name(f"{stem.name}-{final_path.name}")
    records = {}
    for name, array in (run_records or {}).items():
        records[name] = str(stem.with_name(f"{stem.name}-{name}.npy"))
        np.save(records[name], array)
    request = {
        "tmp": str(tmp),
        "folder": str(store.folder),
        "chunks": [(c.index, c.start, c.stop) for c in chunks],
        "n_rows": n_rows,
        "outputs": {k: [list(o.shape), np.dtype(o.dtype).str] for k, o in outputs.items()},
        "encodings": encodings or {},
        "attrs": attrs,
        "records": records,
    }
    request_path = stem.with_name(f"{stem.name}-request.json")
    try:
        request_path.write_text(json.dumps(request))
        nonfinite = run_writer(request_path)
        os.replace(tmp, final_path)
        fsync_dir(final_path.parent)
    except (OSError, RunError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, RunError):
            raise type(e)(f"{final_path}: cannot write the output file: {e}") from None
        raise io_error(final_path, "write the output file", e) from None
    finally:
        request_path.unlink(missing_ok=True)
        for path in records.values():
            Path(path).unlink(missing_ok=True)
    return nonfinite


def run_writer(request_path: Path) -> dict[str, int]:
    """Run the output writer process; its answer, or one RunError / DiskError line."""
    p = subprocess.run(
        [sys.executable, "-m", "hpcinfer.checkpoint.output_writer", str(request_path)],
        capture_output=True,
        text=True,
    )
    lines = p.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    if "ok" in result and p.returncode == 0:
        return result["ok"]
    if "error" in result:
        kind = DiskError if result["full"] else RunError
        hint = "; free space and rerun the same command" if result["full"] else ""
        raise kind(result["error"] + hint)
    last = (p.stderr.strip().splitlines() or ["no message"])[-1]
    raise RunError(f"the writer process failed (exit status {p.returncode}): {last[:200]}")


def room_left(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


ASSEMBLY_OVERHEAD = 4 * 2**20  # HDF5 metadata, the run log and attributes, generously
TEXT_ROW_OVERHEAD = 32  # bytes per variable-length string in HDF5 (heap id, heap object)


def needed_bytes(
    store: ChunkStore, chunks: Iterable[Chunk], n_rows: int, outputs: dict[str, OutputSpec]
) -> int:
    """Room the output needs: fixed-size rows, plus, for texts, what their chunk files
    hold (the texts themselves) and HDF5's cost per string."""
    texts = [o for o in outputs.values() if np.dtype(o.dtype) == np.dtype(object)]
    fixed = sum(n_rows * o.row_bytes for o in outputs.values() if o not in texts)
    if texts:
        held = sum(store.path(c.index).stat().st_size for c in chunks)
        fixed += held + len(texts) * n_rows * TEXT_ROW_OVERHEAD
    return fixed + ASSEMBLY_OVERHEAD


def check_room(folder: Path, needed: int, final_path: Path) -> None:
    free = room_left(folder)
    if free < needed:
        raise DiskError(
            f"{final_path}: not enough room to assemble the output ({human_bytes(needed)} "
            f"needed, {human_bytes(free)} free in {folder}); free space and rerun the same "
            "command (the finished chunks are kept)"
        )


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
