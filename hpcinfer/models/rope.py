"""Rotary position embeddings: each scaling variant one small function from the settings
to inverse frequencies, chosen from a dict (as transformers' modeling_rope_utils).

config.json says it two ways: transformers < 5 writes `rope_theta` and `rope_scaling`
({"type" or "rope_type": ..., "factor": ...} or null); transformers 5 writes
`rope_parameters` ({"rope_type", "rope_theta", ...}). Both read into one `Rope`.

    default   theta_i = base^(-2i/d)
    linear    theta_i / factor
    dynamic   NTK: base grows with the text's length n beyond max_position_embeddings m:
              base * (factor * n / m - (factor - 1))^(d / (d - 2)); per text, from its own
              length (transformers computes it from the longest length its module has seen
              so far, so its numbers depend on call order; alone in a fresh model they agree)
    llama3    low frequencies / factor, high ones kept, the band between smoothed
    yarn      interpolated and extrapolated frequencies blended over a ramp; cos and sin
              scaled by the attention factor

Rotation as Hugging Face's checkpoints expect ("rotate half"): dimension j pairs with
j + d/2. GGUF files of llama store Q and K so that llama.cpp can rotate adjacent pairs;
their loader un-permutes them (hpcinfer.io.gguf_file.unpermute_rows), so one rotation
serves both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError


@dataclass(frozen=True)
class Rope:
    kind: str  # a key of INVERSE_FREQUENCIES
    theta: float  # the base
    dim: int  # rotated dimensions per head (= head_dim)
    max_positions: int  # config.json's max_position_embeddings
    factor: float = 1.0
    original: int = 0  # original_max_position_embeddings (llama3, yarn)
    extra: tuple[tuple[str, float], ...] = field(default=())  # the variant's other settings

    def get(self, key: str, default: float) -> float:
        return dict(self.extra).get(key, default)

    @property
    def max_length(self) -> int:
        """Tokens a text may have: dynamic scaling exists to go `factor` times beyond."""
        if self.kind == "dynamic":
            return int(self.max_positions * self.factor)
        return self.max_positions


def _plain(rope: Rope) -> np.ndarray:
    return 1.0 / rope.theta ** (np.arange(0, rope.dim, 2, dtype=np.float64) / rope.dim)


def _linear(rope: Rope) -> np.ndarray:
    return _plain(rope) / rope.factor


def _llama3(rope: Rope) -> np.ndarray:
    inv = _plain(rope)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    low_wavelen, high_wavelen = rope.original / low, rope.original / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (rope.original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


def _yarn(rope: Rope) -> np.ndarray:
    d, base = rope.dim, rope.theta
    fast, slow = rope.get("beta_fast", 32.0), rope.get("beta_slow", 1.0)

    def correction_dim(rotations: float) -> float:
        return d * math.log(rope.original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(fast), correction_dim(slow)
    if rope.get("truncate", 1.0):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # the share of the extrapolated (unscaled) frequency
    plain = _plain(rope)
    return plain / rope.factor * (1 - keep) + plain * keep


INVERSE_FREQUENCIES: dict[str, Callable[[Rope], np.ndarray]] = {
    "default": _plain,
    "linear": _linear,
    "dynamic": _plain,  # at lengths up to max_position_embeddings; longer: `dynamic_inverse`
    "llama3": _llama3,
    "yarn": _yarn,
}


def inverse_frequencies(rope: Rope) -> np.ndarray:
    """theta_i for i < dim/2 (float64), as the variant computes them at start-up."""
    return INVERSE_FREQUENCIES[rope.kind](rope)


def attention_factor(rope: Rope) -> float:
    """What cos and sin are multiplied by (YaRN's attention scaling; 1 elsewhere)."""
    if rope.kind != "yarn":
        return 1.0
    if "attention_factor" in dict(rope.extra):
        return rope.get("attention_factor", 1.0)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m, m_all = rope.get("mscale", 0.0), rope.get("mscale_all_dim", 0.0)
    if m and m_all:
        return mscale(rope.factor, m) / mscale(rope.factor, m_all)
    return mscale(rope.factor)


def dynamic_inverse(rope: Rope, lengths: Any, xp: Any, dtype: Any) -> Any:
    """Inverse frequencies (..., dim/2) of dynamic NTK scaling, from the number of tokens
    of each token's sequence (...): the plain ones up to max_position_embeddings."""
    m = rope.max_positions
    n = xp.maximum(lengths.astype(dtype), m)
    base = rope.theta * (rope.factor * n / m - (rope.factor - 1)) ** (rope.dim / (rope.dim - 2))
    exponents = xp.asarray(np.arange(0, rope.dim, 2) / rope.dim, dtype=dtype)
    return xp.exp(-exponents * xp.log(base)[..., None])


def cos_sin(inv_freq: Any, positions: Any, scale: float, xp: Any) -> tuple[Any, Any]:
    """cos and sin of position x theta_i at each token's position (R, L) in its sequence,
    each (R, 1, L, dim/2) (one for all heads); inv_freq (dim/2,) or per token
    (R, L, dim/2)."""
    angles = (positions.astype(inv_freq.dtype)[..., None] * inv_freq)[:, None]
    cos, sin = xp.cos(angles), xp.sin(angles)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos, sin


def rotate(x: Any, cos: Any, sin: Any, xp: Any) -> Any:
    """x (B, h, L, d) rotated: dimension j < d/2 pairs with j + d/2 ("rotate half")."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return xp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ---- config.json -> Rope ----

_NUMBERS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"),
}


def rope_from_config(config: dict[str, Any], head_dim: int, where: Path) -> Rope:
    """The rotary settings of a config.json in either style; a variant hpcinfer does not
    compute (longrope, per-layer-type parameters, partial rotation) is a JobError."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise JobError(f"{where}: rope_parameters / rope_scaling must be an object")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise JobError(f"{where}: rope parameters per layer type are not supported")
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in INVERSE_FREQUENCIES:
        raise JobError(
            f"{where}: rope type {kind!r} is not supported "
            f"(supported: {', '.join(INVERSE_FREQUENCIES)})"
        )
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise JobError(f"{where}: partial_rotary_factor {partial} is not supported (only 1.0)")
    try:
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        max_positions = int(config.get("max_position_embeddings", 2048))
        original = int(params.get("original_max_position_embeddings") or max_positions)
        factor = params.get("factor", 1.0)
        if kind == "yarn" and factor is None:
            factor = max_positions / original
        factor = float(factor)
        extra = tuple(
            (k, float(params[k]))
            for k in _NUMBERS.get(kind, ())
            if k != "factor" and params.get(k) is not None
        )
        if kind == "yarn" and "truncate" in params:
            extra += (("truncate", float(bool(params["truncate"]))),)
    except (TypeError, ValueError) as e:
        raise JobError(f"{where}: invalid rope setting ({e})") from None
    if kind != "default" and "factor" not in params:
        raise JobError(f"{where}: rope type {kind!r} needs a factor")
    if head_dim % 2:
        raise JobError(f"{where}: head_dim {head_dim} is odd; rotary embeddings need pairs")
    if kind == "dynamic" and factor < 1:
        raise JobError(f"{where}: dynamic rope factor {factor} is below 1")
    return Rope(kind, theta, head_dim, max_positions, factor, original, extra)
