"""Per-chunk result files: the durable unit of finished work.

Each finished chunk is written to `<dir>/chunk-<index>.npz` through a temporary file that
is flushed, fsync'd and atomically renamed, so a chunk file either exists whole or not at
all, whatever kills the process. No HDF5 file is open for writing while chunks are
computed (HDF5 is not crash-safe); the final file is assembled from these at the end.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from hpcinfer.errors import RunError


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` (.npz) so that it is whole or absent after a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ChunkStore:
    """The folder of finished chunks of one run."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:08d}.npz"

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        write_durably(self.path(index), arrays)

    def read(self, index: int) -> dict[str, np.ndarray]:
        path = self.path(index)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise RunError(f"{path}: cannot read finished chunk: {e}") from None
