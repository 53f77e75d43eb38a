"""What BERT and GPT-2 share: the math of attention and layer norm, the tokens in, and
batching texts by length.

Math here is pure functions of arrays in the backend's namespace `xp`; nothing here
communicates (the models call hpcinfer.parallel for that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.backends import compile_forward
from hpcinfer.errors import BadRow, JobError


def contiguous(t: Any, xp: Any) -> Any:
    """A C-contiguous copy where arrays have layouts (numpy, cupy); JAX decides its own."""
    return xp.ascontiguousarray(t) if hasattr(xp, "ascontiguousarray") else t


def layer_norm(x: Any, w: Any, b: Any, eps: float, xp: Any) -> Any:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / xp.sqrt(var + eps) * w + b


def gelu_tanh(x: Any, xp: Any) -> Any:
    """GPT-2's GELU ("gelu_new"): the tanh approximation."""
    return 0.5 * x * (1.0 + xp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x: Any, erf: Any) -> Any:
    """BERT's GELU: exact, through the error function."""
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def split_heads(t: Any, head_dim: int, xp: Any) -> Any:
    """(B, L, h*d) -> (B, h, L, d), contiguous: numpy's stacked matmul calls BLAS only on
    contiguous operands (a strided view falls back to a slow loop)."""
    batch, seq = t.shape[:2]
    return contiguous(t.reshape(batch, seq, -1, head_dim).transpose(0, 2, 1, 3), xp)


def attention(q: Any, k: Any, v: Any, bias: Any, scale: Any, xp: Any) -> Any:
    """Softmax attention of this rank's heads. q, k, v (B, h, L, d); `bias` broadcasts to
    the scores (B, h, L, L): 0 where a query may look, -1e9 where not (finite, so a row
    with nothing to look at stays finite). Returns the context, (B, L, h*d)."""
    batch, _, seq, _ = q.shape
    k_t = contiguous(k.transpose(0, 1, 3, 2), xp)  # (B, h, d, L)
    scores = q @ k_t * scale + bias
    scores = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)


def padded_length(n: int) -> int:
    """The padded sequence length for a batch whose longest text has n tokens: the next of
    16, 24, 32, 48, 64, 96, 128, ... (at most ~1.5x padding; few shapes for XLA to compile)."""
    size = 16
    while True:
        for candidate in (size, size * 3 // 2):
            if n <= candidate:
                return candidate
        size *= 2


def load_tokenizer(folder: Path, max_length: int) -> Any:
    """tokenizer.json of a model folder, truncating to `max_length`, never padding."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise JobError(f"{path}: not found (a text model needs tokenizer.json)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def encode_items(
    tokenizer: Any, items: Sequence[Any], max_length: int, vocab_size: int
) -> list[np.ndarray]:
    """Token ids of each item: texts through the tokenizer, token-id lists as given (cut
    to `max_length`). An id outside the vocabulary is a BadRow naming the item."""
    ids: list[np.ndarray | None] = [None] * len(items)
    texts = [i for i, item in enumerate(items) if isinstance(item, str)]
    for i, encoding in zip(texts, tokenizer.encode_batch([items[i] for i in texts]), strict=True):
        ids[i] = np.asarray(encoding.ids, dtype=np.int64)
    for i, item in enumerate(items):
        if ids[i] is not None:
            continue
        given = np.asarray(item, dtype=np.int64)[:max_length]
        if given.size and (given.min() < 0 or given.max() >= vocab_size):
            bad = given[(given < 0) | (given >= vocab_size)][0]
            raise BadRow(i, f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})")
        ids[i] = given
    return ids  # type: ignore[return-value]


@dataclass
class TokenCounts:
    """Tokens of real text, and tokens computed (padding included): their ratio is the
    padding efficiency, reported per rank in the output's rank_metrics."""

    real: int = 0
    computed: int = 0


def length_batches(
    ids: list[np.ndarray], batch_size: int, full_height: bool, counts: TokenCounts
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, token ids (B, L), mask (B, L)) per batch, rows sorted by length so padding
    stays small, L from `padded_length`. With `full_height` every batch has `batch_size`
    rows (the extra ones empty, all masked): compiled backends then see fewer shapes."""
    order = np.argsort([len(t) for t in ids], kind="stable")
    for b0 in range(0, len(order), batch_size):
        rows = order[b0 : b0 + batch_size]
        seq = padded_length(max(len(ids[i]) for i in rows))
        height = batch_size if full_height else len(rows)
        batch = np.zeros((height, seq), np.int64)
        mask = np.zeros((height, seq), np.int64)
        for j, i in enumerate(rows):
            batch[j, : len(ids[i])] = ids[i]
            mask[j, : len(ids[i])] = 1
        counts.real += sum(len(ids[i]) for i in rows)
        counts.computed += batch.size
        yield rows, batch, mask


def check_heads_split(heads: int, tp: int, where: Path) -> None:
    if heads % tp:
        raise JobError(f"{where}: run.tp = {tp} does not divide the {heads} attention heads")


class TextModel:
    """What text models share once loaded: host weights on the backend, the forward
    compiled where it can be, and texts run through it in batches of similar length.

    A subclass loads its config and shard, then calls `bind`; its `predict_items` turns
    the host results of `run_batches` into its datasets.
    """

    row_shape = None  # rows are texts or token-id lists, not arrays

    def bind(self, backend: Any, dtype: str, tp: Any, host: dict, forward: Any) -> None:
        """`forward(params, ids, mask, *, xp, erf, scan, tp)`: the model's pure forward."""
        self.backend, self.dtype, self.tp_size = backend, np.dtype(dtype), tp.size
        self.weight_bytes = sum(a.nbytes for a in tree_leaves(host))  # this rank's share
        self.params = tree_map(backend.asarray, host)
        self.compiled = tp.traceable and backend.name == "jax"
        self.token_counts = TokenCounts()
        bound = partial(forward, xp=backend.xp, erf=backend.erf, scan=backend.scan_layers, tp=tp)
        self._forward = compile_forward(backend, tp, bound)

    def run_batches(
        self, ids: list[np.ndarray], batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, host result of those rows) per batch, rows batched by length."""
        for rows, batch, mask in length_batches(ids, batch_size, self.compiled, self.token_counts):
            y = self._forward(
                self.params, self.backend.asarray_int(batch), self.backend.asarray_int(mask)
            )
            yield rows, self.backend.to_host(y)[: len(rows)]


def tree_leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for v in tree.values():
            yield from tree_leaves(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from tree_leaves(v)
    else:
        yield tree


def tree_map(fn: Any, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [tree_map(fn, v) for v in tree]
    return fn(tree)


def stack_layers(layers: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per tensor name with the layers on axis 0 (what `scan_layers` walks)."""
    return {k: np.stack([layer[k] for layer in layers]) for k in layers[0]}
