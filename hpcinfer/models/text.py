"""What text models share: tokens in, and texts batched by length through a compiled
forward.

Texts of mixed lengths padded to the longest waste most of the FLOPs, so a chunk's texts
are sorted by length, cut into batches padded to one of a few lengths (few shapes for
XLA to compile), and the results put back in input order.

A text is cut before it is tokenized (io.text_cut: a huge row costs a few MB) and readers
cut rows to the model's `text_cut()`; rows that lost tokens are counted (`rows_truncated`).
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
from hpcinfer.io.text_cut import TextCut, TextPrefix, cut_chars, encode_texts
from hpcinfer.io.text_tokenizer import TextTokenizer
from hpcinfer.models.base import InputKind
from hpcinfer.models.params import tree_map, tree_nbytes
from hpcinfer.parallel.tensor import Collectives


def padded_length(n: int) -> int:
    """The padded sequence length for a batch whose longest text has n tokens: the next of
    16, 24, 32, 48, 64, 96, 128, ... (at most ~1.5x padding; few shapes for XLA to compile)."""
    size = 16
    while True:
        for candidate in (size, size * 3 // 2):
            if n <= candidate:
                return candidate
        size *= 2


def encode_items(
    tokenizer: TextTokenizer | None,
    items: Sequence[Any],
    max_length: int,
    vocab_size: int,
    counts: TokenCounts | None = None,
) -> list[np.ndarray]:
    """Token ids of each item: texts (str or TextPrefix) through the tokenizer, token-id
    lists as given (cut to `max_length`). An id outside the vocabulary, or a text for a
    model without a tokenizer, is a BadRow naming the item. `counts.rows_truncated` adds
    the items that lost tokens."""
    ids: list[np.ndarray | None] = [None] * len(items)
    texts = [i for i, item in enumerate(items) if isinstance(item, str | TextPrefix)]
    if texts and tokenizer is None:
        raise BadRow(
            texts[0],
            "a text, but the model folder has no tokenizer (tokenizer.json, vocab.json + "
            "merges.txt, or vocab.txt): give token ids instead",
        )
    truncated = 0
    if texts:
        encoded = encode_texts(tokenizer, [items[i] for i in texts])
        for i, row in zip(texts, encoded.ids, strict=True):
            ids[i] = row
        truncated += encoded.truncated
    for i, item in enumerate(items):
        if ids[i] is not None:
            continue
        try:
            given = np.asarray(item, dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            raise BadRow(i, "token ids must be integers that fit int64") from None
        truncated += len(given) > max_length
        given = given[:max_length]
        if given.size and (given.min() < 0 or given.max() >= vocab_size):
            bad = given[(given < 0) | (given >= vocab_size)][0]
            raise BadRow(i, f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})")
        ids[i] = given
    if counts is not None:
        counts.rows_truncated += truncated
    return ids  # type: ignore[return-value]


@dataclass
class TokenCounts:
    """Tokens of real text, and tokens computed (padding included): their ratio is the
    padding efficiency, reported per rank in the output's rank_metrics. And rows that lost
    tokens: cut before tokenizing, or truncated to the maximum length."""

    real: int = 0
    computed: int = 0
    rows_truncated: int = 0


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

    input_kind = InputKind.ITEMS
    row_shape: tuple[int, ...] = ()

    @property
    def reads_texts(self) -> bool:
        """Texts can be given, not only token ids: the folder has a tokenizer."""
        return self.tokenizer is not None
    tokenizer: TextTokenizer | None = None  # set by the subclass before `bind`

    def bind(self, backend: Any, dtype: str, tp: Collectives, host: dict, forward: Any) -> None:
        """`forward(params, ids, mask, *, xp, erf, scan, tp)`: the model's pure forward."""
        self.backend, self.dtype, self.tp_size = backend, np.dtype(dtype), tp.size
        self.weight_bytes = tree_nbytes(host)  # this rank's share
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

    def encode(self, items: Sequence[Any], max_length: int, vocab_size: int) -> list[np.ndarray]:
        """encode_items with this model's tokenizer, counting the rows that lost tokens."""
        return encode_items(self.tokenizer, items, max_length, vocab_size, self.token_counts)

    def text_cut(self) -> TextCut:
        """How much of a row a reader need keep: the characters the tokenizer is given at
        first, and one token id more than the maximum length (so a cut list counts as
        truncated)."""
        max_length = int(self.describe()["max_length"])
        chars = cut_chars(self.tokenizer) if self.tokenizer else 64  # no tokenizer: texts refused
        return TextCut(chars, max_length + 1)

    def rank_metrics(self) -> dict[str, float]:
        """Tokens of text and tokens computed (padding included) on this rank, and the
        rows that lost tokens (cut, or truncated to the maximum length)."""
        return {
            "tokens_real": self.token_counts.real,
            "tokens_computed": self.token_counts.computed,
            "rows_truncated": self.token_counts.rows_truncated,
        }
