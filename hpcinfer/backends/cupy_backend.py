"""cupy: the numpy code path on an NVIDIA GPU, one GPU per rank (local rank -> device)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcinfer.backends.layers import loop_layers
from hpcinfer.errors import JobError


@dataclass(frozen=True)
class CupyBackend:
    dtype: np.dtype
    xp: Any
    name: str = "cupy"

    def asarray(self, host: np.ndarray) -> Any:
        return self.xp.asarray(np.ascontiguousarray(host, dtype=self.dtype))

    def to_host(self, array: Any) -> np.ndarray:
        return self.xp.asnumpy(array)

    def erf(self, x: Any) -> Any:
        from cupyx.scipy.special import erf

        return erf(x)

    def asarray_int(self, host: np.ndarray) -> Any:
        return self.xp.asarray(np.ascontiguousarray(host))

    def segment_sum(self, x: Any, ids: Any, n: int) -> Any:
        from cupyx import scatter_add

        keep = ids < n
        out = self.xp.zeros((n, *x.shape[1:]), dtype=x.dtype)
        scatter_add(out, ids[keep], x[keep])
        return out

    def segment_max(self, x: Any, ids: Any, n: int) -> Any:
        from cupyx import scatter_max

        keep = ids < n
        out = self.xp.full((n, *x.shape[1:]), -self.xp.inf, dtype=x.dtype)
        scatter_max(out, ids[keep], x[keep])
        return out

    def scan_layers(self, fn: Any, x: Any, stacked: dict) -> Any:
        return loop_layers(fn, x, stacked)

    def jit(self, fn: Any) -> Any:
        return fn


def create(dtype: str, local_rank: int = 0) -> CupyBackend:
    try:
        import cupy
    except ImportError as e:
        raise JobError(
            f"backend 'cupy' needs CuPy and an NVIDIA GPU: pip install cupy-cuda12x ({e})"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise JobError(f"backend 'cupy': no usable GPU on this node ({e})") from None
    if count == 0:
        raise JobError("backend 'cupy': no GPU visible on this node (CUDA_VISIBLE_DEVICES?)")
    # With one GPU per rank, CUDA_VISIBLE_DEVICES often shows each rank just its own GPU.
    cupy.cuda.Device(local_rank % count).use()
    return CupyBackend(dtype=np.dtype(dtype), xp=cupy)
