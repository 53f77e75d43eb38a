"""Reference fixtures for the Llama-family variants the main decoder fixtures do not cover.

    /work/refvenv/bin/python data/make_decoder_variants.py     # from the repository root
    (the venv of data/make_decoder_fixtures.py: torch, transformers, accelerate, gguf)

The committed files were made with torch 2.13.0+cpu, transformers 5.25.0 and gguf 0.19.0
(also stored as attributes of decoder-variants.h5). Seeded: a rerun with those versions
writes the same numbers. Writes into data/fixtures/:

- decoder-variants/<name>/ (config.json + model.safetensors, float32, no tokenizer: the
  references are over token ids), tiny random models (2 layers, hidden 32, vocabulary 256)
  of the settings each name says:
    mistral-window   MistralForCausalLM, sliding_window 8 on every layer, GQA 4/2
    llama-linear     old-style config.json (rope_theta + rope_scaling {"type": "linear"}),
                     no GQA, hidden_act gelu (erf)
    llama-dynamic    old-style {"type": "dynamic", factor 4}, max_position_embeddings 16
                     (texts up to 60 tokens: NTK scaling per text length), MQA (1 KV
                     head), hidden_act relu
    llama-yarn       rope_parameters yarn (factor 4, original 16), attention_bias and
                     mlp_bias, head_dim 12 (not hidden / heads), gelu_pytorch_tanh
    qwen3-window     Qwen3ForCausalLM: q/k norms, tied head, use_sliding_window with
                     max_window_layers 1 (layer 1 windowed, 6 tokens)
- tiny-qwen2-bf16.gguf: data/fixtures/tiny-qwen2 as llama.cpp's convert_hf_to_gguf.py
  writes a Qwen2 (architecture qwen2: no Q/K permutation, q/k/v biases, tied head, the
  token list padded with [PAD] tokens to the 1,024 embedding rows, tokenizer pre "qwen2"),
  matrices BF16, norms and biases F32.
- decoder-variants.h5: one group per variant, over 16 token-id rows of 2..60 tokens (each
  row alone, eager attention; llama-dynamic in a freshly loaded model per row, because
  transformers' dynamic rope keeps the longest length it has seen): `token_ids`,
  `logprob` (float64 sum of the float32 log-probs), `num_tokens`, `embed_last`,
  `embed_mean`. Group `tiny-qwen2-bf16-gguf`: transformers loading that GGUF (model and
  tokenizer), over the first 48 corpus texts cut to 128 tokens, as decoder-reference.h5's
  groups (its token ids equal tiny-qwen2's).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_decoder_fixtures import (  # noqa: E402  (the sibling script's helpers)
    MAX_LENGTH,
    ROWS,
    corpus_texts,
    forward,
    perturb,
    rel,
    tokenize,
    write_group,
)

OUT = HERE / "fixtures"
VARIANTS_DIR = OUT / "decoder-variants"
LENGTHS = [2, 3, 5, 8, 9, 12, 15, 16, 17, 20, 25, 31, 40, 47, 55, 60]
COMMON = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "initializer_range": 0.2,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
VARIANTS = {
    "mistral-window": (
        "mistral",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
             "sliding_window": 8, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
    ),
    "llama-linear": (
        "llama",
        {"num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64,
             "hidden_act": "gelu",
             "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}},
    ),
    "llama-dynamic": (
        "llama",
        {"num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 16,
             "hidden_act": "relu",
             "rope_parameters": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 1e4}},
    ),
    "llama-yarn": (
        "llama",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
             "max_position_embeddings": 64, "attention_bias": True, "mlp_bias": True,
             "hidden_act": "gelu_pytorch_tanh",
             "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                              "original_max_position_embeddings": 16}},
    ),
    "qwen3-window": (
        "qwen3",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "max_position_embeddings": 64, "tie_word_embeddings": True, "use_sliding_window": True,
             "sliding_window": 6, "max_window_layers": 1,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
    ),
}  # fmt: skip
OLD_STYLE = ("llama-linear", "llama-dynamic")  # config.json rewritten as transformers 4 wrote it


def token_rows() -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [[int(t) for t in rng.integers(0, COMMON["vocab_size"], n)] for n in LENGTHS]


def make_variant(name: str, kind: str, settings: dict, torch) -> Path:
    import transformers

    config_class, model_class = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    }[kind]
    folder = VARIANTS_DIR / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(sum(map(ord, name)))
    config = getattr(transformers, config_class)(**COMMON, **settings)
    model = getattr(transformers, model_class)(config).eval()
    perturb(model, torch, 0.5)
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    if name in OLD_STYLE:  # rope_theta + rope_scaling {"type": ...}, as transformers 4 wrote
        path = folder / "config.json"
        saved = json.loads(path.read_text())
        rope = saved.pop("rope_parameters")
        saved["rope_theta"] = rope.pop("rope_theta")
        saved["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
        path.write_text(json.dumps(saved, indent=2) + "\n")
    return folder


def load(folder: Path, torch, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", **kw
    ).eval()


def write_qwen2_gguf(folder: Path, path: Path) -> None:
    """tiny-qwen2 as convert_hf_to_gguf.py (Qwen2Model, _set_vocab_gpt2) writes it."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    arch = gguf.MODEL_ARCH.QWEN2
    writer = gguf.GGUFWriter(path, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    vocab = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {t["id"]: t for t in tok["added_tokens"]}
    tokens, types = [], []
    for i in range(config["vocab_size"]):  # padded as get_vocab_base does
        if i in added:
            tokens.append(added[i]["content"])
            special = added[i]["special"]
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif i in vocab:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    vocab_files = gguf.SpecialVocab(folder, load_merges=True)
    vocab_files.add_to_gguf(writer, quiet=True)  # add_bos_token false, from tokenizer_config

    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    bf16 = gguf.GGMLQuantizationType.BF16
    f32 = gguf.GGMLQuantizationType.F32
    for name, data in load_file(folder / "model.safetensors").items():
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        qtype = f32 if data.ndim <= 1 else bf16
        stored = gguf.quants.quantize(data.astype(np.float32), qtype)
        writer.add_tensor(new, stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    import logging

    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    rows = token_rows()
    results = {}
    for name, (kind, settings) in VARIANTS.items():
        folder = make_variant(name, kind, settings, torch)
        if name == "llama-dynamic":  # a fresh rotary state per row
            parts = [forward(load(folder, torch), [ids], torch) for ids in rows]
            res = {k: [v for p in parts for v in p[k]] for k in parts[0]}
        else:
            res = forward(load(folder, torch), rows, torch)
        results[name] = (rows, res, {"source": f"data/fixtures/decoder-variants/{name}"})
        print(f"{name:16s} mean log-prob {np.mean(res['logprob']):.3f}")

    qwen2 = OUT / "tiny-qwen2"
    gguf_path = OUT / "tiny-qwen2-bf16.gguf"
    write_qwen2_gguf(qwen2, gguf_path)
    texts = corpus_texts()[:ROWS]
    want = tokenize(AutoTokenizer.from_pretrained(qwen2), texts)
    tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file=gguf_path.name)
    ids = tokenize(tokenizer, texts)
    assert ids == want, "the GGUF's tokenizer differs from tiny-qwen2's"
    res = forward(load(OUT, torch, gguf_file=gguf_path.name), ids, torch)
    base = forward(load(qwen2, torch), ids, torch)
    diff = rel(res["logprob"], base["logprob"])
    print(f"tiny-qwen2-bf16-gguf: logprob rel diff vs tiny-qwen2 {diff:.3g}")
    results["tiny-qwen2-bf16-gguf"] = (
        ids,
        res,
        {
            "source": f"data/fixtures/{gguf_path.name}",
            "adds_bos": False,
            "note": "transformers loaded the GGUF (model and tokenizer); "
            "token ids equal tiny-qwen2's",
        },
    )

    with h5py.File(OUT / "decoder-variants.h5", "w") as f:
        f.attrs["made_by"] = "data/make_decoder_variants.py"
        f.attrs["transformers"] = str(transformers.__version__)
        f.attrs["torch"] = str(torch.__version__)
        f.attrs["gguf"] = importlib.metadata.version("gguf")
        for name, (ids, res, attrs) in results.items():
            write_group(f, name, ids, res, attrs)
            if name in VARIANTS:
                f[name].attrs["max_length"] = max(LENGTHS)
    total = sum(p.stat().st_size for p in VARIANTS_DIR.rglob("*") if p.is_file())
    size = gguf_path.stat().st_size
    print(f"{VARIANTS_DIR}: {total / 1e6:.2f} MB; {gguf_path.name} {size / 1e6:.2f} MB")
    print(f"corpus rows cut to {MAX_LENGTH} tokens")


if __name__ == "__main__":
    main()
