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

so a layer costs two all-reduces; embeddings and layer norms are replicated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.comm import Collectives, Solo
from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_file import SafetensorsFile
from hpcinfer.models.transformer import (
    TextModel,
    attention,
    check_heads_split,
    encode_items,
    gelu_erf,
    layer_norm,
    load_tokenizer,
    split_heads,
    stack_layers,
)
from hpcinfer.parallel import column_linear, row_linear, shard_range

POOLING_MODES = ("mean", "cls", "max")


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

    @classmethod
    def from_folder(cls, folder: Path, config: dict[str, Any]) -> BertConfig:
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
        )


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


def bert_forward(params, ids, mask, *, xp, erf, scan, tp: Collectives, cfg: BertConfig):
    """ids, mask (B, L) -> sentence embeddings (B, H), the same on every TP rank.

    params["layers"] holds every layer's tensors stacked on a leading axis; `scan` runs
    the layer body over it (lax.scan under JAX: one layer compiled, not six).
    """
    emb = params["embeddings"]
    seq = ids.shape[1]
    x = emb["word"][ids] + emb["position"][:seq] + emb["type"][0]  # (B, L, H)
    x = layer_norm(x, emb["ln_w"], emb["ln_b"], cfg.eps, xp)
    d = cfg.hidden // cfg.heads
    bias = (1.0 - mask[:, None, None, :].astype(x.dtype)) * -1e9  # (B, 1, 1, L)

    def layer(x, p):
        q = split_heads(column_linear(x, p["q_w"], p["q_b"], tp), d, xp)
        k = split_heads(column_linear(x, p["k_w"], p["k_b"], tp), d, xp)
        v = split_heads(column_linear(x, p["v_w"], p["v_b"], tp), d, xp)
        ctx = attention(q, k, v, bias, 1.0 / np.sqrt(d), xp)  # (B, L, h*d)
        x = layer_norm(
            x + row_linear(ctx, p["o_w"], p["o_b"], tp), p["ln1_w"], p["ln1_b"], cfg.eps, xp
        )
        h = gelu_erf(column_linear(x, p["i_w"], p["i_b"], tp), erf)  # (B, L, inter/tp)
        return layer_norm(
            x + row_linear(h, p["o2_w"], p["o2_b"], tp), p["ln2_w"], p["ln2_b"], cfg.eps, xp
        )

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


def read_bert_shard(folder: Path, cfg: BertConfig, dtype: str, tp_rank: int, tp: int) -> dict:
    f = SafetensorsFile(folder / "model.safetensors")
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in f else ""

    def full(name):
        return f.read(prefix + name, dtype=dtype)

    def col(name):  # nn.Linear (out, in): this rank's outputs, held as (in, out/tp)
        r = shard_range(f.info(prefix + name + ".weight").shape[0], tp_rank, tp)
        rows = slice(r.start, r.stop)
        return (
            f.read_transposed(prefix + name + ".weight", rows=rows, dtype=dtype),
            f.read(prefix + name + ".bias", rows=rows, dtype=dtype),
        )

    def row(name):  # this rank's inputs, held as (in/tp, out); the bias whole
        r = shard_range(f.info(prefix + name + ".weight").shape[1], tp_rank, tp)
        return (
            f.read_transposed(prefix + name + ".weight", cols=slice(r.start, r.stop), dtype=dtype),
            f.read(prefix + name + ".bias", dtype=dtype),
        )

    params = {
        "embeddings": {
            "word": full("embeddings.word_embeddings.weight"),
            "position": full("embeddings.position_embeddings.weight"),
            "type": full("embeddings.token_type_embeddings.weight"),
            "ln_w": full("embeddings.LayerNorm.weight"),
            "ln_b": full("embeddings.LayerNorm.bias"),
        },
        "layers": [],
    }
    for i in range(cfg.layers):
        n = f"encoder.layer.{i}."
        layer = {}
        for key, name in (
            ("q", "attention.self.query"),
            ("k", "attention.self.key"),
            ("v", "attention.self.value"),
            ("i", "intermediate.dense"),
        ):
            layer[f"{key}_w"], layer[f"{key}_b"] = col(n + name)
        layer["o_w"], layer["o_b"] = row(n + "attention.output.dense")
        layer["o2_w"], layer["o2_b"] = row(n + "output.dense")
        for key, name in (("ln1", "attention.output.LayerNorm"), ("ln2", "output.LayerNorm")):
            layer[f"{key}_w"], layer[f"{key}_b"] = (
                full(n + name + ".weight"),
                full(n + name + ".bias"),
            )
        params["layers"].append(layer)
    params["layers"] = stack_layers(params["layers"])
    return params


class BertEmbedder(TextModel):
    """Texts in, sentence embeddings out (dataset "embeddings", (N, H) float32)."""

    def __init__(
        self,
        folder: Path,
        config: dict,
        backend: Any,
        dtype: str,
        tp: Collectives | None = None,
        tp_rank: int = 0,
    ):
        tp = tp or Solo()
        self.cfg = BertConfig.from_folder(folder, config)
        check_heads_split(self.cfg.heads, tp.size, folder / "config.json")
        self.tokenizer = load_tokenizer(folder, self.cfg.max_length)
        self.vocab_size = int(config.get("vocab_size", self.tokenizer.get_vocab_size()))
        host = read_bert_shard(folder, self.cfg, dtype, tp_rank, tp.size)
        self.outputs = {"embeddings": ((self.cfg.hidden,), np.dtype("float32"))}
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
