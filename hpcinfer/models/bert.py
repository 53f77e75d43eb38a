"""BERT-family encoders as sentence embedders (all-MiniLM-L6-v2 and its kin).

Reads a Hugging Face folder: config.json (model_type "bert"; every size from it),
model.safetensors (keys with or without the "bert." prefix), tokenizer.json, and the
sentence-transformers files that decide pooling (1_Pooling/config.json: mean, cls or
max), normalisation (modules.json lists a Normalize module) and the maximum length
(sentence_bert_config.json).

One encoder layer, hidden size H, heads n (d = H / n), under tensor parallelism over tp
ranks (heads split: each rank holds n / tp heads):

    q, k, v = x @ Wq_r + bq_r, ...            # (B, L, H/tp)  column-parallel, no comm
    a = softmax(q k^T / sqrt(d) + mask) v      # (B, n/tp, L, d) this rank's heads
    x = LN(x + row_linear(a, Wo_r, bo))        # one all-reduce
    x = LN(x + row_linear(gelu(x @ Wi_r + bi_r), Wo2_r, bo2))   # one all-reduce

so a layer costs two all-reduces; embeddings and layer norms are replicated. Parameters
keep the file's names (without the "bert." prefix; layer tensors relative to
"encoder.layer.{i}.").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_checkpoint import open_weights
from hpcinfer.io.tokenizer_files import load_tokenizer
from hpcinfer.models.base import OutputSpec
from hpcinfer.models.shards import ShardTable, column, read_table, row, whole
from hpcinfer.models.text import TextModel, check_heads_split, encode_items
from hpcinfer.models.transformer import attention, gelu_erf, layer_norm, split_heads
from hpcinfer.parallel.partition import split_slice
from hpcinfer.parallel.tensor import Collectives, Solo, column_linear, row_linear

POOLING_MODES = ("mean", "cls", "max")
COLUMN_SPLIT = (  # nn.Linear layers split along their outputs
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "intermediate.dense",
)
ROW_SPLIT = ("attention.output.dense", "output.dense")  # ... along their inputs
LAYER_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")
EMBEDDINGS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    heads: int
    layers: int
    intermediate: int
    eps: float
    max_length: int  # tokens per text after truncation
    pooling: str
    normalize: bool
    prefix: str = ""  # "bert." when the file's tensor names carry it

    @classmethod
    def from_folder(cls, folder: Path, config: dict[str, Any], names: Any = ()) -> BertConfig:
        """`names`: the weight file's tensor names (they decide the prefix)."""
        where = folder / "config.json"
        if config.get("hidden_act", "gelu") != "gelu":
            raise JobError(
                f"{where}: hidden_act {config.get('hidden_act')!r} is not supported (known: gelu)"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise JobError(f"{where}: only absolute position embeddings are supported")
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            layers, inter = int(config["num_hidden_layers"]), int(config["intermediate_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"{where}: missing or invalid {e}") from None
        max_length = int(config.get("max_position_embeddings", 512))
        sbert = folder / "sentence_bert_config.json"
        if sbert.is_file():
            max_length = min(max_length, int(json.loads(sbert.read_text())["max_seq_length"]))
        return cls(
            hidden,
            heads,
            layers,
            inter,
            float(config.get("layer_norm_eps", 1e-12)),
            max_length,
            *read_pooling(folder),
            prefix="bert." if "bert.embeddings.word_embeddings.weight" in names else "",
        )

    # -- what `inspect` and the loader share ------------------------------------------

    @property
    def title(self) -> str:
        return (
            f"bert, {self.layers} layers, hidden {self.hidden}, {self.heads} heads, "
            f"intermediate {self.intermediate}"
        )

    unit = "token"

    def misfit(self, tp: int) -> str | None:
        return None if self.heads % tp == 0 else f"tp does not divide the {self.heads} heads"

    def shard_table(self, rank: int, size: int) -> ShardTable:
        """Heads and the feed-forward block split; embeddings and norms whole."""
        p, h = self.prefix, self.hidden
        heads = split_slice(h, rank, size)
        inner = split_slice(self.intermediate, rank, size)
        top = {name: whole(p + name) for name in EMBEDDINGS}
        layers = []
        for i in range(self.layers):
            n = f"{p}encoder.layer.{i}."
            layer = {}
            for name in COLUMN_SPLIT:
                part, out = (inner, self.intermediate) if name.startswith("inter") else (heads, h)
                layer[name + ".weight"] = column(n + name + ".weight", part, expect=(out, h))
                layer[name + ".bias"] = column(n + name + ".bias", part, False, expect=(out,))
            for name in ROW_SPLIT:
                attn = name.startswith("attention")
                part, n_in = (heads, h) if attn else (inner, self.intermediate)
                layer[name + ".weight"] = row(n + name + ".weight", part, expect=(h, n_in))
                layer[name + ".bias"] = whole(n + name + ".bias", expect=(h,))
            for name in LAYER_NORMS:
                for t in ("weight", "bias"):
                    layer[f"{name}.{t}"] = whole(f"{n}{name}.{t}", expect=(h,))
            layers.append(layer)
        return ShardTable(top, layers)

    def collectives(self, tp: int) -> dict[str, int]:
        reduces = 0 if tp == 1 else 2 * self.layers
        return {"all_reduce": reduces, "all_gather": 0, "values_per_row": reduces * self.hidden}


def read_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) from the sentence-transformers files; mean, no norm else."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", False
    modules = json.loads(modules_path.read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg = json.loads((folder / m["path"] / "config.json").read_text())
            modes = [
                mode
                for mode in POOLING_MODES
                if cfg.get(f"pooling_mode_{mode}_token") or cfg.get(f"pooling_mode_{mode}_tokens")
            ]
            unknown = [
                k
                for k, v in cfg.items()
                if k.startswith("pooling_mode_") and v and not any(p in k for p in modes)
            ]
            if len(modes) != 1 or unknown:
                raise JobError(
                    f"{folder / m['path'] / 'config.json'}: pooling must be exactly "
                    f"one of {', '.join(POOLING_MODES)}; got {cfg}"
                )
            pooling = modes[0]
    return pooling, normalize


def linear(p: dict, name: str) -> tuple[Any, Any]:
    return p[name + ".weight"], p[name + ".bias"]


def bert_forward(params, ids, mask, *, xp, erf, scan, tp: Collectives, cfg: BertConfig):
    """ids, mask (B, L) -> sentence embeddings (B, H), the same on every TP rank.

    params["layers"] holds every layer's tensors stacked on a leading axis; `scan` runs
    the layer body over it (lax.scan under JAX: one layer compiled, not six).
    """
    e = params
    seq = ids.shape[1]
    x = (
        e["embeddings.word_embeddings.weight"][ids]
        + e["embeddings.position_embeddings.weight"][:seq]
        + e["embeddings.token_type_embeddings.weight"][0]
    )  # (B, L, H)
    x = layer_norm(x, e["embeddings.LayerNorm.weight"], e["embeddings.LayerNorm.bias"], cfg.eps, xp)
    d = cfg.hidden // cfg.heads
    bias = (1.0 - mask[:, None, None, :].astype(x.dtype)) * -1e9  # (B, 1, 1, L)

    def layer(x, p):
        q = split_heads(column_linear(x, *linear(p, "attention.self.query"), tp), d, xp)
        k = split_heads(column_linear(x, *linear(p, "attention.self.key"), tp), d, xp)
        v = split_heads(column_linear(x, *linear(p, "attention.self.value"), tp), d, xp)
        ctx = attention(q, k, v, bias, 1.0 / np.sqrt(d), xp)  # (B, L, h*d)
        x = x + row_linear(ctx, *linear(p, "attention.output.dense"), tp)
        x = layer_norm(x, *linear(p, "attention.output.LayerNorm"), cfg.eps, xp)
        h = gelu_erf(column_linear(x, *linear(p, "intermediate.dense"), tp), erf)  # (B, L, I/tp)
        x = x + row_linear(h, *linear(p, "output.dense"), tp)
        return layer_norm(x, *linear(p, "output.LayerNorm"), cfg.eps, xp)

    x = scan(layer, x, params["layers"])
    m = mask[..., None].astype(x.dtype)  # (B, L, 1)
    if cfg.pooling == "mean":
        pooled = (x * m).sum(axis=1) / xp.maximum(m.sum(axis=1), 1e-9)
    elif cfg.pooling == "cls":
        pooled = x[:, 0]
    else:
        pooled = (x + (m - 1.0) * 1e9).max(axis=1)
    if cfg.normalize:
        pooled = pooled / xp.maximum(xp.sqrt((pooled**2).sum(axis=-1, keepdims=True)), 1e-12)
    return pooled


def architecture(folder: Path, config: dict, weights: Any) -> BertConfig:
    """What `inspect` describes: the config, with the weight file's naming."""
    return BertConfig.from_folder(folder, config, weights.tensors)


class BertEmbedder(TextModel):
    """Texts in, sentence embeddings out (dataset "embeddings", (N, H) float32)."""

    def __init__(
        self, folder: Path, config: dict, backend: Any, dtype: str, tp: Collectives | None = None
    ):
        tp = tp or Solo()
        weights = open_weights(folder)
        self.cfg = BertConfig.from_folder(folder, config, weights.tensors)
        check_heads_split(self.cfg.heads, tp.size, folder / "config.json")
        self.tokenizer = load_tokenizer(folder, self.cfg.max_length)
        default_vocab = self.tokenizer.vocab_size if self.tokenizer else None
        self.vocab_size = int(config.get("vocab_size", default_vocab))
        host = read_table(weights, self.cfg.shard_table(tp.rank, tp.size), dtype)
        self.outputs = {"embeddings": OutputSpec((self.cfg.hidden,), np.dtype("float32"))}
        self.bind(backend, dtype, tp, host, partial(bert_forward, cfg=self.cfg))

    def predict_items(self, items: list, batch_size: int) -> dict[str, np.ndarray]:
        """Embeddings of texts (or token-id lists) in input order; batched by length."""
        ids = encode_items(self.tokenizer, items, self.cfg.max_length, self.vocab_size)
        out = np.empty((len(items), self.cfg.hidden), np.float32)
        for rows, y in self.run_batches(ids, batch_size):
            out[rows] = y
        return {"embeddings": out}

    def activation_bytes(self, batch_size: int) -> int:
        seq = self.cfg.max_length
        heads = self.cfg.heads // self.tp_size
        return batch_size * seq * (4 * self.cfg.hidden + heads * seq) * self.dtype.itemsize

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "model_type": "bert",
            "task": "embed",
            "hidden": c.hidden,
            "layers": c.layers,
            "heads": c.heads,
            "pooling": c.pooling,
            "normalize": c.normalize,
            "max_length": c.max_length,
        }


def load(folder: Path, config: dict, backend: Any, dtype: str, tp: Collectives, task: str):
    return BertEmbedder(folder, config, backend, dtype, tp)
