"""Array backends: numpy (the CPU reference), jax (jit-compiled), cupy (GPU).

A backend is a small object: its array namespace `xp`, host<->device transfer, and a
`jit` wrapper. Models are written once against `xp`; the GPU path shares that code with
the CPU path so CPU-only CI covers most of it. Backends are imported only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from hpcinfer.errors import JobError


class Backend(Protocol):
    name: str
    xp: Any  # the array namespace: numpy, jax.numpy or cupy

    def asarray(self, host: Any) -> Any:
        """Host numpy array -> backend array (in the compute dtype)."""

    def to_host(self, array: Any) -> Any:
        """Backend array -> host numpy array."""

    def asarray_int(self, host: Any) -> Any:
        """Host integer array (token ids, masks) -> backend array, dtype kept."""

    def erf(self, x: Any) -> Any:
        """The error function (exact GELU)."""

    def segment_sum(self, x: Any, ids: Any, n: int) -> Any:
        """out[s] = sum of the rows x[t] with ids[t] == s, for s < n (ids >= n: dropped)."""

    def segment_max(self, x: Any, ids: Any, n: int) -> Any:
        """out[s] = elementwise max of the rows x[t] with ids[t] == s (ids >= n: dropped)."""

    def scan_layers(self, fn: Any, x: Any, stacked: dict) -> Any:
        """x = fn(x, layer_i) for each layer_i of `stacked` (tensors stacked on axis 0)."""

    def jit(self, fn: Any) -> Any:
        """Compile `fn(params, x)` where the backend can; identity elsewhere."""


_MODULES = {
    "numpy": "hpcinfer.backends.numpy_backend",
    "jax": "hpcinfer.backends.jax_backend",
    "cupy": "hpcinfer.backends.cupy_backend",
}


def compile_forward(backend: Backend, tp: Any, forward: Any) -> Any:
    """`forward` jit-compiled where the backend can and the TP collectives can be traced
    (host-staged collectives need concrete arrays: the forward then runs op by op)."""
    return backend.jit(forward) if tp.traceable else forward


def get_backend(name: str, dtype: str, local_rank: int = 0) -> Backend:
    """Build the named backend; JobError (exit 2) when it cannot run here."""
    if name not in _MODULES:
        raise JobError(f"unknown backend {name!r} (known: {', '.join(_MODULES)})")
    module = importlib.import_module(_MODULES[name])
    return module.create(dtype=dtype, local_rank=local_rank)
