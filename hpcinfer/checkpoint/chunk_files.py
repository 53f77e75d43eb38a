"""Per-chunk result files: the durable unit of finished work.

A chunk's outputs go into `<dir>/chunk-<index>.bin` batch by batch, as they are computed,
so no rank ever holds a whole chunk of outputs: memory does not grow with chunk_size (nor
with the chunks waiting to be made durable). The file is written under a temporary name,
then flushed, fsync'd and atomically renamed (and the folder fsync'd), so it either
exists whole or not at all, whatever kills the process. No HDF5 file is open for writing
while chunks are computed (HDF5 is not crash-safe); the final file is assembled from these
at the end. `commit` returns the file's CRC-32, which the journal records so that a
resumed run can prove a chunk file is the one that was written.

File layout: MAGIC, the header's length (uint64, little-endian), a JSON header
{"rows": N, "arrays": [{"name", "dtype", "shape", "offset"}, ...], "heap": H}, then each
array's C-order bytes at its offset (64-byte aligned: `np.fromfile` or `np.memmap` read
them), then, from offset H to the end of the file, the heap.

Texts (a column of dtype object: kept input columns) have no fixed size, so they live
in the heap: the column's array (dtype "utf-8" in the header) holds, per row, an int64
pair (start, length) of its UTF-8 bytes, counted from H. Each batch's texts are appended
to the heap as the batch is written; nothing else changes: the file is still whole or
absent (temporary name, fsync, rename) and its CRC-32 covers the heap. A reader checks
every pair lies inside the heap and every text is UTF-8.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import RunError, io_error
from hpcinfer.models.base import OutputSpec

MAGIC = b"HPCINFER-CHUNK-1"
ALIGN = 64
TEXT = np.dtype(object)  # a column of texts, stored in the heap
PAIR = np.dtype("<i8")  # a text's (start, length) in the heap


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


@dataclass(frozen=True)
class ArraySlot:
    """Where one output of a chunk lives in its file."""

    dtype: np.dtype  # as stored: for texts, PAIR
    shape: tuple[int, ...]  # (rows, *row_shape); for texts (rows, 2)
    offset: int
    text: bool = False  # a column of texts: (start, length) pairs into the heap

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def chunk_layout(
    rows: int, outputs: dict[str, OutputSpec]
) -> tuple[bytes, dict[str, ArraySlot], int]:
    """(bytes before the first array, where each array goes, where the heap starts)."""
    entries = []
    for name, o in outputs.items():
        text = np.dtype(o.dtype) == TEXT
        dtype, shape = (PAIR, (rows, 2)) if text else (np.dtype(o.dtype), (rows, *o.shape))
        entries.append((name, dtype, shape, text))

    def header(offsets: list[int], heap: int) -> bytes:
        arrays = [
            {
                "name": name,
                "dtype": "utf-8" if text else dtype.str,
                "shape": [shape[0]] if text else list(shape),
                "offset": offset,
            }
            for (name, dtype, shape, text), offset in zip(entries, offsets, strict=True)
        ]
        body = json.dumps({"rows": rows, "arrays": arrays, "heap": heap}).encode()
        return MAGIC + len(body).to_bytes(8, "little") + body

    # Offsets depend on the header's length, which depends on the offsets' digits: the
    # header is sized with generous offsets first, then the real ones fit in that room.
    room = _align(len(header([2**62] * len(entries), 2**62)))
    slots, offset = {}, room
    for name, dtype, shape, text in entries:
        slots[name] = ArraySlot(dtype, shape, offset, text)
        offset = _align(offset + slots[name].nbytes)
    end = max((s.offset + s.nbytes for s in slots.values()), default=room)
    heap = end
    head = header([s.offset for s in slots.values()], heap)
    return head + bytes(room - len(head)), slots, heap


class ChunkFile:
    """One chunk's file while its rows are computed: filled in row order, batch by batch,
    then committed (durable, renamed into place) or discarded."""

    def __init__(
        self, store: ChunkStore, index: int, rows: int, outputs: dict[str, OutputSpec]
    ) -> None:
        self.index, self.path = index, store.path(index)
        self.durable = store.durable
        self.rows = rows
        self.rows_written = 0
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        head, self._slots, size = chunk_layout(rows, outputs)
        self._heap, self._heap_end = size, size  # texts are appended from here
        self._fd: int | None = None
        with self._disk("create"):
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._pwrite(head, 0)
            os.ftruncate(self._fd, size)

    def write_rows(self, start: int, arrays: dict[str, Any]) -> None:
        """Rows [start, start + n) of every output; batches come in row order."""
        if start != self.rows_written or set(arrays) != set(self._slots):
            raise RunError(
                f"{self.path}: expected rows from {self.rows_written} of "
                f"{sorted(self._slots)}, got rows from {start} of {sorted(arrays)}"
            )
        n = None
        for name, given in arrays.items():
            slot = self._slots[name]
            values = self._texts(name, given) if slot.text else given
            values = np.ascontiguousarray(values, dtype=slot.dtype)
            if (
                values.ndim == 0
                or values.shape[1:] != slot.shape[1:]
                or n not in (None, len(values))
            ):
                raise RunError(
                    f"{self.path}: output {name!r} has shape {values.shape}, expected "
                    f"(rows, {', '.join(map(str, slot.shape[1:]))}) rows alike in every output"
                )
            n = len(values)
            if start + n > self.rows:
                raise RunError(f"{self.path}: rows beyond the chunk's {self.rows}")
            with self._disk("write"):
                self._pwrite(
                    values.reshape(-1).view(np.uint8), slot.offset + start * slot.row_bytes
                )
        self.rows_written += n or 0

    def _texts(self, name: str, given: Any) -> np.ndarray:
        """Append a batch's texts to the heap; their (start, length) pairs."""
        blobs = [str(t).encode("utf-8") for t in given]
        lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        starts = self._heap_end - self._heap + np.cumsum(lengths) - lengths
        with self._disk("write"):
            self._pwrite(b"".join(blobs), self._heap_end)
        self._heap_end += int(lengths.sum())
        return np.stack([starts, lengths], axis=1) if len(blobs) else np.zeros((0, 2), PAIR)

    def commit(self) -> int:
        """Make the file durable under its final name; returns its CRC-32."""
        if self.rows_written != self.rows:
            self.discard()
            raise RunError(f"{self.path}: {self.rows_written} of {self.rows} rows written")
        with self._disk("commit"):
            try:
                if self.durable:
                    os.fsync(self._fd)
            finally:
                self._close()
            os.replace(self._tmp, self.path)
            if self.durable:
                fsync_dir(self.path.parent)
            return file_crc32(self.path)  # read back from the page cache: no copy held

    def discard(self) -> None:
        """Forget a chunk that will not be finished (its temporary file is removed)."""
        self._close()
        self._tmp.unlink(missing_ok=True)

    @contextmanager
    def _disk(self, doing: str) -> Iterator[None]:
        """A failing disk (full, quota, file size limit) as one line naming the file."""
        try:
            yield
        except OSError as e:
            self.discard()
            raise io_error(self._tmp, f"{doing} chunk file", e) from None

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _pwrite(self, data: Any, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written


class ChunkStore:
    """The folder of finished chunks of one run.

    With `durable=False` (run.checkpoint = false) files are written without fsync: the
    same work minus the guarantees, to measure what checkpointing costs.
    """

    def __init__(self, folder: Path, durable: bool = True):
        self.folder = Path(folder)
        self.durable = durable

    def path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:08d}.bin"

    def create(self, index: int, rows: int, outputs: dict[str, OutputSpec]) -> ChunkFile:
        """A new file for chunk `index`, sized for `outputs` (the model's datasets)."""
        return ChunkFile(self, index, rows, outputs)

    def read(self, index: int) -> dict[str, np.ndarray]:
        path = self.path(index)
        try:
            with path.open("rb") as f:
                return _read_arrays(f, os.fstat(f.fileno()).st_size)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{path}: cannot read finished chunk: {e}") from None


