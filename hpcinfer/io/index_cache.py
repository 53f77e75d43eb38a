"""A compressed input's record index, kept in the run's partial folder.

Building the index of a compressed file costs one decompression of all of it; the index
is therefore saved, once the run has started, as `input-index-<key>.npz` in
`<output>.partial/` (written by rank 0, atomically) and a rerun (a resume, on any rank
count; `status`; a dry run) loads it instead. The partial folder goes when the run
completes, and the index with it: nothing is left beside the output.

A cached index is used only for the same file: the key is the file's resolved path and
the record kind, and the index records the file's size, mtime, inode and a hash of its
first and last 64 KiB, plus a CRC-32 of the arrays; anything that differs (or a damaged
cache) means the index is built again, never trusted. Only numpy arrays are stored
(np.load with allow_pickle=False).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import zlib
from pathlib import Path

import numpy as np

from hpcinfer.io.record_index import RecordIndex

EDGE_BYTES = 64 * 2**10
PREFIX = "input-index-"


def cache_path(folder: Path, path: Path, kind: str) -> Path:
    key = hashlib.sha256(f"{Path(path).resolve()}\0{kind}".encode()).hexdigest()[:20]
    return Path(folder) / f"{PREFIX}{key}.npz"


def file_identity(path: Path) -> dict[str, object]:
    """What must not change for a cached index to hold."""
    with Path(path).open("rb") as f:
        st = os.fstat(f.fileno())
        head = f.read(EDGE_BYTES)
        f.seek(max(0, st.st_size - EDGE_BYTES))
        tail = f.read(EDGE_BYTES)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "inode": [st.st_dev, st.st_ino],
        "edges_sha256": hashlib.sha256(head + tail).hexdigest(),
    }


def _arrays(index: RecordIndex) -> dict[str, np.ndarray]:
    arrays = {"starts": index.starts, "ends": index.ends}
    if index.lines is not None:
        arrays["lines"] = index.lines
    return {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}


def _crc(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(arrays[name].tobytes(), zlib.crc32(name.encode(), crc))
    return crc


def save(folder: Path, path: Path, kind: str, index: RecordIndex) -> Path:
    """Write the index of `path` into `folder` (temporary name, then renamed)."""
    target = cache_path(folder, path, kind)
    arrays = _arrays(index)
    meta = {
        "path": str(Path(path).resolve()),
        "kind": kind,
        "total": index.total,
        "file": file_identity(path),
        "crc32": _crc(arrays),
    }
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load(folder: Path, path: Path, kind: str) -> RecordIndex | None:
    """The cached index of `path`, or None when there is none that can be trusted."""
    target = cache_path(folder, path, kind)
    if not target.is_file():
        return None
    with contextlib.suppress(Exception):  # a damaged cache is rebuilt, never trusted
        with np.load(target, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: np.asarray(z[k]) for k in ("starts", "ends", "lines") if k in z}
        if (
            meta.get("kind") != kind
            or meta.get("path") != str(Path(path).resolve())
            or meta.get("file") != file_identity(path)
            or meta.get("crc32") != _crc(arrays)
        ):
            return None
        starts, ends, total = arrays["starts"], arrays["ends"], int(meta["total"])
        ordered = len(starts) == len(ends) and bool(np.all(starts <= ends))
        if not ordered or (len(ends) and (starts[0] < 0 or ends[-1] > total)):
            return None
        return RecordIndex(starts, ends, total, arrays.get("lines"))
    return None
