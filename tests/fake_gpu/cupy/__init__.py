"""A numpy stand-in for CuPy, so CPU-only CI runs hpcinfer's CuPy code path.

Put tests/fake_gpu on PYTHONPATH and `import cupy` gets this: "device" arrays are a numpy
subclass, transfers are copies, the one "GPU" is always there. It checks hpcinfer's
plumbing (device selection, host staging, CUDA-aware MPI hand-off), not CUDA: the real
check is benchmarks/gpu_check.py on a machine with a GPU. NCCL is not imitated.
"""

from __future__ import annotations

import numpy as _np

FAKE = True


class ndarray(_np.ndarray):
    """An array that "lives on the device"."""


def asarray(a, dtype=None):
    return _np.array(a, dtype=dtype, copy=True).view(ndarray)


def ascontiguousarray(a):
    return _np.ascontiguousarray(a).view(ndarray)


def asnumpy(a):
    return _np.array(a, copy=True).view(_np.ndarray)


def __getattr__(name):  # cupy.maximum, cupy.tanh, cupy.exp, ... as in numpy
    return getattr(_np, name)


class _Runtime:
    class CUDARuntimeError(RuntimeError):
        pass

    @staticmethod
    def getDeviceCount():
        return 1


class _Stream:
    ptr = 0

    def synchronize(self):
        pass


class _Device:
    def __init__(self, index):
        self.index = index

    def use(self):
        pass


class cuda:
    runtime = _Runtime
    Device = _Device

    @staticmethod
    def get_current_stream():
        return _Stream()
