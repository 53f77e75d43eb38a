"""A GGUF reader that dequantizes only the slices asked for, with the surface of
`SafetensorsFile` (`tensors`, `info`, `read`, `read_transposed`) plus typed metadata.

The header is parsed and checked by `gguf_header`, the ggml types decoded by `gguf_quants`.
Quantized blocks run along a matrix's columns, so each row is whole blocks: a row slice
reads and dequantizes only those rows' bytes; a column slice dequantizes the block-aligned
column range of a few MiB of rows at a time and cuts. Nothing holds more than the result
plus one such block. Data is read with plain reads, not a memory map, so a file truncated
under a running job is a JobError, not a SIGBUS.

Llama's Q/K rows: llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`)
stores q_proj and k_proj with the rows of each head reordered from Hugging Face's
"first half, second half" rotary layout to llama.cpp's interleaved pairs:
`w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2)` (k_proj with the KV head
count). This reader returns the bytes as stored; the model loader undoes the permutation
with `unpermute_rows`, on the full row set of a head group (a TP shard of whole heads
can be unpermuted on its own, since the permutation never crosses heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import contiguous, nonfinite_count, read_into, transposed_by_rows
from hpcinfer.io.gguf_header import TensorInfo, read_header
from hpcinfer.io.gguf_quants import decoder

DECODE_BLOCK_BYTES = 4 * 2**20  # float32 output produced per dequantization step

T = TypeVar("T")
_MISSING: Any = object()


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
        header = read_header(self.path)
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
        check_finite: bool = False,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols] (cols only for 2-D) dequantized to `dtype`.

        Only the bytes of the rows asked for are read; the work happens a few MiB at a
        time straight into the result. `check_finite`: a NaN or Inf in the result is a
        JobError naming the file and tensor.
        """
        info = self.info(name)
        decode = decoder(self.path, name, info.dtype)
        shape = info.shape
        r0, r1 = contiguous(rows, shape[0], "row")
        n_rows = r1 - r0
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
            c0, c1 = contiguous(cols, shape[1], "column")
            b0 = c0 // per_block * per_block
            b1 = -(-c1 // per_block) * per_block
        out = np.empty((n_rows, c1 - c0), dtype=dtype)
        step = max(1, DECODE_BLOCK_BYTES // max(1, 4 * row_elems))
        with self.path.open("rb") as f:
            for i in range(0, n_rows if c1 > c0 else 0, step):
                m = min(step, n_rows - i)
                raw = np.empty((m, row_bytes), dtype=np.uint8)
                offset = info.begin + (r0 + i) * row_bytes
                read_into(f, self.path, name, offset, memoryview(raw).cast("B"))
                if b0 or b1 != row_elems:
                    lo, hi = b0 // per_block * block_bytes, b1 // per_block * block_bytes
                    raw = np.ascontiguousarray(raw[:, lo:hi])
                values = decode(raw)  # (m, b1 - b0) float32 (or ints for I* types)
                out[i : i + m] = values[:, c0 - b0 : c1 - b0]
        if check_finite:
            self.check_finite(name, out)
        return out.reshape((n_rows, *shape[1:])) if full_cols else out

    def check_finite(self, name: str, data: np.ndarray) -> None:
        if bad := nonfinite_count(data):
            raise JobError(
                f"{self.path}: tensor {name!r}: {bad} of {data.size} values are NaN or Inf "
                f"as {data.dtype}"
            )

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
        block = max(1, DECODE_BLOCK_BYTES // max(1, 4 * info.shape[1]))
        out = transposed_by_rows(
            lambda i, j: self.read(name, rows=slice(r0 + i, r0 + j), cols=slice(c0, c1)),
            r1 - r0,
            c1 - c0,
            dtype,
            block,
        )
        if check_finite:
            self.check_finite(name, out)
        return out
