"""Sentence embedders: an encoder (models/encoders.py) and the sentence-transformers head
that its folder describes (models/sentence_transformers.py), e.g. all-MiniLM-L6-v2.

    texts --(prompt, tokenizer, cut to max length)--> ids, packed several to a row (R, L)
          --encoder_forward--> token states (R, L, H)          tensor-parallel
          --pool--> (S, H * modes) --Dense..., Normalize--> (S, D)   replicated, tiny

Pooling, in sentence-transformers' own arithmetic (m = the attention mask, positions
left out when the prompt is excluded from pooling):

    cls                   the first pooled token (token 0 unless the prompt is left out)
    max                   max over pooled tokens
    mean                  sum(m x) / max(sum(m), 1e-9)
    mean_sqrt_len_tokens  sum(m x) / sqrt(max(sum(m), 1e-9))
    weightedmean          weights 1, 2, ..., L (1-based positions, [CLS] included) times m
    lasttoken             the last pooled token ([SEP] / </s> of an unpadded text)

Output: dataset "embeddings" (N, D) float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import normalizers

from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_checkpoint import open_weights
from hpcinfer.io.text_cut import TextPrefix, prepend
from hpcinfer.io.text_tokenizer import TextTokenizer
from hpcinfer.io.tokenizer_files import load_tokenizer
from hpcinfer.models.base import OutputSpec
from hpcinfer.models.encoders import EncoderConfig, encoder_forward, position_ids
from hpcinfer.models.sentence_transformers import (
    DEFAULT_PROMPT,
    Dense,
    Head,
    Normalize,
    choose_prompt,
    dense_weights_folder,
    max_length,
    read_head,
)
from hpcinfer.models.shards import Part, ShardTable, read_table
from hpcinfer.models.text import TextModel, check_heads_split
from hpcinfer.models.transformer import gelu_erf
from hpcinfer.parallel.tensor import Collectives, Solo, matmul


@dataclass(frozen=True)
class Embedder:
    """The encoder, its head and the text length: what `inspect` describes and the
    forward is bound to."""

    encoder: EncoderConfig
    head: Head
    max_length: int  # tokens per text after truncation, special tokens included
    prompt_skip: int = 0  # leading tokens left out of pooling (a prompt, include_prompt false)

    @classmethod
    def from_folder(cls, folder: Path, config: dict, names: Any = ()) -> Embedder:
        """`names`: the weight file's tensor names (they decide the prefix)."""
        encoder = EncoderConfig.from_json(config, folder / "config.json", names)
        head = read_head(folder, encoder.hidden)
        return cls(encoder, head, max_length(folder, head, encoder.max_tokens))

    @property
    def dimension(self) -> int:
        return self.head.dimension(self.encoder.hidden)

    # -- what `inspect` and the loader share ------------------------------------------

    unit = "token"

    @property
    def title(self) -> str:
        return f"{self.encoder.title}; {self.head.describe()}; max length {self.max_length}"

    def misfit(self, tp: int) -> str | None:
        return self.encoder.misfit(tp)

    def shard_table(self, rank: int, size: int) -> ShardTable:
        """The encoder's table (the Dense modules live in their own files: `dense_table`)."""
        return self.encoder.shard_table(rank, size)

    def collectives(self, tp: int) -> dict[str, int]:
        return self.encoder.collectives(tp)

    @property
    def replicated_elements(self) -> int:
        """Parameters of the Dense modules, which every rank holds whole."""
        total = 0
        for d in self.head.dense:
            total += d.out_features * d.in_features + (d.out_features if d.bias else 0)
            if "residual.weight" in d.weight_names:
                total += d.out_features * d.in_features
        return total


def dense_table(dense: Dense) -> ShardTable:
    """A Dense module's weights, whole, held (in, out) like every linear layer."""
    out, n_in = dense.out_features, dense.in_features
    top = {"linear.weight": Part("linear.weight", transpose=True, expect=(out, n_in))}
    if dense.bias:
        top["linear.bias"] = Part("linear.bias", expect=(out,))
    if "residual.weight" in dense.weight_names:
        top["residual.weight"] = Part("residual.weight", transpose=True, expect=(out, n_in))
    return ShardTable(top)


def read_dense(folder: Path, dense: Dense, dtype: str) -> dict[str, Any]:
    return read_table(open_weights(dense_weights_folder(folder, dense)), dense_table(dense), dtype)


# ---- the head's math -----------------------------------------------------------------


