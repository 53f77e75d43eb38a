"""Transformer encoders: BERT, RoBERTa, XLM-RoBERTa, DistilBERT, under tensor parallelism.

The four are one post-layer-norm encoder with different tensor names and embeddings:

    model_type     embeddings: x0 = LN(word[ids] + pos[p] + type[0])
    bert           p = 0, 1, ..., L-1
    roberta,       p = padding_idx + 1 + i for the i-th real token, padding_idx for
    xlm-roberta    padding (so L <= positions - padding_idx - 1); one token type
    distilbert     p = 0, 1, ..., L-1; no token types

Layer tensors are named encoder.layer.{i}.attention.self.query, ... (BERT, RoBERTa) or
transformer.layer.{i}.attention.q_lin, ... (DistilBERT): `Names` below.

One layer, hidden H, n heads (d = H / n), under tensor parallelism over tp ranks (heads
split: each rank holds n / tp heads and I / tp of the feed-forward width):

    q, k, v = x @ Wq_r + bq_r, ...            # (B, L, H/tp)  column-parallel, no comm
    a = softmax(q k^T / sqrt(d) + mask) v      # (B, n/tp, L, d) this rank's heads
    x = LN(x + row_linear(a, Wo_r, bo))        # one all-reduce
    x = LN(x + row_linear(act(x @ Wi_r + bi_r), Wo2_r, bo2))   # one all-reduce

so a layer costs two all-reduces; embeddings and layer norms are replicated. Parameters
keep the file's names (without the "bert." / "roberta." / "distilbert." prefix; layer
tensors relative to their layer). The pooler (`pooler.dense.*`) is never read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.models.shards import ShardTable, column, row, whole
from hpcinfer.models.transformer import (
    attention,
    gelu_erf,
    gelu_tanh,
    layer_norm,
    segment_bias,
    split_heads,
)
from hpcinfer.parallel.partition import split_slice
from hpcinfer.parallel.tensor import Collectives, column_linear, row_linear

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass(frozen=True)
class Names:
    """One architecture's names: config.json keys, and tensor names (relative to the
    prefix, and to the layer)."""

    sizes: tuple[str, str, str, str]  # config keys of hidden, heads, layers, intermediate
    activation: str  # config key of the feed-forward activation
    prefixes: tuple[str, ...]  # what a file may put before every tensor name
    layer: str  # "{i}" is the layer index
    query: str
    key: str
    value: str
    attn_out: str
    attn_norm: str
    ffn_in: str
    ffn_out: str
    ffn_norm: str
    token_types: bool  # embeddings.token_type_embeddings.weight exists

    def column_split(self) -> tuple[str, ...]:  # nn.Linear split along its outputs
        return (self.query, self.key, self.value, self.ffn_in)

    def row_split(self) -> tuple[str, ...]:  # ... along its inputs
        return (self.attn_out, self.ffn_out)


BERT_NAMES = Names(
    ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"),
    "hidden_act",
    ("bert.",),
    "encoder.layer.{i}.",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
    token_types=True,
)
ROBERTA_NAMES = replace(BERT_NAMES, prefixes=("roberta.",))
DISTILBERT_NAMES = Names(
    ("dim", "n_heads", "n_layers", "hidden_dim"),
    "activation",
    ("distilbert.",),
    "transformer.layer.{i}.",
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    "attention.out_lin",
    "sa_layer_norm",
    "ffn.lin1",
    "ffn.lin2",
    "output_layer_norm",
    token_types=False,
)
NAMES = {
    "bert": BERT_NAMES,
    "roberta": ROBERTA_NAMES,
    "xlm-roberta": ROBERTA_NAMES,
    "distilbert": DISTILBERT_NAMES,
}


@dataclass(frozen=True)
class EncoderConfig:
    model_type: str  # a key of NAMES
    hidden: int
    heads: int
    layers: int
    intermediate: int
    vocab: int
    positions: int  # rows of the position embedding table
    eps: float
    activation: str
    pad_id: int | None  # RoBERTa's padding_idx (position ids count from it); else None
    prefix: str = ""  # "bert." etc. when the file's tensor names carry it

    @classmethod
    def from_json(cls, config: dict[str, Any], where: Path, names: Any = ()) -> EncoderConfig:
        """`names`: the weight file's tensor names (they decide the prefix)."""
        model_type = config.get("model_type")
        if model_type not in NAMES:
            raise JobError(f"{where}: model_type {model_type!r} is not an encoder hpcinfer knows")
        n = NAMES[model_type]
        activation = config.get(n.activation, "gelu")
        if activation not in ACTIVATIONS:
            raise JobError(
                f"{where}: {n.activation} {activation!r} is not supported "
                f"(known: {', '.join(ACTIVATIONS)})"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise JobError(f"{where}: only absolute position embeddings are supported")
        try:
            hidden, heads, layers, inter = (int(config[k]) for k in n.sizes)
            vocab = int(config["vocab_size"])
            positions = int(config.get("max_position_embeddings", 512))
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"{where}: missing or invalid {e}") from None
        if min(hidden, heads, layers, inter, vocab, positions) < 1:
            raise JobError(f"{where}: every size must be at least 1")
        if hidden % heads:
            raise JobError(f"{where}: {n.sizes[0]} {hidden} is not a multiple of {heads} heads")
        pad_id = None
        if model_type in ("roberta", "xlm-roberta"):
            pad_id = config.get("pad_token_id", 1)
            if not isinstance(pad_id, int) or not 0 <= pad_id < positions - 1:
                raise JobError(f"{where}: pad_token_id {pad_id!r} is not a valid padding_idx")
        word = "embeddings.word_embeddings.weight"
        prefix = next((p for p in n.prefixes if p + word in names), "")
        return cls(
            model_type,
            hidden,
            heads,
            layers,
            inter,
            vocab,
            positions,
            float(config.get("layer_norm_eps", 1e-12)),  # DistilBERT: always 1e-12
            activation,
            pad_id,
            prefix,
        )

    @property
    def names(self) -> Names:
        return NAMES[self.model_type]

    @property
    def max_tokens(self) -> int:
        """The longest text the position embeddings allow (RoBERTa's start after pad)."""
        return self.positions - (self.pad_id + 1 if self.pad_id is not None else 0)

    # -- what `inspect` and the loader share ------------------------------------------

    unit = "token"

    @property
    def title(self) -> str:
        return (
            f"{self.model_type}, {self.layers} layers, hidden {self.hidden}, {self.heads} "
            f"heads, intermediate {self.intermediate}"
        )

    def misfit(self, tp: int) -> str | None:
        return None if self.heads % tp == 0 else f"tp does not divide the {self.heads} heads"

    def shard_table(self, rank: int, size: int) -> ShardTable:
        """Heads and the feed-forward block split; embeddings and norms whole."""
        p, h, n = self.prefix, self.hidden, self.names
        heads = split_slice(h, rank, size)
        inner = split_slice(self.intermediate, rank, size)
        top = {
            "embeddings.word_embeddings.weight": (self.vocab, h),
            "embeddings.position_embeddings.weight": (self.positions, h),
            "embeddings.LayerNorm.weight": (h,),
            "embeddings.LayerNorm.bias": (h,),
        }
        if n.token_types:
            top["embeddings.token_type_embeddings.weight"] = None  # any number of types
        table = {name: whole(p + name, expect=shape) for name, shape in top.items()}
        layers = []
        for i in range(self.layers):
            at = p + n.layer.format(i=i)
            layer = {}
            for name in n.column_split():
                part, out = (inner, self.intermediate) if name == n.ffn_in else (heads, h)
                layer[name + ".weight"] = column(at + name + ".weight", part, expect=(out, h))
                layer[name + ".bias"] = column(at + name + ".bias", part, False, expect=(out,))
            for name in n.row_split():
                part, n_in = (heads, h) if name == n.attn_out else (inner, self.intermediate)
                layer[name + ".weight"] = row(at + name + ".weight", part, expect=(h, n_in))
                layer[name + ".bias"] = whole(at + name + ".bias", expect=(h,))
            for name in (n.attn_norm, n.ffn_norm):
                for t in ("weight", "bias"):
                    layer[f"{name}.{t}"] = whole(f"{at}{name}.{t}", expect=(h,))
            layers.append(layer)
        return ShardTable(table, layers)

    def collectives(self, tp: int) -> dict[str, int]:
        reduces = 0 if tp == 1 else 2 * self.layers
        return {"all_reduce": reduces, "all_gather": 0, "values_per_row": reduces * self.hidden}


