"""A float32 model computes in float32 on numpy: no float64 scalar (numpy 2 promotes
float32 arrays by float64 numpy scalars, NEP 50) may turn activations, and every GEMM
after them, into float64 — twice the time and memory, silently."""

from __future__ import annotations

import numpy as np
import pytest

import hpcinfer.models.llama as llama
import hpcinfer.models.transformer as transformer
import hpcinfer.parallel.tensor as tensor
from hpcinfer.backends import get_backend
from hpcinfer.models import load_model
from tests.conftest import DATA

FIXTURES = DATA / "fixtures"
MODELS = {
    "gpt2": DATA / "models" / "tiny-gpt2",
    "bert": FIXTURES / "tiny-roberta",
    "distilbert": FIXTURES / "tiny-distilbert",
    "llama": FIXTURES / "tiny-llama",
}


def test_the_activations_keep_float32():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    assert transformer.gelu_tanh(x, np).dtype == np.float32
    assert transformer.gelu_erf(x, np.tanh).dtype == np.float32  # any float32 erf


@pytest.mark.parametrize("family", list(MODELS))
def test_every_product_of_a_float32_model_is_float32(family, monkeypatch):
    seen: set[str] = set()

    def recording(wrapped):
        def product(*args, **kwargs):
            out = wrapped(*args, **kwargs)
            seen.add(str(out.dtype))
            return out

        return product

    monkeypatch.setattr(tensor, "matmul", recording(tensor.matmul))
    monkeypatch.setattr(llama, "matmul", recording(llama.matmul))
    for module in ("encoders", "gpt2", "llama"):
        monkeypatch.setattr(f"hpcinfer.models.{module}.attention", recording(transformer.attention))
    model = load_model(MODELS[family], get_backend("numpy", "float32"), "float32")
    model.predict_items([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], 64)
    assert seen == {"float32"}