def pool(
    x: Any,
    segments: Any,
    first: Any,
    lengths: Any,
    modes: tuple[str, ...],
    skip: int,
    *,
    xp: Any,
    segment_sum: Any,
    segment_max: Any,
) -> Any:
    """Packed token states x (R, L, H) -> one row per sequence (S, H * len(modes)), modes
    concatenated; a sequence's tokens are those of its segment (see PackedBatch)."""
    rows, seq, hidden = x.shape
    slots = first.shape[0]
    xf, sid = x.reshape(rows * seq, hidden), segments.reshape(-1)
    pos = xp.arange(rows * seq) - first[xp.minimum(sid, slots - 1)]  # within its sequence
    m = (pos >= skip).astype(x.dtype)[:, None]  # the prompt's tokens left out (skip > 0)
    count = xp.maximum(segment_sum(m, sid, slots), 1e-9)  # (S, 1)
    out = []
    for mode in modes:
        if mode == "cls":  # the first pooled token; token 0 of a sequence with none
            out.append(xf[first + xp.where(lengths > skip, skip, 0)])
        elif mode == "max":  # an unused slot stays 0, not -inf
            top = segment_max(xf + (m - 1.0) * 1e9, sid, slots)
            out.append(xp.where((lengths > 0)[:, None], top, 0.0))
        elif mode == "mean":
            out.append(segment_sum(xf * m, sid, slots) / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append(segment_sum(xf * m, sid, slots) / xp.sqrt(count))
        elif mode == "weightedmean":  # 1-based positions, [CLS] included
            w = m * (pos + 1).astype(x.dtype)[:, None]
            out.append(
                segment_sum(xf * w, sid, slots) / xp.maximum(segment_sum(w, sid, slots), 1e-9)
            )
        else:  # lasttoken: the last pooled token; zeros for a sequence with none
            ok = (lengths > skip).astype(x.dtype)[:, None]
            out.append(xf[first + xp.maximum(lengths - 1, 0)] * ok)
    return out[0] if len(out) == 1 else xp.concatenate(out, axis=-1)


def dense_activation(x: Any, name: str, xp: Any, erf: Any) -> Any:
    if name == "tanh":
        return xp.tanh(x)
    if name == "relu":
        return xp.maximum(x, 0)
    if name == "gelu":
        return gelu_erf(x, erf)
    if name == "sigmoid":
        return 1.0 / (1.0 + xp.exp(-x))
    return x  # identity


def embedder_forward(
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
    segment_sum,
    segment_max,
    cfg: Embedder,
):
    """A PackedBatch's arrays -> sentence embeddings (S, D), the same on every TP rank."""
    x = encoder_forward(
        params, ids, segments, positions, xp=xp, erf=erf, scan=scan, tp=tp, cfg=cfg.encoder
    )
    y = pool(
        x, segments, first, lengths, cfg.head.pooling.modes, cfg.prompt_skip,
        xp=xp, segment_sum=segment_sum, segment_max=segment_max,
    )  # fmt: skip
    for step in cfg.head.steps:
        if isinstance(step, Normalize):
            y = y / xp.maximum(xp.sqrt((y**2).sum(axis=-1, keepdims=True)), 1e-12)
            continue
        p = params["dense"][step.path]
        h = matmul(y, p["linear.weight"])
        h = dense_activation(h + p["linear.bias"] if step.bias else h, step.activation, xp, erf)
        if step.residual:
            h = h + (y if "residual.weight" not in p else matmul(y, p["residual.weight"]))
        y = h
    return y


# ---- texts ---------------------------------------------------------------------------


def lower_case_first(tokenizer: TextTokenizer) -> None:
    """sentence_bert_config.json's do_lower_case, as sentence-transformers 6 applies it: a
    Lowercase normalizer in front, unless the tokenizer has one (alone or in a Sequence)."""
    tok = tokenizer.tokenizer
    described = json.loads(tok.to_str()).get("normalizer") or {}
    steps = described.get("normalizers", []) if described.get("type") == "Sequence" else [described]
    if any(step.get("type") == "Lowercase" for step in steps):
        return
    current = tok.normalizer
    first = normalizers.Lowercase()
    tok.normalizer = first if current is None else normalizers.Sequence([first, current])


def prompt_tokens(tokenizer: TextTokenizer, prompt: str) -> int:
    """Tokens a prompt takes at the start of a text, as sentence-transformers counts
    them: the prompt alone, special tokens included, less a trailing special token."""
    ids = tokenizer.encode_batch([prompt])[0].tolist()
    specials = {i for i, t in tokenizer.tokenizer.get_added_tokens_decoder().items() if t.special}
    return len(ids) - 1 if ids and ids[-1] in specials else len(ids)


class SentenceEmbedder(TextModel):
    """Texts (or token-id lists) in, sentence embeddings out ("embeddings", (N, D))."""

    def __init__(
        self,
        folder: Path,
        config: dict,
        backend: Any,
        dtype: str,
        tp: Collectives | None = None,
        prompt_name: str = DEFAULT_PROMPT,
    ):
        tp = tp or Solo()
        weights = open_weights(folder)
        cfg = Embedder.from_folder(folder, config, weights.tensors)
        check_heads_split(cfg.encoder.heads, tp.size, folder / "config.json")
        self.prompt_name, self.prompt = choose_prompt(folder, cfg.head, prompt_name)
        self.tokenizer = load_tokenizer(folder, cfg.max_length)
        if self.tokenizer is not None:
            if self.tokenizer.vocab_size > cfg.encoder.vocab:
                raise JobError(
                    f"{self.tokenizer.source}: the tokenizer has {self.tokenizer.vocab_size} "
                    f"tokens but {folder / 'config.json'} says vocab_size {cfg.encoder.vocab}"
                )
            if cfg.head.do_lower_case:
                lower_case_first(self.tokenizer)
        if self.prompt and not cfg.head.pooling.include_prompt:
            if self.tokenizer is None:
                raise JobError(
                    f"{folder}: pooling leaves the prompt out (include_prompt false) but the "
                    "folder has no tokenizer to count its tokens; set model.prompt_name = 'none'"
                )
            cfg = replace(cfg, prompt_skip=prompt_tokens(self.tokenizer, self.prompt))
        self.cfg = cfg
        host = read_table(weights, cfg.encoder.shard_table(tp.rank, tp.size), dtype)
        if cfg.head.dense:
            host["dense"] = {d.path: read_dense(folder, d, dtype) for d in cfg.head.dense}
        self.outputs = {"embeddings": OutputSpec((cfg.dimension,), np.dtype("float32"))}
        self.bind(backend, dtype, tp, host, partial(embedder_forward, cfg=cfg))

    def predict_items(
        self, items: list, max_tokens: int, on_rows: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Embeddings of texts (or token-id lists, used as given: no prompt is added) in
        input order; packed several to a row, `max_tokens` a batch."""
        if self.prompt:
            items = [
                prepend(self.prompt, t) if isinstance(t, str | TextPrefix) else t for t in items
            ]
        c = self.cfg
        ids = self.encode(items, c.max_length, c.encoder.vocab)  # counts rows_truncated
        out = np.empty((len(items), c.dimension), np.float32)
        for rows, y in self.run_packed(ids, max_tokens, position_ids(c.encoder)):
            out[rows] = y
            if on_rows is not None:
                on_rows(len(rows))
        return {"embeddings": out}

    def activation_bytes(self, max_tokens: int) -> int:
        """A batch's largest temporaries: a few (tokens, hidden) arrays, the feed-forward's
        (tokens, intermediate / tp), and the attention scores (rows, heads, L, L)."""
        seq, e = min(self.cfg.max_length, max_tokens), self.cfg.encoder
        heads = e.heads // self.tp_size
        per_token = 6 * e.hidden + 2 * e.intermediate // self.tp_size + heads * seq
        return max_tokens * per_token * self.dtype.itemsize

    def describe(self) -> dict[str, Any]:
        c, e = self.cfg, self.cfg.encoder
        return {
            "model_type": e.model_type,
            "task": "embed",
            "hidden": e.hidden,
            "layers": e.layers,
            "heads": e.heads,
            "pooling": "+".join(c.head.pooling.modes),
            "normalize": c.head.normalize,
            "head": c.head.describe(),
            "dimension": c.dimension,
            "max_length": c.max_length,
            "prompt_name": self.prompt_name,
            "prompt": self.prompt,
        }


def architecture(folder: Path, config: dict, weights: Any) -> Embedder:
    """What `inspect` describes: encoder and head, with the weight file's naming."""
    return Embedder.from_folder(folder, config, weights.tensors)


def load(
    folder: Path,
    config: dict,
    backend: Any,
    dtype: str,
    tp: Collectives,
    task: str,
    prompt_name: str = DEFAULT_PROMPT,
) -> SentenceEmbedder:
    return SentenceEmbedder(folder, config, backend, dtype, tp, prompt_name)
