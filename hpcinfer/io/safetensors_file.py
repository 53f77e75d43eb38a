"""A safetensors reader that reads only the slices asked for, in any float dtype.

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw row-major data. Parsing it here (rather than through
`safetensors.numpy`) buys four things: BF16 (numpy has no bfloat16), slices along
rows *or* columns without reading the whole tensor (tensor-parallel loading), transposed
reads without a second full copy, and header-only inspection. Nothing is ever unpickled.

A model file is user input, so every field of the header is checked before it is used:
a damaged or hostile file is one JobError line naming the file and the tensor, never a
traceback, a MemoryError or an allocation sized by a number the file made up. Every read
is checked against the file's current size and the memory available before a buffer is
taken.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import (
    bf16_to_f32,
    check_memory,
    contiguous,
    error_text,
    nonfinite_count,
    read_into,
    regular_file_size,
    short_repr,
    strict_json,
    transposed_by_rows,
)

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
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100 * 2**20  # the reference implementation's limit
MAX_DIMS = 32  # numpy 1.x's limit on ndim (numpy 2 allows 64)
INT64_MAX = 2**63 - 1
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
        check_finite: bool = False,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols] (cols only for 2-D), cast to `dtype` if given.

        check_finite: a NaN or Inf in the result (after the cast) is a JobError naming
        the tensor, for loaders that must not run a model on broken weights.
        """
        info = self.info(name)
        stored = STORED_DTYPES[info.dtype]
        shape = info.shape or (1,)
        r0, r1 = contiguous(rows, shape[0], "row")
        row_bytes = math.prod(shape[1:]) * stored.itemsize
        n_rows = r1 - r0
        if len(shape) == 2:
            c0, c1 = contiguous(cols, shape[1], "column")
            full_cols = (c0, c1) == (0, shape[1])
        elif cols != slice(None):
            raise ValueError(f"{name}: column slices need a 2-D tensor, got shape {info.shape}")
        else:
            full_cols = True
        out_shape = (n_rows, *shape[1:]) if full_cols else (n_rows, c1 - c0)
        # Peak: the stored bytes, plus the float32 decoding of BF16, plus a cast copy.
        decoded = np.dtype(np.float32) if info.dtype == "BF16" else stored
        per_element = stored.itemsize + (decoded.itemsize if decoded != stored else 0)
        if dtype is not None and np.dtype(dtype) != decoded:
            per_element += np.dtype(dtype).itemsize
        check_memory(self.path, name, out_shape, per_element)
        try:
            with self.path.open("rb") as f:
                _check_size(self.path, name, info, _current_size(f))
                if full_cols:
                    data = np.empty(out_shape, dtype=stored)
                    offset = info.begin + r0 * row_bytes
                    read_into(f, self.path, name, offset, memoryview(data).cast("B"))
                else:
                    # Row by row, straight into the result: no buffer beyond the slice itself.
                    data = np.empty(out_shape, dtype=stored)
                    for i in range(n_rows):
                        offset = info.begin + (r0 + i) * row_bytes + c0 * stored.itemsize
                        read_into(f, self.path, name, offset, memoryview(data[i]).cast("B"))
        except OSError as e:
            raise JobError(f"{self.path}: tensor {name!r}: cannot read ({error_text(e)})") from None
        if not info.shape:
            data = data.reshape(())
        if info.dtype == "BF16":
            data = bf16_to_f32(data)
        if dtype is not None:
            with np.errstate(over="ignore" if check_finite else "warn"):  # reported below
                data = data.astype(dtype, copy=False)
        if check_finite:
            self._check_finite(name, data, cast=dtype is not None)
        return data

    def read_transposed(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: np.dtype | str = "float32",
        check_finite: bool = False,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols].T of a 2-D tensor, C-contiguous, in `dtype`.

        Built a few MiB of rows at a time, so the only memory held is the result itself.
        """
        info = self.info(name)
        if len(info.shape) != 2:
            raise ValueError(f"{name}: read_transposed needs a 2-D tensor, got {info.shape}")
        r0, r1 = contiguous(rows, info.shape[0], "row")
        c0, c1 = contiguous(cols, info.shape[1], "column")
        n_rows, n_cols = r1 - r0, c1 - c0
        check_memory(self.path, name, (n_cols, n_rows), np.dtype(dtype).itemsize)
        block = max(1, TRANSPOSE_BLOCK_BYTES // max(1, n_cols * STORED_DTYPES[info.dtype].itemsize))
        out = transposed_by_rows(
            lambda i, j: self.read(name, rows=slice(r0 + i, r0 + j), cols=slice(c0, c1)),
            n_rows,
            n_cols,
            dtype,
            block,
        )
        if check_finite:
            self._check_finite(name, out, cast=True)
        return out

    def _check_finite(self, name: str, data: np.ndarray, cast: bool) -> None:
        if bad := nonfinite_count(data):
            as_dtype = f" as {data.dtype}" if cast else ""
            raise JobError(
                f"{self.path}: tensor {name!r}: {bad} of {data.size} values are NaN or "
                f"Inf{as_dtype}"
            )


def read_header_bytes(path: str | Path) -> bytes:
    """The length prefix and the JSON header of a safetensors file, unparsed (what a cheap
    identity of the weights hashes)."""
    return _header_bytes(Path(path))[0]


def _header_bytes(path: Path) -> tuple[bytes, int]:
    """(length prefix + header, file size); the length is checked against the file
    before a buffer of that length is taken."""
    size = regular_file_size(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise JobError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise JobError(
                    f"{path}: not a safetensors file (header length {n} is invalid: the "
                    f"file has {size} bytes, the limit is {MAX_HEADER_BYTES})"
                )
            raw = f.read(n)
    except OSError as e:
        raise JobError(f"{path}: cannot read ({error_text(e)})") from None
    if len(raw) < n:
        raise JobError(f"{path}: truncated while its header was read")
    return head + raw, size


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    raw, size = _header_bytes(path)
    header = strict_json(path, raw[8:], "header")
    if not isinstance(header, dict):
        raise JobError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise JobError(
            f"{path}: __metadata__ must be an object of strings, not {short_repr(metadata)}"
        )
    data_start = len(raw)
    tensors = {
        name: _tensor_info(path, name, entry, data_start, size) for name, entry in header.items()
    }
    _check_no_overlap(path, tensors)
    return tensors, metadata


def _tensor_info(path: Path, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
    """One header entry, every field checked, as a TensorInfo with absolute offsets."""
    at = f"{path}: tensor {short_repr(name)}"
    if not isinstance(entry, dict):
        raise JobError(f"{at}: header entry is {short_repr(entry)}, not an object")
    if missing := [k for k in ("dtype", "shape", "data_offsets") if k not in entry]:
        raise JobError(f"{at}: header entry has no {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in STORED_DTYPES:
        known = ", ".join(STORED_DTYPES)
        raise JobError(f"{at}: unsupported dtype {short_repr(dtype)} (this reader knows {known})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise JobError(f"{at}: shape {short_repr(shape)} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise JobError(f"{at}: shape has {len(shape)} dims, more than {MAX_DIMS}")
    elements = math.prod(shape)
    if elements > INT64_MAX or any(d > INT64_MAX for d in shape):
        raise JobError(f"{at}: shape {short_repr(shape)} overflows int64")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise JobError(
            f"{at}: data_offsets {short_repr(offsets)} is not a list of two non-negative integers"
        )
    begin, end = offsets
    if begin > end:
        raise JobError(f"{at}: data_offsets begin {begin} > end {end}")
    if data_start + end > size:
        raise JobError(
            f"{at}: data offsets [{begin}, {end}) do not fit the {size - data_start}-byte "
            f"data area of a {size}-byte file"
        )
    needed = elements * STORED_DTYPES[dtype].itemsize
    if end - begin != needed:
        raise JobError(
            f"{at}: data offsets [{begin}, {end}) hold {end - begin} bytes but shape "
            f"{short_repr(shape)} {dtype} needs {needed}"
        )
    return TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)


def _check_no_overlap(path: Path, tensors: dict[str, TensorInfo]) -> None:
    """Two tensors sharing bytes would make a write to one show in the other (and hide a
    file crafted to read differently in different readers)."""
    spans = sorted((t.begin, t.end, name) for name, t in tensors.items() if t.nbytes)
    for (_, end_a, a), (begin_b, _, b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise JobError(
                f"{path}: tensors {short_repr(a)} and {short_repr(b)} overlap in the file"
            )


def _check_size(path: Path, name: str, info: TensorInfo, size: int) -> None:
    if info.end > size:
        raise JobError(
            f"{path}: tensor {name!r}: file truncated (the tensor ends at byte {info.end}, "
            f"the file now has {size} bytes)"
        )


def _current_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def _is_count(x: object) -> bool:
    return type(x) is int and x >= 0  # bool is an int subclass, and not a count