def linear(p: dict, name: str) -> tuple[Any, Any]:
    return p[name + ".weight"], p[name + ".bias"]


def activate(x: Any, name: str, xp: Any, erf: Any) -> Any:
    if name == "gelu":
        return gelu_erf(x, erf)
    if name == "relu":
        return xp.maximum(x, 0)
    return gelu_tanh(x, xp)  # gelu_new, gelu_pytorch_tanh


def position_ids(cfg: EncoderConfig) -> Any:
    """A sequence's position ids, for the batcher: 0, 1, 2, ... (BERT, DistilBERT); RoBERTa
    counts real tokens from pad_id + 1, and a padding token in the text sits at pad_id."""
    if cfg.pad_id is None:
        return None
    pad = cfg.pad_id

    def roberta(ids: np.ndarray) -> np.ndarray:
        real = (ids != pad).astype(np.int64)
        return np.cumsum(real) * real + pad

    return roberta


def embed(e: dict, ids: Any, positions: Any, cfg: EncoderConfig, xp: Any) -> Any:
    """Token, position (and token type 0) embeddings, layer-normed: (R, L, H)."""
    x = (
        e["embeddings.word_embeddings.weight"][ids]
        + e["embeddings.position_embeddings.weight"][positions]
    )
    if cfg.names.token_types:
        x = x + e["embeddings.token_type_embeddings.weight"][0]
    norm = e["embeddings.LayerNorm.weight"], e["embeddings.LayerNorm.bias"]
    return layer_norm(x, *norm, cfg.eps, xp)


