"""The header of a GGUF file, parsed and checked: version, typed metadata, tensor table.

Format (llama.cpp's GGUF, versions 2 and 3, little-endian): magic "GGUF", version, tensor
and key counts, key/value metadata (typed scalars, strings, arrays), one info record per
tensor (name, dims `ne` innermost first, ggml type, offset), padding to `general.alignment`,
then the tensor data. A tensor's Hugging Face shape is `ne` reversed: a (rows, cols) matrix
has ne = [cols, rows].

The header is parsed here rather than by `gguf.GGUFReader`, which walks arrays element by
element with no bound (a corrupt array length spins instead of failing), reports damage
as bare ValueError/IndexError, and takes ~2 s for SmolLM2's 100k-string vocabulary
(here 0.12-0.2 s). Every length and count is checked against the file's size before anything
is allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import regular_file_size

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # nested metadata arrays; deeper is damage, not data
HEADER_READ_BYTES = 2**20

# GGUF metadata value types -> struct format of the scalar (8 string, 9 array)
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: ggml type name, Hugging Face-order shape, absolute byte range."""

    dtype: str  # ggml type name: "F32", "Q4_1", "Q6_K", ...
    shape: tuple[int, ...]  # reversed GGUF ne: (rows, cols) for a matrix
    begin: int  # absolute file offset of the first byte
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def block(self) -> tuple[int, int]:
        """(values per block, bytes per block); (1, itemsize) for plain types."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # (only for GGUF models)

        return GGML_QUANT_SIZES[GGMLQuantizationType[self.dtype]]


@dataclass(frozen=True)
class GgufHeader:
    """What `read_header` found: the tensors' byte ranges are checked to lie in the file."""

    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]


class _Short(Exception):
    """The header asks for bytes the file does not have."""


class _Cursor:
    """Sequential reads of a file's header, pulled in as needed, never past its size."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size
        self.buf, self.base, self.pos = b"", 0, 0  # buf holds file bytes [base, base+len)

    def take(self, n: int) -> memoryview:
        if n > self.size - self.pos:
            raise _Short(f"wanted {n} bytes at offset {self.pos}, the file has {self.size}")
        start = self.pos - self.base
        if start + n > len(self.buf):
            self.f.seek(self.pos)
            self.buf = self.f.read(max(n, HEADER_READ_BYTES))
            self.base, start = self.pos, 0
            if len(self.buf) < n:
                raise _Short(f"file shrank while reading offset {self.pos}")
        self.pos += n
        return memoryview(self.buf)[start : start + n]

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        return str(self.take(n), "utf-8")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise _Short(f"unknown value type {vtype}")
        if depth >= MAX_ARRAY_DEPTH:
            raise _Short(f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
        itype, count = self.scalar("<I"), self.scalar("<Q")
        if itype in _SCALAR_FORMATS:
            fmt = _SCALAR_FORMATS[itype]
            size = struct.calcsize(fmt)
            if count > (self.size - self.pos) // size:
                raise _Short(f"array of {count} items at offset {self.pos} overruns the file")
            data = np.frombuffer(self.take(count * size), dtype=np.dtype(fmt))
            return data.tolist()
        least = 8 if itype == _STRING else 12  # a string's length; an array's type + count
        if count > (self.size - self.pos) // least:
            raise _Short(f"array of {count} items at offset {self.pos} overruns the file")
        if itype == _STRING:
            return [self.string() for _ in range(count)]
        return [self.value(itype, depth + 1) for _ in range(count)]


def read_header(path: Path) -> GgufHeader:
    """The header of the GGUF file at `path`: damage is one JobError line naming the file
    and the key or tensor where the parse stopped."""
    size = regular_file_size(path)
    with path.open("rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != MAGIC:
            raise JobError(f"{path}: not a GGUF file (no 'GGUF' magic at the start)")
        (version,) = struct.unpack_from("<I", head, 4)
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack_from(">I", head, 4)[0]
            why = " (a big-endian file)" if swapped in SUPPORTED_VERSIONS else ""
            raise JobError(
                f"{path}: GGUF version {version}{why} is not supported "
                f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))}, little-endian)"
            )
        n_tensors, n_kv = struct.unpack_from("<QQ", head, 8)
        cur = _Cursor(f, size)
        cur.take(24)
        # Each key/value takes >= 13 bytes, each tensor info >= 24: counts a file cannot
        # hold are damage, found before any loop runs.
        if n_kv > size // 13 or n_tensors > size // 24:
            raise JobError(
                f"{path}: corrupt GGUF header ({n_kv} keys, {n_tensors} tensors "
                f"cannot fit in a {size}-byte file)"
            )
        metadata: dict[str, Any] = {}
        where = "the first metadata key"
        try:
            for _ in range(n_kv):
                key = cur.string()
                where = f"metadata key {key!r}"
                if key in metadata:
                    raise _Short("the key appears twice")
                metadata[key] = cur.value(cur.scalar("<I"))
            where = "the tensor table"
            entries = []
            for _ in range(n_tensors):
                name = cur.string()
                where = f"tensor {name!r}"
                n_dims = cur.scalar("<I")
                if not 1 <= n_dims <= MAX_DIMS:
                    raise _Short(f"{n_dims} dimensions (1 to {MAX_DIMS} allowed)")
                ne = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims))
                entries.append((name, ne, cur.scalar("<I"), cur.scalar("<Q")))
        except _Short as e:
            raise JobError(f"{path}: truncated or corrupt GGUF header at {where}: {e}") from None
        except UnicodeDecodeError:
            raise JobError(f"{path}: corrupt GGUF header at {where}: invalid UTF-8") from None
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise JobError(f"{path}: general.alignment {alignment!r} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, ne, type_id, offset in entries:
        if name in tensors:
            raise JobError(f"{path}: corrupt GGUF header (tensor {name!r} appears twice)")
        tensors[name] = _tensor_info(path, size, data_start, alignment, name, ne, type_id, offset)
    return GgufHeader(version, alignment, metadata, tensors)


def _tensor_info(
    path: Path,
    size: int,
    data_start: int,
    alignment: int,
    name: str,
    ne: tuple[int, ...],
    type_id: int,
    offset: int,
) -> TensorInfo:
    """One tensor's info, its type known and its bytes inside the file."""
    # imported here: the gguf package (and the yaml it pulls in) costs every rank of every
    # launch ~30 ms, and only GGUF models need it
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise JobError(
            f"{path}: tensor {name!r} has unknown ggml type id {type_id} "
            "(newer than the installed gguf package?)"
        ) from None
    per_block, block_bytes = GGML_QUANT_SIZES[qtype]
    shape = tuple(reversed(ne))
    if ne[0] % per_block:
        raise JobError(
            f"{path}: tensor {name!r} ({qtype.name}, shape {shape}) has rows of {ne[0]} "
            f"values, not a multiple of its {per_block}-value blocks"
        )
    n_elems = 1
    for n in ne:
        n_elems *= n
    nbytes = n_elems // per_block * block_bytes
    if offset % alignment:
        raise JobError(
            f"{path}: tensor {name!r} offset {offset} is not a multiple of the "
            f"file's {alignment}-byte alignment"
        )
    begin = data_start + offset
    if begin + nbytes > size:
        raise JobError(
            f"{path}: tensor {name!r} ({qtype.name}, shape {shape}) bytes "
            f"[{begin}, {begin + nbytes}) do not fit in a {size}-byte file"
        )
    return TensorInfo(qtype.name, shape, begin, begin + nbytes)
