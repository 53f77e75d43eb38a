"""Transformer math shared by BERT and GPT-2: pure functions of arrays in the backend's
namespace `xp`. Nothing here communicates or reads files."""

from __future__ import annotations

import math
from typing import Any

# Python floats, not numpy scalars: under numpy 2's promotion rules (NEP 50) a float64
# numpy scalar turns a float32 array into float64, and every GEMM after it with it.
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
SQRT_HALF = math.sqrt(0.5)


def contiguous(t: Any, xp: Any) -> Any:
    """A C-contiguous copy where arrays have layouts (numpy, cupy); JAX decides its own."""
    return xp.ascontiguousarray(t) if hasattr(xp, "ascontiguousarray") else t


def layer_norm(x: Any, w: Any, b: Any, eps: float, xp: Any) -> Any:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / xp.sqrt(var + eps) * w + b


def gelu_tanh(x: Any, xp: Any) -> Any:
    """GPT-2's GELU ("gelu_new"): the tanh approximation."""
    return 0.5 * x * (1.0 + xp.tanh(SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))))


def gelu_erf(x: Any, erf: Any) -> Any:
    """BERT's GELU: exact, through the error function."""
    return 0.5 * x * (1.0 + erf(x * SQRT_HALF))


def segment_bias(segments: Any, dtype: Any, xp: Any, causal: bool) -> Any:
    """The additive attention mask of a packed batch, (R, 1, L, L): 0 where a key is in
    the query's own sequence (and, when `causal`, not after it), -1e9 elsewhere."""
    visible = segments[:, :, None] == segments[:, None, :]  # the same sequence
    if causal:
        seq = segments.shape[1]
        visible = visible & xp.tril(xp.ones((seq, seq), dtype=bool))  # query i: keys 0..i
    return xp.where(visible, 0.0, -1e9).astype(dtype)[:, None]


def next_of_same_sequence(segments: Any, slots: int) -> Any:
    """(R, L-1) bool: token t+1 continues token t's sequence (a decoder's scored terms;
    padding, whose segment is `slots`, never does)."""
    nxt = segments[:, 1:]
    return (nxt == segments[:, :-1]) & (nxt < slots)


def split_heads(t: Any, head_dim: int, xp: Any) -> Any:
    """(B, L, h*d) -> (B, h, L, d), contiguous: numpy's stacked matmul calls BLAS only on
    contiguous operands (a strided view falls back to a slow loop)."""
    batch, seq = t.shape[:2]
    return contiguous(t.reshape(batch, seq, -1, head_dim).transpose(0, 2, 1, 3), xp)


def attention(q: Any, k: Any, v: Any, bias: Any, scale: Any, xp: Any) -> Any:
    """Softmax attention of this rank's heads. q, k, v (B, h, L, d); `bias` broadcasts to
    the scores (B, h, L, L): 0 where a query may look, -1e9 where not (finite, so a row
    with nothing to look at stays finite). Returns the context, (B, L, h*d)."""
    batch, _, seq, _ = q.shape
    k_t = contiguous(k.transpose(0, 1, 3, 2), xp)  # (B, h, d, L)
    scores = q @ k_t * scale + bias
    scores = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
