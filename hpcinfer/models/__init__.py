"""Models: pure forward functions of (params, inputs), and loaders from model folders.

A model folder holds `config.json` (its `model_type` selects the architecture) and
`model.safetensors`. A loaded model tells the engine what one input row must look like
and which datasets it writes, and maps a host batch to host outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpcinfer.errors import JobError


class Model(Protocol):
    #: shape of one input row, e.g. (64,) for a 64-feature MLP; None for text models,
    #: which have predict_items(items, batch_size) instead of predict(batch): an item is
    #: a text or a list of token ids
    row_shape: tuple[int, ...] | None
    #: output dataset name -> (shape of one output row, dtype)
    outputs: dict[str, tuple[tuple[int, ...], np.dtype]]
    #: bytes of weights this rank holds (its TP shard plus replicated parts)
    weight_bytes: int

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Host batch (B, *row_shape) -> {dataset: host array (B, *shape)}."""

    def describe(self) -> dict[str, Any]:
        """Facts about the model for the output file's attributes."""

    def activation_bytes(self, batch_size: int) -> int:
        """Rough peak memory of a forward pass's temporaries for one batch."""


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a model folder, with errors that name the file."""
    if not folder.is_dir():
        raise JobError(f"{folder}: model folder not found (model.path)")
    path = folder / "config.json"
    if not path.is_file():
        raise JobError(f"{path}: not found (a model folder needs config.json)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JobError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise JobError(f"{path}: must hold a JSON object")
    return config


# model_type -> the tasks it can do; the first is the default.
TASKS = {"mlp": ("predict",), "bert": ("embed",), "gpt2": ("score",)}


def load_model(
    folder: Path,
    backend: Any,
    dtype: str,
    tp: Any = None,
    tp_rank: int = 0,
    task: str = "auto",
) -> Model:
    """Load this TP rank's shard of the model in `folder`, computing in `dtype`.

    `tp` is the TP group's collectives (hpcinfer.comm); None means no tensor parallelism.
    `task` (model.task) must be one the model type can do; "auto" takes its default.
    """
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type not in TASKS:
        raise JobError(
            f"{folder / 'config.json'}: unsupported model_type {model_type!r} "
            f"(known: {', '.join(TASKS)})"
        )
    if task != "auto" and task not in TASKS[model_type]:
        raise JobError(
            f"model.task = {task!r} is not available for model_type {model_type!r} "
            f"({folder}); it can do: {', '.join(TASKS[model_type])}"
        )
    if model_type == "mlp":
        from hpcinfer.models.mlp import MLP

        return MLP.load(folder, config, backend, dtype, tp, tp_rank)
    if model_type == "bert":
        from hpcinfer.models.bert import BertEmbedder

        return BertEmbedder(folder, config, backend, dtype, tp, tp_rank)
    from hpcinfer.models.gpt2 import Gpt2Scorer

    return Gpt2Scorer(folder, config, backend, dtype, tp, tp_rank)
