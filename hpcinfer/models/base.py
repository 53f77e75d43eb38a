"""What every loaded model tells the engine, as typed records (no sentinels).

A model declares once what it reads (`input_kind`) and what it writes (`outputs`); the
engine, the dry run and the chunk files read those, never guess from attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np


class InputKind(Enum):
    """What one input row is for a model."""

    ROWS = "numeric rows (HDF5)"  # an array of a fixed shape per row: predict()
    ITEMS = "texts or token ids"  # a text or a list of token ids per row: predict_items()


@dataclass(frozen=True)
class OutputSpec:
    """One output dataset: the shape of one row's result, and its dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Model(Protocol):
    input_kind: InputKind
    #: ROWS models: the shape of one input row, e.g. (64,); ITEMS models: ()
    row_shape: tuple[int, ...]
    outputs: dict[str, OutputSpec]
    #: bytes of weights this rank holds (its TP shard plus replicated parts)
    weight_bytes: int
    #: ITEMS models: texts can be given (it has a tokenizer), not only token ids
    reads_texts: bool

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """ROWS: a host batch (B, *row_shape) -> {dataset: host array (B, *shape)}."""

    def predict_items(
        self, items: list[Any], max_tokens: int, on_rows: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """ITEMS: texts or token-id lists -> {dataset: host array (len(items), *shape)},
        in the order given; batched as the model likes, within `max_tokens` padded tokens
        a batch; `on_rows(n)` after each batch (live progress)."""

    def rank_metrics(self) -> dict[str, float]:
        """Counters this rank's model kept (e.g. tokens computed), for rank_metrics."""

    def describe(self) -> dict[str, Any]:
        """Facts about the model for the output file's attributes."""

    def activation_bytes(self, batch_size: int) -> int:
        """Rough peak memory of a forward pass's temporaries for one batch."""
