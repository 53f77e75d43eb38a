"""Per-chunk result files: the durable unit of finished work.

Each finished chunk is written to `<dir>/chunk-<index>.npz` through a temporary file that
is flushed, fsync'd and atomically renamed (and the folder fsync'd), so a chunk file
either exists whole or not at all, whatever kills the process. No HDF5 file is open for
writing while chunks are computed (HDF5 is not crash-safe); the final file is assembled
from these at the end. `write` returns the file's CRC-32, which the journal records so
that a resumed run can prove a chunk file is the one that was written.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from hpcinfer import faults
from hpcinfer.errors import RunError


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_crc32(path: Path, block: int = 2**20) -> int:
    crc = 0
    with Path(path).open("rb") as f:
        while data := f.read(block):
            crc = zlib.crc32(data, crc)
    return crc


def write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` (uncompressed; `np.load` reads it) without its copies: each array's
    bytes go from its own memory to the file, so writing a chunk holds nothing beyond it
    (`np.savez` copies every array in 16 MiB pieces, and into a BytesIO, whole)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            array = np.asarray(array, order="C")
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                npy_format.write_array_header_2_0(
                    member, npy_format.header_data_from_array_1_0(array)
                )
                data = memoryview(array.reshape(-1).view(np.uint8))
                half = len(data) // 2
                member.write(data[:half])
                faults.at_point("write")  # tests kill the process here, mid-write
                member.write(data[half:])


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
        path = self.path(index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            write_npz(f, arrays)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.durable:
            fsync_dir(self.folder)
        return file_crc32(path)  # read back from the page cache: cheap, and no copy held

    def read(self, index: int) -> dict[str, np.ndarray]:
        path = self.path(index)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise RunError(f"{path}: cannot read finished chunk: {e}") from None
