"""GPT-2-family language models, scoring text: the log-probability of each text.

Reads a Hugging Face folder: config.json (model_type "gpt2"; every size from it),
model.safetensors (keys with or without the "transformer." prefix; weights in Conv1D
layout, (in, out), which is already how hpcinfer holds a linear layer; the output head
tied to the token embedding unless tie_word_embeddings is false) and tokenizer.json.

For a text of tokens t_0..t_{L-1} the score is sum_{i=1..L-1} log p(t_i | t_<i) (`logprob`)
with L (`num_tokens`); texts are cut to n_positions tokens.

Under tensor parallelism over tp ranks, per layer (heads split: n / tp per rank):

    q, k, v = LN1(x) @ Wqkv_r + b_r                # column-parallel, no comm
    x = x + row_linear(attention(q, k, v), Wo_r)   # one all-reduce
    x = x + row_linear(act(LN2(x) @ Wfc_r), Wp_r)  # one all-reduce

and the vocabulary is split too (Megatron's vocab-parallel embedding and cross-entropy):
rank r holds token embeddings [v_r, v_{r+1}), looks up the tokens that fall in its range
(one all-reduce assembles the embeddings), and computes only its slice of the logits.
The log-softmax needs the whole row, so each rank reduces its slice to a log-sum-exp and
the target's logit, and one all-gather of those two numbers per position finishes it:
the (B, L, V) logits never cross ranks, and the head's weights and compute are 1/tp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import short_repr
from hpcinfer.io.safetensors_checkpoint import open_weights
from hpcinfer.io.tokenizer_files import load_tokenizer
from hpcinfer.models.base import OutputSpec
from hpcinfer.models.batching import sequence_sums
from hpcinfer.models.shards import Part, ShardTable, read_table, whole
from hpcinfer.models.text import TextModel, check_heads_split
from hpcinfer.models.transformer import (
    attention,
    gelu_erf,
    gelu_tanh,
    layer_norm,
    next_of_same_sequence,
    segment_bias,
    split_heads,
)
from hpcinfer.models.vocab import LOGITS_BYTES, decoder_collectives, head_logprobs, vocab_lookup
from hpcinfer.parallel.partition import split_range, split_slice
from hpcinfer.parallel.tensor import Collectives, Solo, column_linear, row_linear

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")


@dataclass(frozen=True)
class Gpt2Config:
    hidden: int
    heads: int
    layers: int
    inner: int
    vocab: int
    positions: int
    eps: float
    activation: str
    scale_by_layer: bool  # scale_attn_by_inverse_layer_idx
    scale_attn: bool  # scale_attn_weights
    tied: bool
    prefix: str = ""  # "transformer." when the file's tensor names carry it

    @classmethod
    def from_json(cls, config: dict[str, Any], where: Path, names: Any = ()) -> Gpt2Config:
        """`names`: the weight file's tensor names (they decide the prefix). Every size is
        checked here, before a weight is read: a config that cannot describe a model is one
        line naming the key, never a division by zero or a computation of nonsense."""
        activation = config.get("activation_function", "gelu_new")
        if activation not in ACTIVATIONS:
            raise JobError(
                f"{where}: activation_function {short_repr(activation)} is not supported "
                f"(known: {', '.join(ACTIVATIONS)})"
            )
        if flag(config, "add_cross_attention", False, where):
            raise JobError(f"{where}: add_cross_attention is not supported (decoder-only GPT-2)")
        hidden, heads = count(config, "n_embd", where), count(config, "n_head", where)
        layers, vocab = count(config, "n_layer", where), count(config, "vocab_size", where)
        key = "n_positions" if "n_positions" in config or "n_ctx" not in config else "n_ctx"
        positions = count(config, key, where, 1024)
        if hidden % heads:
            raise JobError(f"{where}: n_embd {hidden} is not a multiple of n_head {heads}")
        eps = config.get("layer_norm_epsilon", 1e-5)
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
            raise JobError(
                f"{where}: layer_norm_epsilon must be a number in (0, 1), got {short_repr(eps)}"
            )
        return cls(
            hidden=hidden,
            heads=heads,
            layers=layers,
            inner=count(config, "n_inner", where, 4 * hidden),
            vocab=vocab,
            positions=positions,
            eps=float(eps),
            activation=activation,
            scale_by_layer=flag(config, "scale_attn_by_inverse_layer_idx", False, where),
            scale_attn=flag(config, "scale_attn_weights", True, where),
            tied=flag(config, "tie_word_embeddings", True, where),
            prefix="transformer." if "transformer.wte.weight" in names else "",
        )

    # -- what `inspect` and the loader share ------------------------------------------

    unit = "token"

    @property
    def title(self) -> str:
        return (
            f"gpt2, {self.layers} layers, hidden {self.hidden}, {self.heads} heads, vocabulary "
            f"{self.vocab}, {self.positions} positions"
        )

    def misfit(self, tp: int) -> str | None:
        if self.heads % tp:
            return f"tp does not divide the {self.heads} heads"
        return "tp is larger than the vocabulary" if tp > self.vocab else None

    def shard_table(self, rank: int, size: int) -> ShardTable:
        """Heads, MLP and vocabulary split over the group; positions and norms whole.

        Conv1D weights are stored (in, out) already, so nothing is transposed; c_attn's
        columns are [q | k | v], of which this rank reads its heads' columns of each.
        """
        p, h = self.prefix, self.hidden
        heads = split_range(h, rank, size)
        inner = split_slice(self.inner, rank, size)
        vocab = split_slice(self.vocab, rank, size)
        qkv = tuple(slice(j * h + heads.start, j * h + heads.stop) for j in range(3))
        top = {
            "wte.weight": Part(p + "wte.weight", rows=(vocab,), expect=(self.vocab, h)),
            "wpe.weight": whole(p + "wpe.weight", expect=(self.positions, h)),
            "ln_f.weight": whole(p + "ln_f.weight", expect=(h,)),
            "ln_f.bias": whole(p + "ln_f.bias", expect=(h,)),
        }
        if not self.tied:  # tied: the head is wte itself (one array, not a copy)
            top["lm_head.weight"] = Part("lm_head.weight", rows=(vocab,), expect=(self.vocab, h))
        layers = []
        for i in range(self.layers):
            n = f"{p}h.{i}."
            layer = {
                "attn.c_attn.weight": Part(n + "attn.c_attn.weight", cols=qkv, expect=(h, 3 * h)),
                "attn.c_attn.bias": Part(n + "attn.c_attn.bias", rows=qkv, expect=(3 * h,)),
                "attn.c_proj.weight": Part(
                    n + "attn.c_proj.weight", rows=(slice(heads.start, heads.stop),), expect=(h, h)
                ),
                "attn.c_proj.bias": whole(n + "attn.c_proj.bias", expect=(h,)),
                "mlp.c_fc.weight": Part(
                    n + "mlp.c_fc.weight", cols=(inner,), expect=(h, self.inner)
                ),
                "mlp.c_fc.bias": Part(n + "mlp.c_fc.bias", rows=(inner,), expect=(self.inner,)),
                "mlp.c_proj.weight": Part(
                    n + "mlp.c_proj.weight", rows=(inner,), expect=(self.inner, h)
                ),
                "mlp.c_proj.bias": whole(n + "mlp.c_proj.bias", expect=(h,)),
            }
            for norm in ("ln_1", "ln_2"):
                for t in ("weight", "bias"):
                    layer[f"{norm}.{t}"] = whole(f"{n}{norm}.{t}", expect=(h,))
            layers.append(layer)
        return ShardTable(top, layers)

    def attention_scales(self, dtype: str) -> np.ndarray:
        """Each layer's attention scale (the layers' "attn.scale", derived, not stored)."""
        d = self.hidden // self.heads
        base = 1.0 / math.sqrt(d) if self.scale_attn else 1.0
        return np.array(
            [base / (i + 1 if self.scale_by_layer else 1) for i in range(self.layers)], dtype
        )

    def collectives(self, tp: int) -> dict[str, int]:
        return decoder_collectives(self.layers, self.hidden, tp)


def count(config: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    """config[key] as a size: a positive integer (null or absent: `default`, if any)."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        what = "missing" if key not in config else f"got {short_repr(value)}"
        raise JobError(f"{where}: {key} must be a positive integer; {what}")
    return value


