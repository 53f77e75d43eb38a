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
    gelu_tanh,
    layer_norm,
    load_tokenizer,
    split_heads,
    stack_layers,
)
from hpcinfer.parallel import column_linear, matmul, reduce_from_tp_region, row_linear, shard_range

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")
LOGITS_BYTES = 256 * 2**20  # the head runs over as many rows as fit in this at a time


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

    @classmethod
    def from_json(cls, config: dict[str, Any], where: Path) -> Gpt2Config:
        activation = config.get("activation_function", "gelu_new")
        if activation not in ACTIVATIONS:
            raise JobError(
                f"{where}: activation_function {activation!r} is not supported "
                f"(known: {', '.join(ACTIVATIONS)})"
            )
        if config.get("add_cross_attention"):
            raise JobError(f"{where}: add_cross_attention is not supported (decoder-only GPT-2)")
        try:
            hidden, heads = int(config["n_embd"]), int(config["n_head"])
            layers, vocab = int(config["n_layer"]), int(config["vocab_size"])
            positions = int(config.get("n_positions", config.get("n_ctx", 1024)))
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"{where}: missing or invalid {e}") from None
        if hidden % heads:
            raise JobError(f"{where}: n_embd {hidden} is not a multiple of n_head {heads}")
        return cls(
            hidden=hidden,
            heads=heads,
            layers=layers,
            inner=int(config.get("n_inner") or 4 * hidden),
            vocab=vocab,
            positions=positions,
            eps=float(config.get("layer_norm_epsilon", 1e-5)),
            activation=activation,
            scale_by_layer=bool(config.get("scale_attn_by_inverse_layer_idx", False)),
            scale_attn=bool(config.get("scale_attn_weights", True)),
            tied=bool(config.get("tie_word_embeddings", True)),
        )


def activate(x: Any, name: str, xp: Any, erf: Any) -> Any:
    if name == "gelu":
        return gelu_erf(x, erf)
    if name == "relu":
        return xp.maximum(x, 0)
    return gelu_tanh(x, xp)  # gelu_new, gelu_pytorch_tanh


def vocab_lookup(table: Any, ids: Any, start: int, xp: Any, tp: Collectives) -> Any:
    """Rows `ids` of a vocabulary split over the group: each rank fills the ids in its
    range [start, start + len(table)), zeros elsewhere; one all-reduce completes them."""
    local = ids - start
    inside = (local >= 0) & (local < table.shape[0])
    found = table[xp.where(inside, local, 0)] * inside[..., None].astype(table.dtype)
    return reduce_from_tp_region(found, tp)


def token_logprobs(x: Any, head: Any, ids: Any, start: int, xp: Any, tp: Collectives) -> Any:
    """log p(ids[:, i+1] | ..i) from final hidden states x (B, L, H), (B, L-1), with the
    vocabulary split over the group (`head`: this rank's rows [start, start + V_r))."""
    logits = matmul(x[:, :-1], head.T)  # (B, L-1, V_r)
    peak = logits.max(axis=-1)
    lse = peak + xp.log(xp.exp(logits - peak[..., None]).sum(axis=-1))  # this rank's slice
    local = ids[:, 1:] - start
    inside = (local >= 0) & (local < head.shape[0])
    picked = xp.take_along_axis(logits, xp.where(inside, local, 0)[..., None], axis=-1)[..., 0]
    target = picked * inside.astype(logits.dtype)  # the target's logit, on one rank only
    parts = tp.all_gather_last(xp.stack([lse, target], axis=-1), (2,) * tp.size)  # (B, L-1, 2tp)
    lses, targets = parts[..., 0::2], parts[..., 1::2]
    top = lses.max(axis=-1)
    total = top + xp.log(xp.exp(lses - top[..., None]).sum(axis=-1))  # over the whole vocab
    return targets.sum(axis=-1) - total


