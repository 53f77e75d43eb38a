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


def multiple_of_8(n: int) -> int:
    """A batch's padded length where no compiler needs few shapes: the longest text,
    rounded up to a multiple of 8 (at most 7 tokens of padding)."""
    return max(8, -(-n // 8) * 8)


def length_batches(
    ids: list[np.ndarray],
    batch_size: int,
    full_height: bool,
    counts: TokenCounts,
    pad_to: Any = padded_length,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, token ids (B, L), mask (B, L)) per batch, rows sorted by length so padding
    stays small, L from `pad_to` (`padded_length`: few shapes). With `full_height` every
    batch has `batch_size` rows (the extra ones empty, all masked): compiled backends then
    see fewer shapes."""
    order = np.argsort([len(t) for t in ids], kind="stable")
    for b0 in range(0, len(order), batch_size):
        rows = order[b0 : b0 + batch_size]
        seq = pad_to(max(len(ids[i]) for i in rows))
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
    #: numpy and cupy pad a batch only to a multiple of 8, not to `padded_length`'s few
    #: shapes (which JAX compiles once each): decoders' cost grows with every padded token
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
        tight = self.tight_padding and self.backend.name != "jax"
        pad_to = multiple_of_8 if tight else padded_length
        counts = self.token_counts
        for rows, batch, mask in length_batches(ids, batch_size, self.compiled, counts, pad_to):
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