def flag(config: dict[str, Any], key: str, default: bool, where: Path) -> bool:
    """config[key] as true or false (null or absent: `default`); "false" is not false."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise JobError(f"{where}: {key} must be true or false, got {short_repr(value)}")
    return value


def activate(x: Any, name: str, xp: Any, erf: Any) -> Any:
    if name == "gelu":
        return gelu_erf(x, erf)
    if name == "relu":
        return xp.maximum(x, 0)
    return gelu_tanh(x, xp)  # gelu_new, gelu_pytorch_tanh


def gpt2_forward(
    params,
    ids,
    segments,
    positions,
    first,
    lengths,
    *,
    xp,
    erf,
    scan,
    tp: Collectives,
    cfg: Gpt2Config,
    vocab_start: int,
    **_segment_ops,  # (pooling's; a scorer has none)
):
    """A packed batch (models/batching.py: PackedBatch) -> log p of each next token of
    the same sequence, (R, L-1), 0 elsewhere (the host sums them per sequence in float64);
    the same on every TP rank. Each token attends to the earlier tokens of its own
    sequence and takes the position embedding of its place in it."""
    slots = first.shape[0]
    x = (
        vocab_lookup(params["wte.weight"], ids, vocab_start, xp, tp)
        + params["wpe.weight"][positions]
    )
    d = cfg.hidden // cfg.heads
    bias = segment_bias(segments, x.dtype, xp, causal=True)

    def layer(x, p):
        h = layer_norm(x, *norm(p, "ln_1"), cfg.eps, xp)
        w, b = p["attn.c_attn.weight"], p["attn.c_attn.bias"]  # this rank's [q | k | v]
        h_r = w.shape[1] // 3
        q, k, v = (
            split_heads(column_linear(h, w[:, s], b[s], tp), d, xp)
            for s in (slice(j * h_r, (j + 1) * h_r) for j in range(3))
        )
        ctx = attention(q, k, v, bias, p["attn.scale"], xp)
        x = x + row_linear(ctx, p["attn.c_proj.weight"], p["attn.c_proj.bias"], tp)
        h = layer_norm(x, *norm(p, "ln_2"), cfg.eps, xp)
        h = column_linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], tp)
        h = activate(h, cfg.activation, xp, erf)
        return x + row_linear(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"], tp)

    x = scan(layer, x, params["layers"])
    x = layer_norm(x, *norm(params, "ln_f"), cfg.eps, xp)
    head = params.get("lm_head.weight", params["wte.weight"])  # its own only when untied
    logp = head_logprobs(x, head, ids, vocab_start, xp, tp, LOGITS_BYTES)
    return logp * next_of_same_sequence(segments, slots).astype(logp.dtype)


def norm(p: dict, name: str) -> tuple[Any, Any]:
    return p[name + ".weight"], p[name + ".bias"]


def architecture(folder: Path, config: dict, weights: Any) -> Gpt2Config:
    """What `inspect` describes: the config, with the weight file's naming."""
    return Gpt2Config.from_json(config, folder / "config.json", weights.tensors)


