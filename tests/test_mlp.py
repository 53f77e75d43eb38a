import importlib.util
import itertools
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from hpcinfer.backends import get_backend
from hpcinfer.errors import JobError
from hpcinfer.models import load_model
from tests.conftest import DATA


def load_data_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_mlp(folder, sizes, activation="relu", output_activation="softmax", dtype=np.float32):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "mlp",
        "layer_sizes": sizes,
        "activation": activation,
        "output_activation": output_activation,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        tensors[f"layers.{i}.weight"] = rng.standard_normal((n_out, n_in)).astype(dtype)
        tensors[f"layers.{i}.bias"] = rng.standard_normal(n_out).astype(dtype)
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def reference_forward(tensors, x, activation, output_activation):
    """Plain float64 numpy, written independently of hpcinfer.models.mlp."""
    acts = {
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "logistic": lambda z: 1 / (1 + np.exp(-z)),
        "identity": lambda z: z,
        "softmax": lambda z: (
            np.exp(z - z.max(1, keepdims=True))
            / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
        ),
    }
    n = len(tensors) // 2
    h = x.astype(np.float64)
    for i in range(n):
        w = tensors[f"layers.{i}.weight"].astype(np.float64)
        h = h @ w.T + tensors[f"layers.{i}.bias"]
        h = acts[output_activation if i == n - 1 else activation](h)
    return h


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize(
    ("activation", "output_activation"),
    [("relu", "softmax"), ("tanh", "identity"), ("logistic", "logistic"), ("identity", "softmax")],
)
def test_forward_matches_reference(tmp_path, backend, activation, output_activation):
    tensors = make_mlp(tmp_path / "m", [7, 13, 5, 3], activation, output_activation)
    x = np.random.default_rng(2).standard_normal((33, 7))
    model = load_model(tmp_path / "m", get_backend(backend, "float64"), "float64")
    got = model.predict(x)["outputs"]
    assert got.shape == (33, 3) and got.dtype == np.float64
    np.testing.assert_allclose(
        got, reference_forward(tensors, x, activation, output_activation), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("stored", [np.float16, np.float64])
def test_stored_weight_dtypes_are_cast_to_the_compute_dtype(tmp_path, stored):
    tensors = make_mlp(tmp_path / "m", [4, 6, 2], dtype=stored)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    model = load_model(tmp_path / "m", get_backend("numpy", "float32"), "float32")
    got = model.predict(x)["outputs"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(
        got, reference_forward(tensors, x, "relu", "softmax"), rtol=1e-5, atol=1e-6
    )


def test_jax_float32_agrees_with_numpy(tmp_path):
    make_mlp(tmp_path / "m", [16, 40, 10])
    x = np.random.default_rng(4).standard_normal((64, 16)).astype(np.float32)
    ref = load_model(tmp_path / "m", get_backend("numpy", "float32"), "float32").predict(x)
    got = load_model(tmp_path / "m", get_backend("jax", "float32"), "float32").predict(x)
    np.testing.assert_allclose(got["outputs"], ref["outputs"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["classifier", "binary", "regressor"])
def test_matches_scikit_learn_live(tmp_path, kind):
    """Export freshly trained scikit-learn models and compare with their own predictions."""
    pytest.importorskip("sklearn")
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    make_digits = load_data_script("make_digits")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "regressor":
            est = MLPRegressor(
                hidden_layer_sizes=(17,), activation="tanh", max_iter=50, random_state=0
            )
            est.fit(x, x[:, 0] * 2 + x[:, 1])
            expected = est.predict(x)[:, None]
        else:
            classes = 2 if kind == "binary" else 4
            est = MLPClassifier(
                hidden_layer_sizes=(17, 9), activation="logistic", max_iter=50, random_state=0
            )
            est.fit(x, rng.integers(0, classes, 300))
            expected = est.predict_proba(x)
            if kind == "binary":  # one logistic output p; predict_proba is [1 - p, p]
                expected = expected[:, 1:]
    make_digits.export_mlp(est, tmp_path / "m")
    model = load_model(tmp_path / "m", get_backend("numpy", "float32"), "float32")
    np.testing.assert_allclose(model.predict(x)["outputs"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json: not found"),
        (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
        (
            lambda d: (d / "config.json").write_text('{"model_type": "resnet"}'),
            "unsupported model_type 'resnet'",
        ),
        (
            lambda d: (d / "config.json").write_text('{"model_type": "mlp", "layer_sizes": [4]}'),
            "layer_sizes must be",
        ),
        (
            lambda d: (d / "config.json").write_text(
                '{"model_type": "mlp", "layer_sizes": [4, 6, 2], "activation": "gelu"}'
            ),
            "activation 'gelu' is not supported",
        ),
        (
            lambda d: (d / "config.json").write_text(
                '{"model_type": "mlp", "layer_sizes": [5, 6, 2]}'
            ),
            "layers.0.weight has shape (6, 4), expected (6, 5)",
        ),
        (
            lambda d: (d / "config.json").write_text(
                '{"model_type": "mlp", "layer_sizes": [4, 6, 2, 2]}'
            ),
            "tensor 'layers.2.weight' not found",
        ),
        (
            lambda d: (d / "model.safetensors").unlink(),
            "no model.safetensors or model.safetensors.index.json",
        ),
    ],
)
def test_bad_model_folders_are_one_line_errors(tmp_path, mutate, expected):
    folder = tmp_path / "m"
    make_mlp(folder, [4, 6, 2])
    mutate(folder)
    with pytest.raises(JobError, match=None) as e:
        load_model(folder, get_backend("numpy", "float32"), "float32")
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_cupy_without_a_gpu_is_a_clear_error():
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 (no CuPy, no driver, no device: no GPU here)
        has_gpu = False
    if has_gpu:
        pytest.skip("a GPU is present")
    with pytest.raises(JobError, match="backend 'cupy'"):
        get_backend("cupy", "float32")
