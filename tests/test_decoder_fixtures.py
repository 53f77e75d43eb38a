"""The Llama-family decoder fixtures (data/fixtures/) agree with themselves.

They were made by data/make_decoder_fixtures.py with transformers and PyTorch; these checks
need neither (numpy, h5py, json, tokenizers; the GGUF part only where `gguf` is installed),
so that a fixture damaged or remade inconsistently is caught before a model test blames
the model code.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import DATA

FIXTURES = DATA / "fixtures"
LLAMA, QWEN2, SHARDED = (FIXTURES / n for n in ("tiny-llama", "tiny-qwen2", "tiny-llama-sharded"))
GGUFS = {
    "tiny-llama-f16-gguf": "tiny-llama-f16.gguf",
    "tiny-llama-q8_0-gguf": "tiny-llama-q8_0.gguf",
}
GROUPS = ["tiny-llama", "tiny-qwen2", *GGUFS, "smollm2"]
ROWS, MAX_LENGTH = 48, 128


def config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def safetensors_arrays(path: Path) -> dict[str, np.ndarray]:
    header, start = safetensors_header(path)
    raw = path.read_bytes()
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", (path, name, info["dtype"])
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[start + lo : start + hi], np.float32).reshape(info["shape"])
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    out = {}
    with h5py.File(FIXTURES / "decoder-reference.h5", "r") as f:
        out["text"] = list(f["text"].asstr()[:])
        for group in GROUPS:
            g = f[group]
            out[group] = {key: g[key][:] for key in g}
            out[group]["attrs"] = dict(g.attrs)
    return out


def test_llama_config():
    c = config(LLAMA)
    assert c["model_type"] == "llama" and c["architectures"] == ["LlamaForCausalLM"]
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == (64, 4, 2)
    assert (c["head_dim"], c["num_hidden_layers"], c["intermediate_size"]) == (16, 2, 160)
    assert c["tie_word_embeddings"] is False and c["hidden_act"] == "silu"
    assert c["rms_norm_eps"] == 1e-5 and c["max_position_embeddings"] == 256
    rope = c["rope_parameters"]  # transformers 5 writes rope_parameters, not rope_scaling
    assert rope == {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    assert config(SHARDED) == c


def test_qwen2_config():
    c = config(QWEN2)
    assert c["model_type"] == "qwen2" and c["architectures"] == ["Qwen2ForCausalLM"]
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == (96, 6, 2)
    assert (c["head_dim"], c["num_hidden_layers"]) == (16, 2)
    assert c["tie_word_embeddings"] is True and c["use_sliding_window"] is False
    assert c["rope_parameters"]["rope_theta"] == 1e6
    assert c["num_key_value_heads"] % 2 == 0 and c["num_key_value_heads"] % 3 != 0


@pytest.mark.parametrize("folder", [LLAMA, QWEN2], ids=["llama", "qwen2"])
def test_weights_match_config(folder):
    c = config(folder)
    header, _ = safetensors_header(folder / "model.safetensors")
    h, hd, vocab = c["hidden_size"], c["head_dim"], c["vocab_size"]
    shapes = {name: tuple(info["shape"]) for name, info in header.items()}
    assert {info["dtype"] for info in header.values()} == {"F32"}
    assert shapes["model.embed_tokens.weight"] == (vocab, h)
    assert ("lm_head.weight" in shapes) is not c["tie_word_embeddings"]
    biased = c["model_type"] == "qwen2"  # Qwen2: q, k and v have biases, o has none
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        assert shapes[p + "self_attn.q_proj.weight"] == (c["num_attention_heads"] * hd, h)
        assert shapes[p + "self_attn.k_proj.weight"] == (c["num_key_value_heads"] * hd, h)
        assert shapes[p + "self_attn.v_proj.weight"] == (c["num_key_value_heads"] * hd, h)
        assert shapes[p + "self_attn.o_proj.weight"] == (h, c["num_attention_heads"] * hd)
        assert shapes[p + "mlp.gate_proj.weight"] == (c["intermediate_size"], h)
        assert shapes[p + "mlp.down_proj.weight"] == (h, c["intermediate_size"])
        for proj in "qkv":
            assert (p + f"self_attn.{proj}_proj.bias" in shapes) is biased
        assert p + "self_attn.o_proj.bias" not in shapes
    assert len(shapes) == 2 + (not c["tie_word_embeddings"]) + c["num_hidden_layers"] * (
        9 + 3 * biased
    )


def test_shards_hold_tiny_llama():
    index = json.loads((SHARDED / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3
    assert not (SHARDED / "model.safetensors").exists()
    whole = safetensors_arrays(LLAMA / "model.safetensors")
    seen = {}
    for name in files:
        arrays = safetensors_arrays(SHARDED / name)
        assert {k for k, v in index["weight_map"].items() if v == name} == set(arrays)
        seen.update(arrays)
    assert set(seen) == set(whole)
    for name, array in whole.items():
        np.testing.assert_array_equal(seen[name], array, err_msg=name)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in whole.values())


LLAMA_TOKENS = {"<s>": 0, "</s>": 1}
QWEN2_TOKENS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


@pytest.mark.parametrize(
    ("folder", "special", "bos", "eos"),
    [
        (LLAMA, LLAMA_TOKENS, "<s>", "</s>"),
        (SHARDED, LLAMA_TOKENS, "<s>", "</s>"),
        (QWEN2, QWEN2_TOKENS, None, "<|endoftext|>"),  # Qwen2: config names a BOS, none is added
    ],
    ids=["llama", "sharded", "qwen2"],
)
def test_tokenizer_files(folder, special, bos, eos):
    from tokenizers import Tokenizer

    tok = json.loads((folder / "tokenizer.json").read_text())
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    c = config(folder)
    assert {t["content"]: t["id"] for t in tok["added_tokens"]} == special
    assert (tc["bos_token"], tc["eos_token"]) == (bos, eos)
    assert tc["add_bos_token"] is (bos is not None) and tc["add_eos_token"] is False
    assert (
        c["bos_token_id"] == special[bos or "<|endoftext|>"] and c["eos_token_id"] == special[eos]
    )
    assert len(tok["model"]["vocab"]) == 1001 <= c["vocab_size"]
    encoded = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("Hello world 2024").ids
    assert (encoded[0] == 0) is (bos is not None) and 0 not in encoded[1:]


def test_reference_shapes(reference):
    lines = (DATA / "corpus.jsonl").read_text().splitlines()
    corpus = [json.loads(line)["text"] for line in lines]
    assert reference["text"] == corpus[:ROWS]
    hidden = {"tiny-llama": 64, "tiny-qwen2": 96, "smollm2": 576} | dict.fromkeys(GGUFS, 64)
    vocab = {"tiny-llama": 1001, "tiny-qwen2": 1024, "smollm2": 49152} | dict.fromkeys(GGUFS, 1001)
    for group in GROUPS:
        g = reference[group]
        n = g["num_tokens"]
        assert n.shape == (ROWS,) and g["logprob"].shape == (ROWS,), group
        assert g["logprob"].dtype == np.float64 and g["attrs"]["max_length"] == MAX_LENGTH
        assert (n >= 2).all() and (n <= MAX_LENGTH).all() and (n == MAX_LENGTH).any(), group
        for i in range(ROWS):
            ids, lp, top = g["token_ids"][i], g["token_logprobs"][i], g["argmax"][i]
            assert len(ids) == n[i] and len(lp) == len(top) == n[i] - 1, (group, i)
            assert lp.dtype == np.float32 and (lp <= 0).all()
            assert ((top >= 0) & (top < vocab[group])).all() and ids.max() < vocab[group]
            bos = g["attrs"].get("bos_token_id", -1)
            assert bool(ids[0] == bos) is bool(g["attrs"]["adds_bos"]), (group, i)
            assert bos not in ids[1:], (group, i)
        sums = np.array([lp.astype(np.float64).sum() for lp in g["token_logprobs"]])
        np.testing.assert_allclose(sums, g["logprob"], rtol=1e-6, err_msg=group)
        for key in ("embed_last", "embed_mean"):
            assert g[key].shape == (ROWS, hidden[group]) and g[key].dtype == np.float32
            assert np.isfinite(g[key]).all()
        mean = g["logprob"].sum() / (n - 1).sum()
        assert -12 < mean < -1, (group, mean)  # neither uniform-flat nor degenerate


def test_reference_tokens_and_agreement(reference):
    from tokenizers import Tokenizer

    for group, folder in (("tiny-llama", LLAMA), ("tiny-qwen2", QWEN2)):
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        want = [tok.encode(t).ids[:MAX_LENGTH] for t in reference["text"]]
        assert [list(ids) for ids in reference[group]["token_ids"]] == want, group
    llama = reference["tiny-llama"]
    np.testing.assert_allclose(llama["logprob_float64"], llama["logprob"], rtol=1e-5)
    # F16: within 1e-3 of the safetensors model; Q8_0 moves near-ties of this random model.
    for group, rtol, same_top in zip(GGUFS, (1e-3, 1e-2), (0.98, 0.9), strict=True):
        g = reference[group]
        for i in range(ROWS):
            np.testing.assert_array_equal(g["token_ids"][i], llama["token_ids"][i])
        np.testing.assert_allclose(g["logprob"], llama["logprob"], rtol=rtol, err_msg=group)
        agree = np.concatenate(g["argmax"]) == np.concatenate(llama["argmax"])
        assert agree.mean() > same_top, (group, agree.mean())
    smol = reference["smollm2"]["attrs"]
    assert (smol["bos_token_id"], smol["eos_token_id"]) == (1, 2) and not smol["adds_bos"]
    assert "<|im_start|>" in smol["chat_template"]


@pytest.mark.parametrize("name", GGUFS.values())
def test_gguf_files(name):
    path = FIXTURES / name
    with path.open("rb") as f:
        magic, version = f.read(4), struct.unpack("<I", f.read(4))[0]
    assert magic == b"GGUF" and version == 3
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    c = config(LLAMA)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.attention.head_count"] == c["num_attention_heads"]
    assert fields["llama.attention.head_count_kv"] == c["num_key_value_heads"]
    assert fields["llama.rope.dimension_count"] == c["head_dim"]
    assert fields["llama.rope.freq_base"] == c["rope_parameters"]["rope_theta"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.add_bos_token"]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (0, 1)
    assert len(fields["tokenizer.ggml.tokens"]) == c["vocab_size"]
    tensors = {t.name: t for t in reader.tensors}
    quant = "F16" if "f16" in name else "Q8_0"
    for t in tensors.values():
        want = "F32" if len(t.shape) == 1 else quant
        assert t.tensor_type.name == want, (t.name, t.tensor_type.name)
    assert "output.weight" in tensors  # untied head
    factors = np.asarray(tensors["rope_freqs.weight"].data)
    assert factors.shape == (c["head_dim"] // 2,) and factors[0] == 1 and factors[-1] == 8
    # Q and K rows: HF's rotate-half order permuted to interleaved pairs, per head.
    whole = safetensors_arrays(LLAMA / "model.safetensors")
    for proj, heads in (("q", c["num_attention_heads"]), ("k", c["num_key_value_heads"])):
        hf = whole[f"model.layers.0.self_attn.{proj}_proj.weight"]
        d = hf.shape[0] // heads
        want = hf.reshape(heads, 2, d // 2, -1).swapaxes(1, 2).reshape(hf.shape)
        got = gguf.quants.dequantize(
            tensors[f"blk.0.attn_{proj}.weight"].data,
            tensors[f"blk.0.attn_{proj}.weight"].tensor_type,
        )
        np.testing.assert_allclose(got, want, atol=0.02 if quant == "Q8_0" else 1e-3)
