"""Dequantizers for the ggml tensor types a GGUF file stores: bytes of whole rows in,
values out.

Quantized blocks (32 or 256 values) run along a matrix's columns, so each row is whole
blocks and any run of rows decodes on its own. The `gguf` package supplies the type table
and most dequantizers; Q4_0, Q4_1 and Q8_0 (SmolLM2's types) are this module's own numpy,
about twice as fast and bit-identical (the tests check), and so is Q8_K, which gguf cannot
dequantize.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import bf16_to_f32

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


def decoder(path: Path, name: str, dtype: str) -> Callable[[np.ndarray], np.ndarray]:
    """(m, row_bytes) uint8 -> (m, row_elems) values, for a stored ggml type; a type this
    module cannot dequantize is a JobError naming the file and the tensor."""
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
