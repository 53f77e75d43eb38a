"""A GGUF reader that dequantizes only the slices asked for, with the surface of
`SafetensorsFile` (`tensors`, `info`, `read`, `read_transposed`) plus typed metadata.

Format (llama.cpp's GGUF, versions 2 and 3, little-endian): magic "GGUF", version, tensor
and key counts, key/value metadata (typed scalars, strings, arrays), one info record per
tensor (name, dims `ne` innermost first, ggml type, offset), padding to `general.alignment`,
then the tensor data. A tensor's Hugging Face shape is `ne` reversed: a (rows, cols) matrix
has ne = [cols, rows], and quantized blocks (32 or 256 values) run along the columns, so
each row is whole blocks. A row slice therefore reads and dequantizes only those rows'
bytes; a column slice dequantizes the block-aligned column range of a few MiB of rows at a
time and cuts. Nothing holds more than the result plus one such block.

The header is parsed here rather than by `gguf.GGUFReader`, which walks arrays element by
element with no bound (a corrupt array length spins instead of failing), reports damage
as bare ValueError/IndexError, and takes ~2 s for SmolLM2's 100k-string vocabulary
(here 0.12-0.2 s). Every length and count is checked against the file's size before anything
is allocated. The `gguf` package supplies the type table and most dequantizers; Q4_0,
Q4_1 and Q8_0 (SmolLM2's types) are this module's own numpy, about twice as fast and
bit-identical (the tests check), and so is Q8_K, which gguf cannot dequantize. Data is
read with plain reads, not a memory map, so a file truncated under a running job is a
JobError, not a SIGBUS.

Llama's Q/K rows: llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`)
stores q_proj and k_proj with the rows of each head reordered from Hugging Face's
"first half, second half" rotary layout to llama.cpp's interleaved pairs:
`w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)` (k_proj with the KV head
count). This reader returns the bytes as stored; the model loader undoes the permutation
with `unpermute_rows`, on the full row set of a head group (a TP shard of whole heads
can be unpermuted on its own, since the permutation never crosses heads).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from hpcinfer.errors import JobError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # nested metadata arrays; deeper is damage, not data
DECODE_BLOCK_BYTES = 4 * 2**20  # float32 output produced per dequantization step
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

# Stored types that read as plain arrays (block size 1): ggml name -> numpy dtype
_PLAIN_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
# Block-quantized types this reader dequantizes (all through `gguf` except Q8_K)
QUANTIZED_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K")
QUANTIZED_TYPES += ("Q6_K", "Q8_K")
SUPPORTED_TYPES = (*_PLAIN_DTYPES, *QUANTIZED_TYPES)

T = TypeVar("T")
_MISSING: Any = object()


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
        return GGML_QUANT_SIZES[GGMLQuantizationType[self.dtype]]


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (as uint16) -> float32: they are the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: GGUF rows -> Hugging Face rows.

    The converter's `permute` maps HF rows (per head: the first half of the rotary
    dimensions, then the second half) to interleaved pairs:
        w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
    This is its inverse. Pass the query head count for attn_q and the KV head count for
    attn_k. Works on matrices (rows, cols) and on 1-D biases (rows,).
    """
    rows = w.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"unpermute_rows: {rows} rows do not split into {n_head} heads of pairs")
    half = rows // n_head // 2
    # (n_head, half, 2, ...) -> (n_head, 2, half, ...): pairs back to halves
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GgufFile:
    """Header and metadata of a .gguf file, and reads of (slices of) its tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header = _read_header(self.path)
        self.version: int = header.version
        self.alignment: int = header.alignment
        self.metadata: dict[str, Any] = header.metadata
        self.tensors: dict[str, TensorInfo] = header.tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __repr__(self) -> str:
        return f"GgufFile({str(self.path)!r}: {len(self.tensors)} tensors, v{self.version})"

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise JobError(f"{self.path}: tensor {name!r} not found")
        return self.tensors[name]

    # ---- typed metadata: a model loader builds its config from these ----

    def get(self, key: str, kind: type[T], default: Any = _MISSING) -> T:
        """Metadata `key` as `kind` (int, float, str, bool or list); a missing key is
        `default` if given, else a JobError naming the file and the key, as is a value
        of another type (an int is accepted as a float, a bool is never an int)."""
        if key not in self.metadata:
            if default is not _MISSING:
                return default
            raise JobError(f"{self.path}: metadata key {key!r} is missing")
        value = self.metadata[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            held = (
                f"a list of {len(value)} items"
                if isinstance(value, list)
                else f"{type(value).__name__} {value!r}"[:80]
            )
            raise JobError(
                f"{self.path}: metadata key {key!r} holds {held}, expected {kind.__name__}"
            )
        return value

    def meta_int(self, key: str, default: Any = _MISSING) -> int:
        return self.get(key, int, default)

    def meta_float(self, key: str, default: Any = _MISSING) -> float:
        return self.get(key, float, default)

    def meta_str(self, key: str, default: Any = _MISSING) -> str:
        return self.get(key, str, default)

    def meta_bool(self, key: str, default: Any = _MISSING) -> bool:
        return self.get(key, bool, default)

    def meta_list(self, key: str, default: Any = _MISSING) -> list:
        return self.get(key, list, default)

    # ---- tensors ----

    def read(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: np.dtype | str = "float32",
    ) -> np.ndarray:
        """Tensor `name`[rows, cols] (cols only for 2-D) dequantized to `dtype`.

        Only the bytes of the rows asked for are read; the work happens a few MiB at a
        time straight into the result.
        """
        info = self.info(name)
        decode = _decoder(self.path, name, info.dtype)
        shape = info.shape
        r0, r1, rstep = rows.indices(shape[0])
        if rstep != 1:
            raise ValueError("row slices must be contiguous")
        n_rows = max(0, r1 - r0)
        full_cols = len(shape) < 2 or cols.indices(shape[1]) == (0, shape[1], 1)
        if not full_cols and len(shape) != 2:
            raise ValueError("column slices are supported for 2-D tensors only")
        per_block, block_bytes = info.block
        row_elems = int(np.prod(shape[1:], dtype=np.int64))
        row_bytes = row_elems // per_block * block_bytes
        if full_cols:
            c0, c1 = 0, row_elems
            b0, b1 = 0, row_elems  # the column range decoded: whole blocks
        else:
            c0, c1, cstep = cols.indices(shape[1])
            if cstep != 1:
                raise ValueError("column slices must be contiguous")
            c1 = max(c0, c1)
            b0 = c0 // per_block * per_block
            b1 = -(-c1 // per_block) * per_block
        out = np.empty((n_rows, c1 - c0), dtype=dtype)
        step = max(1, DECODE_BLOCK_BYTES // max(1, 4 * row_elems))
        with self.path.open("rb") as f:
            for i in range(0, n_rows if c1 > c0 else 0, step):
                m = min(step, n_rows - i)
                raw = _pread(f, info.begin + (r0 + i) * row_bytes, m * row_bytes, name)
                raw = raw.reshape(m, row_bytes)
                if b0 or b1 != row_elems:
                    lo, hi = b0 // per_block * block_bytes, b1 // per_block * block_bytes
                    raw = np.ascontiguousarray(raw[:, lo:hi])
                values = decode(raw)  # (m, b1 - b0) float32 (or ints for I* types)
                out[i : i + m] = values[:, c0 - b0 : c1 - b0]
        return out.reshape((n_rows, *shape[1:])) if full_cols else out

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
        block = max(1, DECODE_BLOCK_BYTES // max(1, 4 * info.shape[1]))
        for i in range(0, n_rows, block):
            m = min(block, n_rows - i)
            part = self.read(name, rows=slice(r0 + i, r0 + i + m), cols=slice(c0, c1))
            out[:, i : i + m] = part.T
        return out


# ---- dequantization ----


def _decoder(path: Path, name: str, dtype: str):
    """(m, row_bytes) uint8 -> (m, row_elems) values, for a stored ggml type."""
    if dtype in _PLAIN_DTYPES:
        stored = _PLAIN_DTYPES[dtype]
        if dtype == "BF16":
            return lambda raw: bf16_to_f32(raw.view(stored))
        return lambda raw: raw.view(stored)
    if dtype in _OWN_DEQUANTIZERS:
        return _OWN_DEQUANTIZERS[dtype]
    if dtype in QUANTIZED_TYPES:
        qtype = GGMLQuantizationType[dtype]
        return lambda raw: gguf_dequantize(raw, qtype)
    raise JobError(
        f"{path}: tensor {name!r} has type {dtype}, which hpcinfer cannot dequantize "
        f"(supported: {', '.join(SUPPORTED_TYPES)})"
    )


# Own numpy for the types of common files (SmolLM2's Q4_1/Q8_0): ~2x the speed of
# gguf's, bit-identical to it (the test checks); Q8_K because gguf has none.


def _f16(blocks: np.ndarray, at: int, n: int = 1) -> np.ndarray:
    """n float16 fields at byte `at` of each block -> (n_blocks, n) float32."""
    return blocks[:, at : at + 2 * n].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray, dtype: type) -> np.ndarray:
    """(n, 16) packed bytes -> (n, 32): low nibbles are values 0-15, high ones 16-31."""
    q = np.empty((qs.shape[0], 2 * qs.shape[1]), dtype)
    np.bitwise_and(qs, 0x0F, out=q[:, : qs.shape[1]].view(np.uint8))
    np.right_shift(qs, 4, out=q[:, qs.shape[1] :].view(np.uint8))
    return q


def _dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """block_q4_0 = {f16 d; u8 qs[16]} -> d * (q - 8)."""
    blocks = raw.reshape(-1, 18)
    q = _nibbles(blocks[:, 2:], np.int8)
    q -= 8
    return (_f16(blocks, 0) * q).reshape(raw.shape[0], -1)


def _dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """block_q4_1 = {f16 d; f16 m; u8 qs[16]} -> d * q + m."""
    blocks = raw.reshape(-1, 20)
    dm = _f16(blocks, 0, 2)
    return (dm[:, :1] * _nibbles(blocks[:, 4:], np.uint8) + dm[:, 1:]).reshape(raw.shape[0], -1)


def _dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """block_q8_0 = {f16 d; i8 qs[32]} -> d * q."""
    blocks = raw.reshape(-1, 34)
    return (_f16(blocks, 0) * blocks[:, 2:].view(np.int8)).reshape(raw.shape[0], -1)


def _dequantize_q8_k(raw: np.ndarray) -> np.ndarray:
    """block_q8_K = {f32 d; i8 qs[256]; i16 bsums[16]} -> d * q."""
    blocks = raw.reshape(-1, 292)
    d = blocks[:, :4].copy().view("<f4")
    return (d * blocks[:, 4:260].view(np.int8)).reshape(raw.shape[0], -1)


_OWN_DEQUANTIZERS = {
    "Q4_0": _dequantize_q4_0,
    "Q4_1": _dequantize_q4_1,
    "Q8_0": _dequantize_q8_0,
    "Q8_K": _dequantize_q8_k,
}


# ---- raw reads ----


def _pread(f, offset: int, nbytes: int, name: str) -> np.ndarray:
    buf = bytearray(nbytes)
    f.seek(offset)
    if f.readinto(buf) != nbytes:
        raise JobError(
            f"{f.name}: tensor {name!r} truncated (wanted {nbytes} bytes at offset {offset})"
        )
    return np.frombuffer(buf, dtype=np.uint8)


# ---- the header ----


@dataclass(frozen=True)
class _Header:
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


def _read_header(path: Path) -> _Header:
    if not path.is_file():
        raise JobError(f"{path}: file not found")
    size = os.path.getsize(path)
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
    return _Header(version, alignment, metadata, tensors)


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
