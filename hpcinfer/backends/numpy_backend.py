"""numpy: the CPU reference backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcinfer.backends.layers import loop_layers


@dataclass(frozen=True)
class NumpyBackend:
    dtype: np.dtype
    name: str = "numpy"
    xp: Any = np

    def asarray(self, host: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(host, dtype=self.dtype)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def erf(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import erf

        return erf(x)

    def asarray_int(self, host: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(host)

    def segment_sum(self, x: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
        keep = ids < n
        out = np.zeros((n, *x.shape[1:]), dtype=x.dtype)
        np.add.at(out, ids[keep], x[keep])
        return out

    def segment_max(self, x: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
        keep = ids < n
        out = np.full((n, *x.shape[1:]), -np.inf, dtype=x.dtype)
        np.maximum.at(out, ids[keep], x[keep])
        return out

    def scan_layers(self, fn: Any, x: Any, stacked: dict) -> Any:
        return loop_layers(fn, x, stacked)

    def jit(self, fn: Any) -> Any:
        return fn


def create(dtype: str, local_rank: int = 0) -> NumpyBackend:
    return NumpyBackend(dtype=np.dtype(dtype))
