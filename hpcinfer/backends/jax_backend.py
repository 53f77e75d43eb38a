"""jax: the forward pass is jit-compiled by XLA (CPU here; GPU where jaxlib has CUDA).

XLA compiles once per input shape: batches within a chunk share one shape, so a run
compiles a handful of times at most (full batch, last batch of a chunk, last chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcinfer.backends.layers import loop_layers
from hpcinfer.errors import JobError


@dataclass(frozen=True)
class JaxBackend:
    dtype: np.dtype
    jax: Any
    xp: Any
    name: str = "jax"

    def asarray(self, host: np.ndarray) -> Any:
        return self.jax.device_put(np.ascontiguousarray(host, dtype=self.dtype))

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def erf(self, x: Any) -> Any:
        return self.jax.scipy.special.erf(x)

    def asarray_int(self, host: np.ndarray) -> Any:
        return self.jax.device_put(np.ascontiguousarray(host))

    def scan_layers(self, fn: Any, x: Any, stacked: dict) -> Any:
        """lax.scan over the leading (layer) axis of `stacked`; eagerly a Python loop
        (collectives that cannot be traced need concrete arrays)."""
        if isinstance(x, self.jax.core.Tracer):
            return self.jax.lax.scan(lambda c, p: (fn(c, p), None), x, stacked)[0]
        return loop_layers(fn, x, stacked)

    def jit(self, fn: Any) -> Any:
        return self.jax.jit(fn)


def create(dtype: str, local_rank: int = 0) -> JaxBackend:
    try:
        import jax
        import jax.numpy as jnp
        import jax.scipy.special
    except ImportError as e:
        raise JobError(f"backend 'jax' needs JAX: pip install jax ({e})") from None
    # float64 is off by default in JAX; without this, float64 jobs silently run in float32.
    jax.config.update("jax_enable_x64", dtype == "float64")
    return JaxBackend(dtype=np.dtype(dtype), jax=jax, xp=jnp)
