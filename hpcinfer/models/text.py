"""What text models share: tokens in, and texts packed into batches through a compiled
forward.

Texts of mixed lengths padded to the longest waste most of the FLOPs, so a chunk's texts
are packed several to a row under a token budget (models/batching.py), and the results
put back in input order.

A text is cut before it is tokenized (io.text_cut: a huge row costs a few MB) and readers
cut rows to the model's `text_cut()`; rows that lost tokens are counted (`rows_truncated`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.backends import compile_forward
from hpcinfer.errors import BadRow, JobError
from hpcinfer.io.text_cut import TextCut, TextPrefix, cut_chars, encode_texts
from hpcinfer.io.text_tokenizer import TextTokenizer
from hpcinfer.models.base import InputKind
from hpcinfer.models.batching import PackedBatch, TokenCounts, packed_batches
from hpcinfer.models.params import tree_map, tree_nbytes
from hpcinfer.parallel.tensor import Collectives


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


def check_heads_split(heads: int, tp: int, where: Path) -> None:
    if heads % tp:
        raise JobError(f"{where}: run.tp = {tp} does not divide the {heads} attention heads")


class TextModel:
    """What text models share once loaded: host weights on the backend, the forward
    compiled where it can be, and texts run through it in packed batches.

    A subclass loads its config and shard, then calls `bind`; its `predict_items` turns
    the host results of `run_packed` / `packed_results` into its datasets.
    """

    input_kind = InputKind.ITEMS
    row_shape: tuple[int, ...] = ()

    @property
    def reads_texts(self) -> bool:
        """Texts can be given, not only token ids: the folder has a tokenizer."""
        return self.tokenizer is not None

    tokenizer: TextTokenizer | None = None  # set by the subclass before `bind`

    def bind(
        self,
        backend: Any,
        dtype: str,
        tp: Collectives,
        host: dict,
        forward: Any,
    ) -> None:
        """`forward(params, ids, segments, positions, first, lengths, *, xp, erf, scan, tp,
        segment_sum, segment_max)`: the model's pure forward over a PackedBatch's arrays."""
        self.backend, self.dtype, self.tp_size = backend, np.dtype(dtype), tp.size
        self.weight_bytes = tree_nbytes(host)  # this rank's share
        self.params = tree_map(backend.asarray, host)
        self.compiled = tp.traceable and backend.name == "jax"
        self.token_counts = TokenCounts()
        ops = {
            "xp": backend.xp,
            "erf": backend.erf,
            "scan": backend.scan_layers,
            "tp": tp,
            "segment_sum": backend.segment_sum,
            "segment_max": backend.segment_max,
        }
        self._forward = compile_forward(backend, tp, partial(forward, **ops))

    def run_packed(
        self,
        ids: list[np.ndarray],
        max_tokens: int,
        position_ids: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, host result of those rows) per batch, sequences packed several a row;
        the forward gives one result per segment slot."""
        for batch, y in self.packed_results(ids, max_tokens, position_ids):
            yield batch.rows, y[: len(batch.rows)]

    def packed_results(
        self,
        ids: list[np.ndarray],
        max_tokens: int,
        position_ids: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Iterator[tuple[PackedBatch, np.ndarray]]:
        """(batch, the forward's host result) per packed batch."""
        as_int = self.backend.asarray_int
        batches = packed_batches(ids, max_tokens, self.compiled, self.token_counts, position_ids)
        for b in batches:
            arrays = (b.ids, b.segments, b.positions, b.first, b.lengths)
            yield b, self.backend.to_host(self._forward(self.params, *(as_int(a) for a in arrays)))

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
            "batch_shapes": len(self.token_counts.shapes),  # compiled programs, under JAX
        }