def encoder_forward(
    params, ids, segments, positions, *, xp, erf, scan, tp: Collectives, cfg: EncoderConfig
):
    """Packed rows -> the last layer's token states (R, L, H), the same on every TP rank.

    ids, segments, positions (R, L): several sequences share a row, each token attending
    only to its own sequence's tokens (the same segment). params["layers"] holds every
    layer's tensors stacked on a leading axis; `scan` runs the layer body over it
    (lax.scan under JAX: one layer compiled, not six).
    """
    n = cfg.names
    x = embed(params, ids, positions, cfg, xp)
    d = cfg.hidden // cfg.heads
    bias = segment_bias(segments, x.dtype, xp, causal=False)

    def layer(x, p):
        q = split_heads(column_linear(x, *linear(p, n.query), tp), d, xp)
        k = split_heads(column_linear(x, *linear(p, n.key), tp), d, xp)
        v = split_heads(column_linear(x, *linear(p, n.value), tp), d, xp)
        ctx = attention(q, k, v, bias, 1.0 / math.sqrt(d), xp)  # (R, L, h*d)
        x = x + row_linear(ctx, *linear(p, n.attn_out), tp)
        x = layer_norm(x, *linear(p, n.attn_norm), cfg.eps, xp)
        h = activate(column_linear(x, *linear(p, n.ffn_in), tp), cfg.activation, xp, erf)
        x = x + row_linear(h, *linear(p, n.ffn_out), tp)  # h: (R, L, I/tp)
        return layer_norm(x, *linear(p, n.ffn_norm), cfg.eps, xp)

    return scan(layer, x, params["layers"])
