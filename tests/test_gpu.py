"""The CuPy backend on a real GPU against the numpy reference (skipped without one).

CI has no GPU: tests/test_tp_mpi.py runs the same CuPy code path on a numpy stand-in.
On a GPU machine: `python -m pytest -m gpu` (and benchmarks/gpu_check.py for speed).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.conftest import hpcinfer

pytestmark = [pytest.mark.gpu, pytest.mark.mpi]


def gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 (no CuPy, no driver, no device: no GPU here)
        return 0


@pytest.mark.skipif(gpu_count() == 0, reason="no GPU (CuPy with a CUDA device) here")
@pytest.mark.parametrize(("ranks", "tp"), [(1, 1), (2, 2)])
def test_cupy_matches_numpy_on_the_digits_job(tmp_path, digits_job, ranks, tp):
    outputs = {}
    for backend, n, t in (("numpy", 1, 1), ("cupy", ranks, tp)):
        out = tmp_path / f"{backend}.h5"
        p = hpcinfer(
            "run", str(digits_job()), "--backend", backend, "--tp", str(t),
            "--set", f"output.path='{out}'", n=n, timeout=300,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        with h5py.File(out, "r") as f:
            outputs[backend] = f["outputs"][:]
    np.testing.assert_allclose(outputs["cupy"], outputs["numpy"], rtol=1e-4, atol=1e-6)
