"""Tensor parallelism end to end: every DP x TP layout gives the serial logits."""

from __future__ import annotations

import importlib.util
import json

import h5py
import numpy as np
import pytest

from hpcinfer.backends import get_backend
from hpcinfer.models import load_model
from tests.conftest import DATA, ROOT, fast_and_slow, hpcinfer, write_job
from tests.test_mlp import make_mlp

pytestmark = pytest.mark.mpi

LAYOUTS = [(1, 1), (2, 2), (4, 2), (4, 4), (3, 3), (4, 1)]  # (ranks, tp)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    # Widths not divisible by 2, 3 or 4; logits (identity output) compare strictly.
    make_mlp(root / "pairs", [64, 50, 30, 23, 10], "relu", "identity")
    # Odd layer count: the last layer is column-parallel and gathered, 1 column over tp ranks.
    make_mlp(root / "odd", [64, 50, 30, 1], "tanh", "identity")
    make_mlp(root / "narrow", [64, 3, 5, 2], "relu", "softmax")
    return root


def run_layout(root, model, ranks, tp, backend="numpy", extra=(), tag="", env=None):
    out = root / f"{model}-{backend}-{ranks}x{tp}{tag}.h5"
    job = write_job(
        root / f"{model}.toml",
        model={"path": str(root / model)},
        input={"path": str(DATA / "digits.h5"), "dataset": "x"},
        output={"path": str(out)},
        run={"batch_size": 64, "chunk_size": 200},
    )
    p = hpcinfer(
        "run",
        str(job),
        "--tp",
        str(tp),
        "--backend",
        backend,
        *extra,
        n=ranks,
        env=env,
        timeout=120,
    )
    return p, out


def logits(path):
    with h5py.File(path, "r") as f:
        return f["outputs"][:], dict(f.attrs)


def assert_same_logits(got, ref):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.fixture(scope="module")
def reference(models):
    """Each model's logits computed here, serially (no launch)."""
    with h5py.File(DATA / "digits.h5", "r") as f:
        x = f["x"][:]
    refs = {}
    for model in ("pairs", "odd"):
        mlp = load_model(models / model, get_backend("numpy", "float32"), "float32")
        refs[model] = np.concatenate(
            [mlp.predict(x[i : i + 64])["outputs"] for i in range(0, len(x), 64)]
        )
    return refs


@pytest.mark.parametrize(
    ("ranks", "tp", "backend"),
    fast_and_slow(
        [(n, t, b) for b in ("numpy", "jax") for n, t in LAYOUTS],
        # tp 1, 2 and 3 over the whole launch also run in tests/mpi (one launch for all)
        {(1, 1, "numpy"), (4, 2, "numpy"), (2, 2, "jax")},
        ids=lambda x: "n{}-tp{}-{}".format(*x),
    ),
)
def test_every_layout_gives_the_serial_logits(models, reference, ranks, tp, backend):
    p, out = run_layout(models, "pairs", ranks, tp, backend)
    assert p.returncode == 0, p.stderr
    got, attrs = logits(out)
    assert_same_logits(got, reference["pairs"])
    layout = json.loads(attrs["layout"])
    assert (layout["ranks"], layout["tp"], layout["dp"]) == (ranks, tp, ranks // tp)
    metrics = json.loads(attrs["rank_metrics"])
    assert [m["rank"] for m in metrics] == list(range(ranks))
    if tp > 1 and layout["tp_comm"] != "mpi4jax":  # (inside jax.jit: not counted)
        assert all(m["collective_calls"] > 0 for m in metrics)


HAVE_MPI4JAX = importlib.util.find_spec("mpi4jax") is not None


@pytest.mark.parametrize(
    "tp_comm",
    [
        "host",
        pytest.param(
            "mpi4jax", marks=pytest.mark.skipif(not HAVE_MPI4JAX, reason="mpi4jax not installed")
        ),
    ],
)
@pytest.mark.slow  # the host path at n2-tp2 is test_every_layout_gives_the_serial_logits's
@pytest.mark.parametrize(("ranks", "tp"), [(2, 2), (3, 3)])
def test_jax_collective_paths(models, reference, ranks, tp, tp_comm):
    p, out = run_layout(models, "pairs", ranks, tp, "jax", ["--set", f"run.tp_comm='{tp_comm}'"])
    assert p.returncode == 0, p.stderr
    assert_same_logits(logits(out)[0], reference["pairs"])
    p, out = run_layout(models, "odd", ranks, tp, "jax", ["--set", f"run.tp_comm='{tp_comm}'"])
    assert p.returncode == 0, p.stderr
    assert_same_logits(logits(out)[0], reference["odd"])


@pytest.mark.slow  # tp 3 over 3 ranks runs fast in tests/mpi/test_parallel_mpi.py
@pytest.mark.parametrize(("ranks", "tp"), [(2, 2), (3, 3), (4, 4)])
def test_odd_last_layer_is_gathered_even_with_empty_shards(models, reference, ranks, tp):
    p, out = run_layout(models, "odd", ranks, tp)
    assert p.returncode == 0, p.stderr
    assert_same_logits(logits(out)[0], reference["odd"])


@pytest.mark.slow  # also fast in tests/mpi/test_parallel_mpi.py (a layout run twice)
def test_same_layout_is_bitwise_reproducible(models):
    runs = []
    for _ in range(2):
        p, out = run_layout(models, "pairs", 4, 2)
        assert p.returncode == 0, p.stderr
        runs.append(logits(out)[0].tobytes())
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("model", "ranks", "tp", "expected"),
    [
        ("pairs", 3, 2, "run.tp = 2 does not divide the 3 rank(s)"),
        ("narrow", 4, 4, "run.tp = 4 is larger than layer 0's 3 outputs"),
        ("pairs", 2, 0, "run.tp must be >= 1"),
        ("pairs", 2, 2, "run.tp_comm = 'nccl' is not available with backend 'numpy'"),
    ],
)
def test_a_wrong_tp_is_one_line_and_exit_2(models, model, ranks, tp, expected):
    extra = ["--set", "run.tp_comm='nccl'"] if "nccl" in expected else []
    p, out = run_layout(models, model, ranks, tp, extra=extra, tag="-refused")
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpcinfer: error:"), p.stderr
    assert expected in lines[0]
    assert not out.exists()


FAKE_GPU = {"PYTHONPATH": str(ROOT / "tests" / "fake_gpu")}


@pytest.mark.parametrize("tp_comm", fast_and_slow(["host", "mpi"], {"mpi"}))
def test_cupy_code_path_on_a_numpy_stand_in(models, reference, tp_comm):
    """The CuPy backend and collectives, run on tests/fake_gpu's numpy stand-in for CuPy."""
    for model in ("pairs", "odd"):
        p, out = run_layout(
            models,
            model,
            2,
            2,
            "cupy",
            ["--set", f"run.tp_comm='{tp_comm}'"],
            tag=f"-fake-{tp_comm}",
            env=FAKE_GPU,
        )
        assert p.returncode == 0, p.stderr
        assert_same_logits(logits(out)[0], reference[model])