class Gpt2Scorer(TextModel):
    """Texts (or token-id lists) in; `logprob` (float64) and `num_tokens` per text out."""

    def __init__(
        self, folder: Path, config: dict, backend: Any, dtype: str, tp: Collectives | None = None
    ):
        tp = tp or Solo()
        where = folder / "config.json"
        weights = open_weights(folder)
        self.cfg = Gpt2Config.from_json(config, where, weights.tensors)
        check_heads_split(self.cfg.heads, tp.size, where)
        if tp.size > self.cfg.vocab:
            raise JobError(f"{where}: run.tp = {tp.size} is larger than the vocabulary")
        if not self.cfg.tied and "lm_head.weight" not in weights:
            raise JobError(
                f"{weights.path}: tie_word_embeddings is false but lm_head.weight is missing"
            )
        self.tokenizer = load_tokenizer(folder, self.cfg.positions)
        host = read_table(weights, self.cfg.shard_table(tp.rank, tp.size), dtype)
        vocab_start = split_range(self.cfg.vocab, tp.rank, tp.size).start
        self.outputs = {
            "logprob": OutputSpec((), np.dtype("float64")),
            "num_tokens": OutputSpec((), np.dtype("int64")),
        }
        forward = partial(gpt2_forward, cfg=self.cfg, vocab_start=vocab_start)
        self.bind(backend, dtype, tp, host, forward)  # weight_bytes: the file's
        self.params["layers"]["attn.scale"] = backend.asarray(self.cfg.attention_scales(dtype))

    def predict_items(
        self, items: list, max_tokens: int, on_rows: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Scores in input order; texts packed several to a row (few padded tokens)."""
        ids = self.encode(items, self.cfg.positions, self.cfg.vocab)
        logprob = np.zeros(len(items), np.float64)
        for batch, token_logp in self.packed_results(ids, max_tokens):
            logprob[batch.rows] = sequence_sums(batch, token_logp)
            if on_rows is not None:
                on_rows(len(batch.rows))
        num_tokens = np.array([len(t) for t in ids], np.int64)
        return {"logprob": logprob, "num_tokens": num_tokens}

    def activation_bytes(self, max_tokens: int) -> int:
        """A batch's largest temporaries: (tokens, hidden) arrays, the MLP's (tokens,
        inner / tp), the attention scores, and the head's logits (capped)."""
        c, seq = self.cfg, min(self.cfg.positions, max_tokens)
        per_token = 4 * c.hidden + c.inner // self.tp_size + c.heads // self.tp_size * seq
        logits = min(LOGITS_BYTES, max_tokens * c.vocab // self.tp_size * self.dtype.itemsize)
        return max_tokens * per_token * self.dtype.itemsize + logits

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "model_type": "gpt2",
            "task": "score",
            "hidden": c.hidden,
            "layers": c.layers,
            "heads": c.heads,
            "vocab": c.vocab,
            "max_length": c.positions,
        }


def load(folder: Path, config: dict, backend: Any, dtype: str, tp: Collectives, task: str):
    return Gpt2Scorer(folder, config, backend, dtype, tp)