def gpt2_forward(
    params, ids, mask, *, xp, erf, scan, tp: Collectives, cfg: Gpt2Config, vocab_start: int
):
    """ids, mask (B, L) -> log p of each next token, (B, L-1), 0 where masked; the same
    on every TP rank."""
    batch, seq = ids.shape
    x = vocab_lookup(params["wte"], ids, vocab_start, xp, tp) + params["wpe"][:seq]
    d = cfg.hidden // cfg.heads
    keys = mask[:, None, None, :].astype(x.dtype)  # (B, 1, 1, L)
    causal = xp.tril(xp.ones((seq, seq), dtype=x.dtype))  # query i sees keys 0..i
    bias = (1.0 - causal * keys) * -1e9  # (B, 1, L, L)

    def layer(x, p):
        h = layer_norm(x, p["ln1_w"], p["ln1_b"], cfg.eps, xp)
        q = split_heads(column_linear(h, p["q_w"], p["q_b"], tp), d, xp)
        k = split_heads(column_linear(h, p["k_w"], p["k_b"], tp), d, xp)
        v = split_heads(column_linear(h, p["v_w"], p["v_b"], tp), d, xp)
        ctx = attention(q, k, v, bias, p["scale"], xp)
        x = x + row_linear(ctx, p["o_w"], p["o_b"], tp)
        h = layer_norm(x, p["ln2_w"], p["ln2_b"], cfg.eps, xp)
        h = activate(column_linear(h, p["fc_w"], p["fc_b"], tp), cfg.activation, xp, erf)
        return x + row_linear(h, p["proj_w"], p["proj_b"], tp)

    x = scan(layer, x, params["layers"])
    x = layer_norm(x, params["lnf_w"], params["lnf_b"], cfg.eps, xp)
    head = params.get("head", params["wte"])  # its own only when not tied to wte
    # The head's logits (rows, L-1, V_r) are the largest temporaries: a few rows at a time.
    step = max(1, LOGITS_BYTES // max(1, seq * head.shape[0] * x.dtype.itemsize))
    parts = [
        token_logprobs(x[r : r + step], head, ids[r : r + step], vocab_start, xp, tp)
        for r in range(0, batch, step)
    ]
    logp = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
    return logp * mask[:, 1:].astype(logp.dtype)


def read_gpt2_shard(
    folder: Path, cfg: Gpt2Config, dtype: str, tp_rank: int, tp: int
) -> tuple[dict, int]:
    """This TP rank's tensors, reading only its slices; and its vocabulary's first id."""
    f = SafetensorsFile(folder / "model.safetensors")
    prefix = "transformer." if "transformer.wte.weight" in f else ""

    def full(name):
        return f.read(prefix + name, dtype=dtype)

    def expect(name, shape):
        if f.info(name).shape != shape:
            raise JobError(
                f"{f.path}: {name} has shape {f.info(name).shape}, expected {shape} "
                "from config.json"
            )

    vocab = shard_range(cfg.vocab, tp_rank, tp)
    vocab_rows = slice(vocab.start, vocab.stop)
    expect(prefix + "wte.weight", (cfg.vocab, cfg.hidden))
    params = {
        "wte": f.read(prefix + "wte.weight", rows=vocab_rows, dtype=dtype),
        "wpe": full("wpe.weight"),
        "lnf_w": full("ln_f.weight"),
        "lnf_b": full("ln_f.bias"),
    }
    if not cfg.tied:  # tied: the head is wte itself (one array, not a copy)
        if "lm_head.weight" not in f:
            raise JobError(f"{f.path}: tie_word_embeddings is false but lm_head.weight is missing")
        expect("lm_head.weight", (cfg.vocab, cfg.hidden))
        params["head"] = f.read("lm_head.weight", rows=vocab_rows, dtype=dtype)

    heads = shard_range(cfg.hidden, tp_rank, tp)  # this rank's columns of q, k and v
    inner = shard_range(cfg.inner, tp_rank, tp)
    d = cfg.hidden // cfg.heads
    layers = []
    for i in range(cfg.layers):
        n = f"{prefix}h.{i}."
        expect(n + "attn.c_attn.weight", (cfg.hidden, 3 * cfg.hidden))
        expect(n + "mlp.c_fc.weight", (cfg.hidden, cfg.inner))
        layer = {}
        for j, key in enumerate("qkv"):  # c_attn's columns: [q | k | v], heads in order
            cols = slice(j * cfg.hidden + heads.start, j * cfg.hidden + heads.stop)
            layer[f"{key}_w"] = f.read(n + "attn.c_attn.weight", cols=cols, dtype=dtype)
            layer[f"{key}_b"] = f.read(n + "attn.c_attn.bias", rows=cols, dtype=dtype)
        layer["o_w"] = f.read(n + "attn.c_proj.weight", rows=_slice(heads), dtype=dtype)
        layer["o_b"] = f.read(n + "attn.c_proj.bias", dtype=dtype)
        layer["fc_w"] = f.read(n + "mlp.c_fc.weight", cols=_slice(inner), dtype=dtype)
        layer["fc_b"] = f.read(n + "mlp.c_fc.bias", rows=_slice(inner), dtype=dtype)
        layer["proj_w"] = f.read(n + "mlp.c_proj.weight", rows=_slice(inner), dtype=dtype)
        layer["proj_b"] = f.read(n + "mlp.c_proj.bias", dtype=dtype)
        for key, name in (("ln1", "ln_1"), ("ln2", "ln_2")):
            layer[f"{key}_w"] = f.read(n + name + ".weight", dtype=dtype)
            layer[f"{key}_b"] = f.read(n + name + ".bias", dtype=dtype)
        scale = (1.0 / np.sqrt(d) if cfg.scale_attn else 1.0) / (i + 1 if cfg.scale_by_layer else 1)
        layer["scale"] = np.asarray(scale, dtype=dtype)
        layers.append(layer)
    params["layers"] = stack_layers(layers)
    return params, vocab.start


def _slice(r: range) -> slice:
    return slice(r.start, r.stop)


class Gpt2Scorer(TextModel):
    """Texts (or token-id lists) in; `logprob` (float64) and `num_tokens` per text out."""

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
        where = folder / "config.json"
        self.cfg = Gpt2Config.from_json(config, where)
        check_heads_split(self.cfg.heads, tp.size, where)
        if tp.size > self.cfg.vocab:
            raise JobError(f"{where}: run.tp = {tp.size} is larger than the vocabulary")
        self.tokenizer = load_tokenizer(folder, self.cfg.positions)
        host, vocab_start = read_gpt2_shard(folder, self.cfg, dtype, tp_rank, tp.size)
        self.outputs = {
            "logprob": ((), np.dtype("float64")),
            "num_tokens": ((), np.dtype("int64")),
        }
        forward = partial(gpt2_forward, cfg=self.cfg, vocab_start=vocab_start)
        self.bind(backend, dtype, tp, host, forward)

    def predict_items(self, items: list, batch_size: int) -> dict[str, np.ndarray]:
        """Scores in input order; texts batched by length so padding stays small."""
        ids = encode_items(self.tokenizer, items, self.cfg.positions, self.cfg.vocab)
        logprob = np.zeros(len(items), np.float64)
        for rows, token_logp in self.run_batches(ids, batch_size):
            logprob[rows] = token_logp.astype(np.float64).sum(axis=1)  # summed in float64
        num_tokens = np.array([len(t) for t in ids], np.int64)
        return {"logprob": logprob, "num_tokens": num_tokens}

    def activation_bytes(self, batch_size: int) -> int:
        c, seq = self.cfg, self.cfg.positions
        per_row = seq * (4 * c.hidden + c.inner // self.tp_size + c.heads // self.tp_size * seq)
        logits = min(LOGITS_BYTES, batch_size * seq * c.vocab // self.tp_size * self.dtype.itemsize)
        return batch_size * per_row * self.dtype.itemsize + logits

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
