"""The Llama family's architecture (llama, mistral, qwen2, qwen3) from config.json, and
what each tensor-parallel rank holds of it: the config object that `inspect` describes
and the loader reads with (title, misfit(tp), shard_table(rank, size), collectives(tp)).

Grouped-query attention over a TP group of tp ranks (n query heads, k KV heads, groups of
g = n / k query heads sharing one KV head):

    query heads      split: rank r holds split_range(n, r, tp) (uneven where tp does not
                     divide n: the first n % tp ranks hold one more)
    KV heads         the ones its query heads use: [first // g, last // g]. When tp divides
                     k that is exactly k / tp heads per rank; otherwise neighbouring ranks
                     both hold a shared KV head (replicated, read by each from the file)
    o_proj           row-parallel over the rank's query heads (one all-reduce)
    gate, up / down  column- / row-parallel over the intermediate size (one all-reduce)
    embedding, head  vocabulary-parallel (hpcinfer.models.vocab)

Worked example, SmolLM2 (9 heads, 3 KV heads, g = 3) at tp = 2: rank 0 holds query heads
0-4 and KV heads 0-1, rank 1 query heads 5-8 and KV heads 1-2 (KV head 1 on both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError
from hpcinfer.models.rope import Rope, rope_from_config
from hpcinfer.models.shards import Part, ShardTable, column, row, whole
from hpcinfer.models.vocab import decoder_collectives
from hpcinfer.parallel.partition import split_range, split_slice

ACTIVATIONS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class LlamaConfig:
    model_type: str
    hidden: int
    inner: int  # intermediate_size
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int  # embedding rows (may exceed the tokenizer's vocabulary: padded)
    eps: float
    activation: str
    rope: Rope
    tied: bool
    qkv_bias: bool  # q_proj, k_proj, v_proj biases
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3: RMSNorm of each query and key head before the rotation
    windows: tuple[int, ...]  # per layer: sliding attention window, 0 for full attention
    prefix: str = "model."  # "" when the file holds the bare model (no "model." names)
    has_head: bool = True  # tied, or lm_head.weight is in the file
    source: str = "safetensors"  # or "gguf"
    rope_freqs: bool = False  # GGUF's rope_freqs.weight: theta_i divided by it (llama3)

    @classmethod
    def from_json(
        cls, config: dict[str, Any], where: Path, names: Any = (), source: str = "safetensors"
    ) -> LlamaConfig:
        """`names`: the weight file's tensor names (they decide the prefix and the head)."""
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise JobError(f"{where}: model_type {model_type!r} is not a Llama-family decoder")
        activation = config.get("hidden_act", "silu")
        if activation not in ACTIVATIONS:
            raise JobError(
                f"{where}: hidden_act {activation!r} is not supported "
                f"(known: {', '.join(ACTIVATIONS)})"
            )
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            layers, inner = int(config["num_hidden_layers"]), int(config["intermediate_size"])
            vocab = int(config["vocab_size"])
            kv_heads = int(config.get("num_key_value_heads") or heads)
            default_dim = 128 if model_type == "qwen3" else hidden // max(heads, 1)
            head_dim = int(config.get("head_dim") or default_dim)
            eps = float(config.get("rms_norm_eps", 1e-6))
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"{where}: missing or invalid {e}") from None
        for key, value in (("num_attention_heads", heads), ("num_hidden_layers", layers)):
            if value < 1:
                raise JobError(f"{where}: {key} must be at least 1, got {value}")
        if kv_heads < 1 or heads % kv_heads:
            raise JobError(
                f"{where}: num_attention_heads {heads} is not a multiple of "
                f"num_key_value_heads {kv_heads}"
            )
        prefix = "model." if "model.embed_tokens.weight" in names else ""
        tied = bool(config.get("tie_word_embeddings", False))
        attention_bias = bool(config.get("attention_bias", False))
        qwen2 = model_type == "qwen2"
        return cls(
            model_type=model_type,
            hidden=hidden,
            inner=inner,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=vocab,
            eps=eps,
            activation=activation,
            rope=rope_from_config(config, head_dim, where),
            tied=tied,
            qkv_bias=qwen2 or attention_bias,  # Qwen2's q/k/v always have biases, o none
            o_bias=attention_bias and not qwen2,
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            windows=sliding_windows(config, model_type, layers, where),
            prefix=prefix,
            has_head=tied or "lm_head.weight" in names,
            source=source,
            rope_freqs="rope_freqs.weight" in names,
        )

    # -- what `inspect` and the loader share ------------------------------------------

    unit = "token"

    @property
    def title(self) -> str:
        kv = f"{self.kv_heads} KV heads" if self.kv_heads != self.heads else "no GQA"
        rope = "rope_freqs.weight factors" if self.rope_freqs else self.rope.kind
        extras = [
            f"rope {rope}",
            "tied head" if self.tied else ("own head" if self.has_head else "no head"),
        ]
        if any(self.windows):
            extras.append(f"sliding window {max(self.windows)}")
        return (
            f"{self.model_type} ({self.source}), {self.layers} layers, hidden {self.hidden}, "
            f"{self.heads} heads of {self.head_dim} over {kv}, intermediate {self.inner}, "
            f"vocabulary {self.vocab}, {self.rope.max_length} positions; " + ", ".join(extras)
        )

    @property
    def max_length(self) -> int:
        return self.rope.max_length

    def misfit(self, tp: int) -> str | None:
        if tp > self.heads:
            return f"tp is larger than the {self.heads} query heads (each rank needs one)"
        if tp > self.inner:
            return f"tp is larger than the intermediate size {self.inner}"
        return f"tp is larger than the vocabulary {self.vocab}" if tp > self.vocab else None

    def head_ranges(self, rank: int, size: int) -> tuple[range, range]:
        """(query heads, KV heads) rank `rank` of `size` holds."""
        q = split_range(self.heads, rank, size)
        group = self.heads // self.kv_heads
        return q, range(q.start // group, (q.stop - 1) // group + 1)

    def shard_table(self, rank: int, size: int, head: bool = True) -> ShardTable:
        """Heads, MLP and vocabulary split over the group; norms whole. `head`: read the
        output head too (an untied lm_head.weight; `embed` needs none)."""
        h, d, n = self.hidden, self.head_dim, self.prefix
        q, kv = self.head_ranges(rank, size)
        q_rows, kv_rows = slice(q.start * d, q.stop * d), slice(kv.start * d, kv.stop * d)
        inner = split_slice(self.inner, rank, size)
        vocab = split_slice(self.vocab, rank, size)
        top = {
            "embed_tokens.weight": Part(
                n + "embed_tokens.weight", rows=(vocab,), expect=(self.vocab, h)
            ),
            "norm.weight": whole(n + "norm.weight", expect=(h,)),
        }
        if head and not self.tied and self.has_head:
            top["lm_head.weight"] = Part("lm_head.weight", rows=(vocab,), expect=(self.vocab, h))
        if self.rope_freqs:
            top["rope_freqs.weight"] = whole("rope_freqs.weight", expect=(d // 2,))
        projections = {
            "q_proj": (q_rows, self.heads * d),
            "k_proj": (kv_rows, self.kv_heads * d),
            "v_proj": (kv_rows, self.kv_heads * d),
        }
        layers = []
        for i in range(self.layers):
            p = f"{n}layers.{i}."
            layer = {}
            for name, (rows, out) in projections.items():
                key = f"self_attn.{name}"
                layer[key + ".weight"] = column(p + key + ".weight", rows, expect=(out, h))
                if self.qkv_bias:
                    layer[key + ".bias"] = column(p + key + ".bias", rows, False, expect=(out,))
            o = "self_attn.o_proj"
            layer[o + ".weight"] = row(p + o + ".weight", q_rows, expect=(h, self.heads * d))
            for name in ("gate_proj", "up_proj"):
                key = f"mlp.{name}"
                layer[key + ".weight"] = column(p + key + ".weight", inner, expect=(self.inner, h))
                if self.mlp_bias:
                    layer[key + ".bias"] = column(p + key + ".bias", inner, False, (self.inner,))
            down = "mlp.down_proj"
            layer[down + ".weight"] = row(p + down + ".weight", inner, expect=(h, self.inner))
            biases = [o] * self.o_bias + [down] * self.mlp_bias
            norms = ["input_layernorm", "post_attention_layernorm"]
            for key in biases:
                layer[key + ".bias"] = whole(p + key + ".bias", expect=(h,))
            for key in norms:
                layer[key + ".weight"] = whole(p + key + ".weight", expect=(h,))
            if self.qk_norm:
                for key in ("self_attn.q_norm", "self_attn.k_norm"):
                    layer[key + ".weight"] = whole(p + key + ".weight", expect=(d,))
            layers.append(layer)
        return ShardTable(top, layers)

    def collectives(self, tp: int) -> dict[str, int]:
        return decoder_collectives(self.layers, self.hidden, tp)


def sliding_windows(
    config: dict[str, Any], model_type: str, layers: int, where: Path
) -> tuple[int, ...]:
    """Each layer's attention window (a token sees itself and the window - 1 before it;
    0: everything before it), as transformers decides it per model type."""
    window = config.get("sliding_window")
    if model_type == "llama" or window is None:
        return (0,) * layers
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise JobError(f"{where}: sliding_window must be a positive integer, got {window!r}")
    if model_type == "mistral":  # every layer
        return (window,) * layers
    if not config.get("use_sliding_window", False):  # qwen2, qwen3: only when switched on
        return (0,) * layers
    types = config.get("layer_types")
    if types is None:
        first = int(config.get("max_window_layers", 28))
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    if len(types) != layers or set(types) - {"sliding_attention", "full_attention"}:
        raise JobError(
            f"{where}: layer_types must list 'full_attention' or 'sliding_attention' for "
            f"each of the {layers} layers"
        )
    return tuple(window if t == "sliding_attention" else 0 for t in types)
