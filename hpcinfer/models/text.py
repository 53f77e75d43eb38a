"""What text models share: tokens in, and texts batched by length through a compiled
forward.

Texts of mixed lengths padded to the longest waste most of the FLOPs, so a chunk's texts
are sorted by length, cut into batches padded to one of a few lengths (few shapes for
XLA to compile), and the results put back in input order.
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
    tokenizer: TextTokenizer | None, items: Sequence[Any], max_length: int, vocab_size: int
) -> list[np.ndarray]:
    """Token ids of each item: texts through the tokenizer, token-id lists as given (cut
    to `max_length`). An id outside the vocabulary, or a text for a model without a
    tokenizer, is a BadRow naming the item."""
    ids: list[np.ndarray | None] = [None] * len(items)
    texts = [i for i, item in enumerate(items) if isinstance(item, str)]
    if texts and tokenizer is None:
        raise BadRow(
            texts[0],
            "a text, but the model folder has no tokenizer (tokenizer.json, vocab.json + "
            "merges.txt, or vocab.txt): give token ids instead",
        )
    if texts:
        for i, encoded in zip(
            texts, tokenizer.encode_batch([items[i] for i in texts]), strict=True
        ):
            ids[i] = encoded
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


def longest(n: int) -> int:
    """A batch's padded length where no compiler wants few shapes: its longest text's."""
    return max(n, 2)


TIGHT_PADDING = 1.1  # tight batches: padded tokens <= 1.1 x real + 2 per row


def row_groups(
    order: np.ndarray, lengths: list[int], batch_size: int, pad_to: Any, tight: bool
) -> Iterator[list[int]]:
    """Consecutive runs of `order` (rows by ascending length), at most `batch_size` each.
    `tight`: a run also ends before a row that would pad the run beyond TIGHT_PADDING of
    its real tokens, so a chunk's few long texts do not pad its short ones to their length
    (they form small batches of their own)."""
    group: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        full = len(group) == batch_size
        wasteful = (len(group) + 1) * pad_to(n) > TIGHT_PADDING * (real + n) + 2 * (len(group) + 1)
        if group and (full or (tight and wasteful)):
            yield group
            group, real = [], 0
        group.append(int(i))
        real += n
    if group:
        yield group


def bucket_groups(
    order: np.ndarray, lengths: list[int], batch_size: int
) -> Iterator[tuple[list[int], int]]:
    """(rows, height) runs of `order` (ascending length) that share one padded length
    (`padded_length`), at most `bucket_rows(L, batch_size)` rows each: a compiled backend
    sees one shape per padded length, and each batch holds about batch_size x 16 tokens."""
    group: list[int] = []
    bucket = 0
    for i in order:
        b = padded_length(lengths[i])
        if group and (b != bucket or len(group) == bucket_rows(bucket, batch_size)):
            yield group, bucket_rows(bucket, batch_size)
            group = []
        group.append(int(i))
        bucket = b
    if group:
        yield group, bucket_rows(bucket, batch_size)


def bucket_rows(length: int, batch_size: int) -> int:
    """Rows of a tight compiled batch of padded length `length`: batch_size x 16 tokens."""
    return max(1, min(batch_size, batch_size * 16 // length))


def length_batches(
    ids: list[np.ndarray],
    batch_size: int,
    full_height: bool,
    counts: TokenCounts,
    style: str = "fixed",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, token ids (B, L), mask (B, L)) per batch, rows sorted by length so padding
    stays small. `style`:

    fixed    batch_size rows, L from `padded_length` (few shapes); with `full_height`
             every batch has batch_size rows (the extra ones empty, all masked), so
             compiled backends see fewer shapes still
    tight    (decoders, uncompiled) L the longest row's, batches cut by `row_groups`
    buckets  (decoders, JAX) L from `padded_length`, one length per batch, rows from
             `bucket_rows` (`bucket_groups`): one shape per padded length
    """
    lengths = [len(t) for t in ids]
    order = np.argsort(lengths, kind="stable")
    pad_to = longest if style == "tight" else padded_length
    if style == "buckets":
        groups = bucket_groups(order, lengths, batch_size)
    else:
        rows_of = row_groups(order, lengths, batch_size, pad_to, style == "tight")
        groups = ((g, batch_size if full_height else len(g)) for g in rows_of)
    for group, height in groups:
        rows = np.array(group, dtype=np.int64)
        seq = pad_to(max(lengths[i] for i in rows))
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
    #: batches that pad little (decoders: every padded token costs a whole pass): numpy
    #: and cupy pad a batch to its longest text and cut batches where lengths jump
    #: (`row_groups`); compiled JAX keeps `padded_length`'s few shapes but never mixes
    #: them in a batch, and fits the rows to the length (`bucket_groups`)
    tight_padding = False

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
        style = "fixed"
        if self.tight_padding:
            style = "buckets" if self.backend.name == "jax" else "tight"
        batches = length_batches(ids, batch_size, self.compiled, self.token_counts, style)
        for rows, batch, mask in batches:
            y = self._forward(
                self.params, self.backend.asarray_int(batch), self.backend.asarray_int(mask)
            )
            yield rows, self.backend.to_host(y)[: len(rows)]

    def rank_metrics(self) -> dict[str, float]:
        """Tokens of text and tokens computed (padding included) on this rank."""
        return {
            "tokens_real": self.token_counts.real,
            "tokens_computed": self.token_counts.computed,
        }