def _read_arrays(f, size: int) -> dict[str, np.ndarray]:
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not an hpcinfer chunk file")
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    if int(header.get("heap", 0)) > size:
        raise ValueError("the file is cut short")
    arrays = {}
    for entry in header["arrays"]:
        text = entry["dtype"] == "utf-8"
        dtype = PAIR if text else np.dtype(entry["dtype"])
        shape = (entry["shape"][0], 2) if text else tuple(entry["shape"])
        offset = entry["offset"]
        nbytes = math.prod(shape) * dtype.itemsize  # checked before any memory is taken
        if offset + nbytes > size:
            raise ValueError(f"array {entry['name']!r} is cut short")
        array = np.empty(shape, dtype=dtype)
        f.seek(offset)
        if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != nbytes:
            raise ValueError(f"array {entry['name']!r} is cut short")
        arrays[entry["name"]] = _decode_texts(f, header, size, array) if text else array
    return arrays


def _decode_texts(f, header: dict, size: int, pairs: np.ndarray) -> np.ndarray:
    """The texts that (start, length) pairs point at in the heap, as an object array."""
    heap = int(header["heap"])
    if not 0 < heap <= size:
        raise ValueError("the heap lies outside the file")
    starts, lengths = pairs[:, 0], pairs[:, 1]
    inside = not len(pairs) or (
        starts.min() >= 0 and lengths.min() >= 0 and (starts + lengths).max() <= size - heap
    )
    if not inside:
        raise ValueError("a text lies outside the heap")
    f.seek(heap)
    blob = f.read(size - heap)
    out = np.empty(len(pairs), dtype=object)
    for i, (s, n) in enumerate(pairs.tolist()):
        out[i] = blob[s : s + n].decode("utf-8")  # UnicodeDecodeError is a ValueError
    return out
