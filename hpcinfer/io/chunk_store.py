"""Per-chunk result files: the durable unit of finished work.

Each finished chunk is written to `<dir>/chunk-<index>.npz` through a temporary file that
is flushed, fsync'd and atomically renamed (and the folder fsync'd), so a chunk file
either exists whole or not at all, whatever kills the process. No HDF5 file is open for
writing while chunks are computed (HDF5 is not crash-safe); the final file is assembled
from these at the end. `write` returns the file's CRC-32, which the journal records so
that a resumed run can prove a chunk file is the one that was written.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from hpcinfer import faults
from hpcinfer.errors import RunError


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_crc32(path: Path, block: int = 8 * 2**20) -> int:
    crc = 0
    with Path(path).open("rb") as f:
        while data := f.read(block):
            crc = zlib.crc32(data, crc)
    return crc


class ChunkStore:
    """The folder of finished chunks of one run.

    With `durable=False` (run.checkpoint = false) files are written without fsync: the
    same work minus the guarantees, to measure what checkpointing costs.
    """

    def __init__(self, folder: Path, durable: bool = True):
        self.folder = Path(folder)
        self.durable = durable

    def path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:08d}.npz"

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> int:
        """Write chunk `index` whole-or-absent; returns the CRC-32 of its bytes."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getbuffer()
        path = self.path(index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            faults.at_point("write")  # tests kill the process here, mid-write
            f.write(data[half:])
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.durable:
            fsync_dir(self.folder)
        return zlib.crc32(data)

    def read(self, index: int) -> dict[str, np.ndarray]:
        path = self.path(index)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise RunError(f"{path}: cannot read finished chunk: {e}") from None
