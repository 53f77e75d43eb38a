"""A safetensors reader that reads only the slices asked for, in any float dtype.

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw row-major data. Parsing it here (rather than through
`safetensors.numpy`) buys four things: BF16 (numpy has no bfloat16), slices along
rows *or* columns without reading the whole tensor (tensor-parallel loading), transposed
reads without a second full copy, and header-only inspection. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcinfer.errors import JobError

# safetensors dtype -> numpy dtype of the stored bytes (BF16 is decoded separately)
STORED_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100 * 2**20
TRANSPOSE_BLOCK_BYTES = 2**20  # read_transposed works through this many bytes at a time


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (as uint16) -> float32: they are the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """Header of a .safetensors file, and reads of (slices of) its tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors, self.metadata = _read_header(self.path)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise JobError(f"{self.path}: tensor {name!r} not found")
        return self.tensors[name]

    def read(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: np.dtype | str | None = None,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols] (cols only for 2-D), cast to `dtype` if given."""
        info = self.info(name)
        stored = STORED_DTYPES[info.dtype]
        shape = info.shape or (1,)
        r0, r1, rstep = rows.indices(shape[0])
        if rstep != 1:
            raise ValueError("row slices must be contiguous")
        row_elems = int(np.prod(shape[1:], dtype=np.int64))
        row_bytes = row_elems * stored.itemsize
        n_rows = max(0, r1 - r0)
        full_cols = len(shape) < 2 or cols.indices(shape[1]) == (0, shape[1], 1)
        if not full_cols and len(shape) != 2:
            raise ValueError("column slices are supported for 2-D tensors only")
        with self.path.open("rb") as f:
            if full_cols:
                data = _pread(f, info.begin + r0 * row_bytes, n_rows * row_bytes, stored)
                data = data.reshape((n_rows, *shape[1:]))
            else:
                c0, c1, cstep = cols.indices(shape[1])
                if cstep != 1:
                    raise ValueError("column slices must be contiguous")
                # Row by row, straight into the result: no buffer beyond the slice itself.
                data = np.empty((n_rows, max(0, c1 - c0)), dtype=stored)
                for i in range(n_rows):
                    offset = info.begin + (r0 + i) * row_bytes + c0 * stored.itemsize
                    _pread_into(f, offset, memoryview(data[i]).cast("B"))
        if not info.shape:
            data = data.reshape(())
        if info.dtype == "BF16":
            data = bf16_to_f32(data)
        return data if dtype is None else data.astype(dtype, copy=False)

    def read_transposed(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: np.dtype | str = "float32",
    ) -> np.ndarray:
        """Tensor `name`[rows, cols].T of a 2-D tensor, C-contiguous, in `dtype`.

        Built a few MiB of rows at a time, so the only memory held is the result itself.
        """
        info = self.info(name)
        if len(info.shape) != 2:
            raise ValueError(f"{name}: read_transposed needs a 2-D tensor, got {info.shape}")
        r0, r1, _ = rows.indices(info.shape[0])
        c0, c1, _ = cols.indices(info.shape[1])
        n_rows, n_cols = max(0, r1 - r0), max(0, c1 - c0)
        out = np.empty((n_cols, n_rows), dtype=dtype)
        block = max(1, TRANSPOSE_BLOCK_BYTES // max(1, n_cols * STORED_DTYPES[info.dtype].itemsize))
        for i in range(0, n_rows, block):
            m = min(block, n_rows - i)
            part = self.read(name, rows=slice(r0 + i, r0 + i + m), cols=slice(c0, c1))
            out[:, i : i + m] = part.T
        return out


def _pread(f, offset: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    buf = bytearray(nbytes)
    _pread_into(f, offset, memoryview(buf))
    return np.frombuffer(buf, dtype=dtype)


def _pread_into(f, offset: int, view: memoryview) -> None:
    f.seek(offset)
    if f.readinto(view) != len(view):
        raise JobError(f"{f.name}: truncated (wanted {len(view)} bytes at offset {offset})")


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    if not path.is_file():
        raise JobError(f"{path}: file not found")
    size = os.path.getsize(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise JobError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise JobError(f"{path}: not a safetensors file (header length {n} is invalid)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JobError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    if not isinstance(header, dict):
        raise JobError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    data_start = 8 + n
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise JobError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in STORED_DTYPES:
            raise JobError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * STORED_DTYPES[dtype].itemsize
        if end - begin != expected or begin < 0 or data_start + end > size:
            raise JobError(
                f"{path}: tensor {name!r} data offsets [{begin}, {end}) do not fit "
                f"shape {shape} {dtype} in a {size}-byte file"
            )
        tensors[name] = TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)
    return tensors, metadata
