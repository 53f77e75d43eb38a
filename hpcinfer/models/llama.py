"""Llama-family decoders (llama, mistral, qwen2, qwen3): scoring text and embedding it.

    mpiexec -n 2 python -m hpcinfer run jobs/smollm2-score.toml            # 2 DP ranks
    mpiexec -n 3 python -m hpcinfer run jobs/smollm2-score.toml --tp 3     # one model on 3

The model is a Hugging Face folder (config.json, model.safetensors or a sharded
checkpoint, tokenizer files) or one llama.cpp `.gguf` file (metadata for the config,
tensors dequantized as they are read, the tokenizer from `tokenizer.ggml.*`):
hpcinfer.models.llama_gguf. The architecture and each rank's share of the weights are
hpcinfer.models.llama_config's; rotary variants hpcinfer.models.rope's.

One decoder layer, x (B, L, H), under tensor parallelism (this rank's heads and slices):

    h = RMSNorm(x)
    q, k, v = h @ Wq_r (+ bq_r), h @ Wk_r, h @ Wv_r      # column-parallel, no comm
    q, k = rotate(RMSNorm_qk(q), RMSNorm_qk(k))          # qk norm: qwen3 only
    a = softmax(q k^T / sqrt(d) + causal [+ window]) v   # each query head with its KV head
    x = x + row_linear(a, Wo_r)                          # one all-reduce
    h = RMSNorm(x)
    x = x + row_linear(act(h @ Wgate_r) * (h @ Wup_r), Wdown_r)   # one all-reduce

Tasks: `score` (for tokens t_0..t_{L-1}: `logprob` = sum_{i>=1} log p(t_i | t_<i), float64,
and `num_tokens` = L; the head vocabulary-parallel) and `embed` (`embeddings`: the final
RMSNorm's output at the last token, or its mean over the tokens; model.pooling).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_checkpoint import open_weights
from hpcinfer.io.tokenizer_files import load_tokenizer
from hpcinfer.models.base import OutputSpec
from hpcinfer.models.batching import sequence_sums
from hpcinfer.models.llama_config import LlamaConfig
from hpcinfer.models.llama_gguf import GgufWeights
from hpcinfer.models.rope import attention_factor, cos_sin, dynamic_inverse, inverse_frequencies
from hpcinfer.models.rope import rotate as rotate_half
from hpcinfer.models.shards import read_table
from hpcinfer.models.text import TextModel
from hpcinfer.models.transformer import (
    attention,
    gelu_erf,
    gelu_tanh,
    next_of_same_sequence,
    segment_bias,
    split_heads,
)
from hpcinfer.models.vocab import LOGITS_BYTES, head_logprobs, vocab_lookup
from hpcinfer.parallel.partition import split_range
from hpcinfer.parallel.tensor import Collectives, matmul, reduce_from_tp_region

POOLINGS = ("last_token", "mean")
FLAGS = {"lasttoken": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens"}


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def rms_norm(x: Any, w: Any, eps: float, xp: Any) -> Any:
    return x * (1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)) * w


def activate(x: Any, name: str, xp: Any, erf: Any) -> Any:
    if name in ("silu", "swish"):
        return 0.5 * x * (1.0 + xp.tanh(0.5 * x))  # x * sigmoid(x), without exp overflow
    if name == "gelu":
        return gelu_erf(x, erf)
    if name == "relu":
        return xp.maximum(x, 0)
    return gelu_tanh(x, xp)  # gelu_new, gelu_pytorch_tanh


def linear(x: Any, p: dict, name: str) -> Any:
    """x @ W (+ b): a column-parallel projection (this rank's output slice; no comm)."""
    y = matmul(x, p[name + ".weight"])
    return y + p[name + ".bias"] if name + ".bias" in p else y


def row_parallel(x: Any, p: dict, name: str, tp: Collectives) -> Any:
    """x_r @ W_r summed over the group (one all-reduce), + b once."""
    y = reduce_from_tp_region(matmul(x, p[name + ".weight"]), tp)
    return y + p[name + ".bias"] if name + ".bias" in p else y


def llama_hidden(
    params,
    ids,
    segments,
    positions,
    lengths,
    *,
    xp,
    erf,
    scan,
    tp: Collectives,
    cfg: LlamaConfig,
    vocab_start: int,
    kv_index: tuple[int, ...] | None,
):
    """ids (R, L) -> the final RMSNorm's output (R, L, H), the same on every TP rank.

    Several sequences may share a row: `segments` (R, L) says which sequence each token
    belongs to, `positions` (R, L) where in it, `lengths` (R, L) how long it is (for
    dynamic rope). A token attends to the tokens before it in its own sequence.
    `kv_index[j]`: which of this rank's KV heads its query head j reads (None: the
    standard grouping, g consecutive query heads per KV head, done by repetition)."""
    x = vocab_lookup(params["embed_tokens.weight"], ids, vocab_start, xp, tp)  # (R, L, H)
    d = cfg.head_dim
    if cfg.rope.kind == "dynamic":  # (R, L, d/2): each sequence from its own length
        inv_freq = dynamic_inverse(cfg.rope, lengths, xp, x.dtype)
    else:
        inv_freq = params["rope.inv_freq"]  # (d/2,)
    if "rope_freqs.weight" in params:  # GGUF llama3: llama.cpp divides theta_i by it
        inv_freq = inv_freq / params["rope_freqs.weight"]
    cos, sin = cos_sin(inv_freq, positions, attention_factor(cfg.rope), xp)
    bias = segment_bias(segments, x.dtype, xp, causal=True)
    distance = None
    if any(cfg.windows):  # query i sees keys i - window < j <= i on windowed layers
        distance = (positions[:, :, None] - positions[:, None, :])[:, None]  # (R, 1, L, L)
    group = cfg.heads // cfg.kv_heads
    scale = 1.0 / math.sqrt(d)

    def layer(x, p):
        h = rms_norm(x, p["input_layernorm.weight"], cfg.eps, xp)
        qkv = linear(h, p, "self_attn.qkv")  # (R, L, (hq_r + 2 hkv_r) d): one GEMM
        nq = p["self_attn.o_proj.weight"].shape[0]
        nk = (qkv.shape[-1] - nq) // 2
        q = split_heads(qkv[..., :nq], d, xp)  # (R, hq_r, L, d)
        k = split_heads(qkv[..., nq : nq + nk], d, xp)  # (R, hkv_r, L, d)
        v = split_heads(qkv[..., nq + nk :], d, xp)
        if cfg.qk_norm:
            q = rms_norm(q, p["self_attn.q_norm.weight"], cfg.eps, xp)
            k = rms_norm(k, p["self_attn.k_norm.weight"], cfg.eps, xp)
        q, k = rotate_half(q, cos, sin, xp), rotate_half(k, cos, sin, xp)
        if kv_index is not None:  # KV heads shared across a TP boundary
            k, v = k[:, list(kv_index)], v[:, list(kv_index)]
        elif group > 1:
            k, v = xp.repeat(k, group, axis=1), xp.repeat(v, group, axis=1)
        b = bias
        if distance is not None:
            window = p["attn.window"]
            b = bias + xp.where((window > 0) & (distance >= window), -1e9, 0.0).astype(x.dtype)
        ctx = attention(q, k, v, b, scale, xp)  # (R, L, hq_r * d)
        x = x + row_parallel(ctx, p, "self_attn.o_proj", tp)
        h = rms_norm(x, p["post_attention_layernorm.weight"], cfg.eps, xp)
        gate_up = linear(h, p, "mlp.gate_up")  # (R, L, 2 I_r): one GEMM
        inner = p["mlp.down_proj.weight"].shape[0]
        h = activate(gate_up[..., :inner], cfg.activation, xp, erf) * gate_up[..., inner:]
        return x + row_parallel(h, p, "mlp.down_proj", tp)

    x = scan(layer, x, params["layers"])
    return rms_norm(x, params["norm.weight"], cfg.eps, xp)


def llama_forward(
    params,
    ids,
    segments,
    positions,
    first,
    lengths,
    *,
    xp,
    segment_sum,
    segment_max,
    task: str,
    pooling: str,
    **kw,
):
    """A packed batch (models/batching.py: PackedBatch) -> `score`: log p of each next
    token of the same sequence (R, L-1), 0 elsewhere (the host sums them per sequence in
    float64); `embed`: each segment slot's pooled final hidden state (S, H). The same on
    every TP rank."""
    slots = first.shape[0]
    token_lengths = lengths[xp.minimum(segments, slots - 1)]
    x = llama_hidden(params, ids, segments, positions, token_lengths, xp=xp, **kw)  # (R, L, H)
    if task == "embed":
        xf = x.reshape(-1, x.shape[-1])
        if pooling == "mean":
            total = segment_sum(xf, segments.reshape(-1), slots)  # padding: dropped
            return total / xp.maximum(lengths, 1)[:, None].astype(x.dtype)
        picked = xf[first + xp.maximum(lengths - 1, 0)]  # an empty sequence pools to zeros
        return picked * (lengths > 0)[:, None].astype(x.dtype)
    head = params.get("lm_head.weight", params["embed_tokens.weight"])  # tied: the embedding
    logp = head_logprobs(x, head, ids, kw["vocab_start"], xp, kw["tp"], LOGITS_BYTES)
    return logp * next_of_same_sequence(segments, slots).astype(logp.dtype)


def fuse(layers: dict, name: str, parts: list[str]) -> None:
    """Column-parallel projections of the same input as one matrix (and bias): one GEMM
    instead of several narrow ones. Stacked (layers, in, out_i) -> (layers, in, sum)."""
    for kind in ("weight", "bias"):
        keys = [f"{part}.{kind}" for part in parts]
        if keys[0] in layers:
            layers[f"{name}.{kind}"] = np.concatenate([layers.pop(k) for k in keys], axis=-1)


def read_pooling(path: Path, requested: str) -> tuple[str, bool]:
    """(pooling, normalise): model.pooling, else what a sentence-transformers folder says
    (1_Pooling/config.json: "lasttoken" or "mean"; a Normalize module), else last token."""
    modules_path = path / "modules.json"
    if is_gguf(path) or not modules_path.is_file():
        return ("last_token" if requested == "auto" else requested), False
    try:
        modules = json.loads(modules_path.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        found = []
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                cfg = json.loads((path / m["path"] / "config.json").read_text())
                mode = cfg.get("pooling_mode")
                if mode is None:  # sentence-transformers 2.x to 5.x: one flag per mode
                    mode = next((k for k, flag in FLAGS.items() if cfg.get(flag)), None)
                found.append(mode)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        raise JobError(
            f"{modules_path}: cannot read the sentence-transformers modules ({e})"
        ) from None
    if requested != "auto":
        return requested, normalize
    modes = {"lasttoken": "last_token", "mean": "mean", None: "last_token"}
    if any(mode not in modes for mode in found):
        raise JobError(
            f"{path}: sentence-transformers pooling {found} is not supported for a decoder "
            "(lasttoken or mean; or set model.pooling)"
        )
    return (modes[found[0]] if found else "last_token"), normalize


def open_model_weights(path: Path, config: dict) -> Any:
    """The weights of a folder (single or sharded safetensors) or of a GGUF file, under
    Hugging Face's tensor names."""
    return GgufWeights.open(path, config) if is_gguf(path) else open_weights(path)


def architecture(path: Path, config: dict, weights: Any) -> LlamaConfig:
    """What `inspect` describes: the config, with the weight file's naming."""
    gguf = is_gguf(path)
    where = path if gguf else path / "config.json"
    return LlamaConfig.from_json(config, where, weights.tensors, "gguf" if gguf else "safetensors")


class LlamaModel(TextModel):
    """Texts (or token-id lists) in; `score`: `logprob` and `num_tokens` per text;
    `embed`: `embeddings` (N, hidden) float32."""

    def __init__(
        self,
        path: Path,
        config: dict,
        backend: Any,
        dtype: str,
        tp: Collectives,
        task: str,
        pooling: str = "auto",
    ):
        weights = open_model_weights(path, config)
        self.cfg = cfg = architecture(path, config, weights)
        where = path if is_gguf(path) else path / "config.json"
        if reason := cfg.misfit(tp.size):
            raise JobError(f"{where}: run.tp = {tp.size} cannot work: {reason}")
        if task == "score" and not cfg.has_head:
            raise JobError(
                f"{weights.path}: tie_word_embeddings is false but lm_head.weight is missing: "
                "without its output head the model cannot score (task embed needs none)"
            )
        if pooling != "auto" and task != "embed":
            raise JobError(
                f"model.pooling = {pooling!r} does not apply to task {task!r} ({where}); "
                "pooling is for task embed"
            )
        self.task = task
        self.pooling, self.normalize = (
            read_pooling(path, pooling) if task == "embed" else ("", False)
        )
        source = weights.file if is_gguf(path) else path
        self.tokenizer = load_tokenizer(source, cfg.max_length)
        if self.tokenizer and self.tokenizer.vocab_size > cfg.vocab:
            raise JobError(
                f"{self.tokenizer.source}: the tokenizer has {self.tokenizer.vocab_size} tokens "
                f"but the model embeds only {cfg.vocab} (vocab_size)"
            )
        host = read_table(weights, cfg.shard_table(tp.rank, tp.size, head=task == "score"), dtype)
        fuse(
            host["layers"],
            "self_attn.qkv",
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        )
        fuse(host["layers"], "mlp.gate_up", ["mlp.gate_proj", "mlp.up_proj"])
        q_heads, kv_heads = cfg.head_ranges(tp.rank, tp.size)
        group = cfg.heads // cfg.kv_heads
        kv_index = tuple(h // group - kv_heads.start for h in q_heads)
        standard = kv_index == tuple(i for i in range(len(kv_heads)) for _ in range(group))
        if task == "embed":
            self.outputs = {"embeddings": OutputSpec((cfg.hidden,), np.dtype("float32"))}
        else:
            self.outputs = {
                "logprob": OutputSpec((), np.dtype("float64")),
                "num_tokens": OutputSpec((), np.dtype("int64")),
            }
        shared = {
            "cfg": cfg,
            "vocab_start": split_range(cfg.vocab, tp.rank, tp.size).start,
            "kv_index": None if standard else kv_index,
        }
        self._hidden = partial(
            llama_hidden, xp=backend.xp, erf=backend.erf, scan=backend.scan_layers, tp=tp, **shared
        )
        forward = partial(llama_forward, task=task, pooling=self.pooling, **shared)
        self.bind(backend, dtype, tp, host, forward)  # weight_bytes: the file's
        self.params["rope.inv_freq"] = backend.asarray(inverse_frequencies(cfg.rope))
        if any(cfg.windows):
            self.params["layers"]["attn.window"] = backend.asarray(np.array(cfg.windows))

    def predict_items(
        self, items: list, max_tokens: int, on_rows: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Results in input order; texts packed several to a row (few padded tokens)."""
        ids = self.encode(items, self.cfg.max_length, self.cfg.vocab)
        if self.task == "embed":
            out = np.empty((len(items), self.cfg.hidden), np.float32)
            for rows, y in self.run_packed(ids, max_tokens):
                norm = np.linalg.norm(y, axis=-1, keepdims=True) if self.normalize else 1.0
                out[rows] = y / np.maximum(norm, 1e-12)
                if on_rows is not None:
                    on_rows(len(rows))
            return {"embeddings": out}
        logprob = np.zeros(len(items), np.float64)
        for batch, token_logp in self.packed_results(ids, max_tokens):
            logprob[batch.rows] = sequence_sums(batch, token_logp)
            if on_rows is not None:
                on_rows(len(batch.rows))
        return {"logprob": logprob, "num_tokens": np.array([len(t) for t in ids], np.int64)}

    def final_hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The final RMSNorm's output (B, L, H) for a padded batch (one text a row),
        uncompiled: for checks (next-token argmax, per-token log-probs) outside the tasks."""
        segments = np.where(mask > 0, 0, 1)
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        lengths = np.broadcast_to(mask.sum(axis=1, keepdims=True), mask.shape)
        arrays = (self.backend.asarray_int(a) for a in (ids, segments, positions, lengths))
        return self.backend.to_host(self._hidden(self.params, *arrays))

    def activation_bytes(self, max_tokens: int) -> int:
        """A batch's largest temporaries: (tokens, hidden) arrays, the fused gate/up
        (tokens, 2 inner / tp), q/k/v, the attention scores, and the head's logits
        (capped)."""
        c, tp = self.cfg, self.tp_size
        seq = min(c.max_length, max_tokens)
        heads = -(-c.heads // tp)
        per_token = 4 * c.hidden + 2 * -(-c.inner // tp) + 3 * heads * c.head_dim + heads * seq
        logits = 0
        if self.task == "score":
            logits = min(LOGITS_BYTES, max_tokens * -(-c.vocab // tp) * self.dtype.itemsize)
        return max_tokens * per_token * self.dtype.itemsize + logits

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        facts = {
            "model_type": c.model_type,
            "task": self.task,
            "source": c.source,
            "hidden": c.hidden,
            "layers": c.layers,
            "heads": c.heads,
            "kv_heads": c.kv_heads,
            "head_dim": c.head_dim,
            "vocab": c.vocab,
            "rope": c.rope.kind,
            "max_length": c.max_length,
        }
        if self.task == "embed":
            facts |= {"pooling": self.pooling, "normalize": self.normalize}
        return facts


def load(path: Path, config: dict, backend: Any, dtype: str, tp: Collectives, task: str, **kw):
    return LlamaModel(path, config, backend, dtype, tp, task, **kw)
