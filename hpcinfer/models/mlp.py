"""Multi-layer perceptron: the model format hpcinfer defines for dense feed-forward nets.

Folder contract:
    config.json        {"model_type": "mlp", "layer_sizes": [in, h1, ..., out],
                        "activation": "relu"|"tanh"|"logistic"|"identity",
                        "output_activation": "softmax"|"logistic"|"identity"}
    model.safetensors  layers.{i}.weight (out_i, in_i), layers.{i}.bias (out_i,)
                       (PyTorch nn.Linear convention; F32, F16, BF16 or F64)

Forward, for layer i with A_i stored as (out_i, in_i) and held as w_i = A_i^T:
    x_{i+1} = act(x_i @ w_i + b_i)        # (B, out_i); the last layer uses output_activation

Under tensor parallelism layers alternate column- and row-parallel (hpcinfer.parallel),
so each pair of layers costs one all-reduce; an odd last layer is column-parallel with its
(small) output all-gathered. Any width works with any tp: uneven splits are allowed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.backends import compile_forward
from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import short_repr
from hpcinfer.io.safetensors_checkpoint import open_weights
from hpcinfer.models.base import InputKind, OutputSpec
from hpcinfer.models.params import tree_map, tree_nbytes
from hpcinfer.models.shards import ShardTable, column, read_table, row, whole
from hpcinfer.parallel.partition import split_sizes, split_slice
from hpcinfer.parallel.tensor import Collectives, Solo, column_linear, row_linear

# Hidden activations overwrite their input where arrays are mutable (numpy): the input is
# always a fresh layer output, and a second (B, width) buffer is the forward's peak memory.


def relu(x, xp):
    return np.maximum(x, 0, out=x) if isinstance(x, np.ndarray) else xp.maximum(x, 0)


def tanh(x, xp):
    return np.tanh(x, out=x) if isinstance(x, np.ndarray) else xp.tanh(x)


def logistic(x, xp):
    # 0.5 * (1 + tanh(x / 2)) is the logistic function without exp overflow for large |x|.
    return 0.5 * (1 + xp.tanh(0.5 * x))


def identity(x, xp):
    return x


def softmax(x, xp):
    e = xp.exp(x - x.max(axis=-1, keepdims=True))  # (B, out)
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS = {"relu": relu, "tanh": tanh, "logistic": logistic, "identity": identity}
OUTPUT_ACTIVATIONS = {"softmax": softmax, "logistic": logistic, "identity": identity}


@dataclass(frozen=True)
class LayerSplit:
    """How one layer is split over the TP group (see hpcinfer.parallel)."""

    kind: str  # "column" (split along out) or "row" (split along in)
    gather_counts: tuple[int, ...] | None = None  # column layer whose output is gathered


def layer_splits(layer_sizes: tuple[int, ...], tp: int) -> tuple[LayerSplit, ...]:
    """Megatron pairing: column, row, column, row, ...; an odd last layer is gathered."""
    n = len(layer_sizes) - 1
    splits = []
    for i in range(n):
        if i % 2:
            splits.append(LayerSplit("row"))
        elif i == n - 1:  # a column layer with no row layer after it
            splits.append(LayerSplit("column", tuple(split_sizes(layer_sizes[i + 1], tp))))
        else:
            splits.append(LayerSplit("column"))
    return tuple(splits)


def collectives_per_batch(layer_sizes: tuple[int, ...], tp: int) -> dict[str, int]:
    """All-reduces and all-gathers in one forward pass, and their values per row."""
    if tp == 1:
        return {"all_reduce": 0, "all_gather": 0, "values_per_row": 0}
    splits = layer_splits(layer_sizes, tp)
    reduces = [layer_sizes[i + 1] for i, s in enumerate(splits) if s.kind == "row"]
    gathers = [layer_sizes[i + 1] for i, s in enumerate(splits) if s.gather_counts]
    return {
        "all_reduce": len(reduces),
        "all_gather": len(gathers),
        "values_per_row": sum(reduces) + sum(gathers),
    }


def mlp_forward(params, x, *, xp, tp, splits, activation: str, output_activation: str):
    """x (B, in) -> (B, out) on every rank of the TP group.

    params: this rank's "layers.{i}.weight" (in_i or in_i/tp, out_i or out_i/tp), the
    transposed nn.Linear weight, and "layers.{i}.bias", per `splits`.
    """
    hidden, last = ACTIVATIONS[activation], OUTPUT_ACTIVATIONS[output_activation]
    for i, split in enumerate(splits):
        w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        if split.kind == "row":
            x = row_linear(x, w, b, tp)  # (B, out_i), complete
        else:
            x = column_linear(x, w, b, tp, split.gather_counts)  # (B, out_i/tp) or (B, out_i)
        x = last(x, xp) if i == len(splits) - 1 else hidden(x, xp)
    return x


@dataclass(frozen=True)
class MLPConfig:
    layer_sizes: tuple[int, ...]
    activation: str
    output_activation: str

    @classmethod
    def from_json(cls, config: dict[str, Any], where: Path) -> MLPConfig:
        sizes = config.get("layer_sizes")
        if (
            not isinstance(sizes, list)
            or len(sizes) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
        ):
            raise JobError(
                f"{where}: layer_sizes must be a list of >= 2 positive integers, "
                f"got {short_repr(sizes)}"
            )
        activation = config.get("activation", "relu")
        output_activation = config.get("output_activation", "identity")
        for key, value, known in (
            ("activation", activation, ACTIVATIONS),
            ("output_activation", output_activation, OUTPUT_ACTIVATIONS),
        ):
            if not isinstance(value, str) or value not in known:
                raise JobError(
                    f"{where}: {key} {short_repr(value)} is not supported "
                    f"(known: {', '.join(known)})"
                )
        return cls(tuple(sizes), activation, output_activation)

    def check_tp(self, tp: int, where: Path) -> None:
        """Each TP rank must hold at least one unit of every hidden layer it splits.

        (The gathered output layer of an odd-length MLP may leave a rank with none: a
        binary classifier's single output works under any tp.)
        """
        for i, split in enumerate(layer_splits(self.layer_sizes, tp)):
            width = self.layer_sizes[i + 1]
            if split.kind == "column" and split.gather_counts is None and width < tp:
                raise JobError(
                    f"{where}: run.tp = {tp} is larger than layer {i}'s {width} outputs "
                    f"(layer_sizes {list(self.layer_sizes)}); use tp <= {width}"
                )

    # -- what `inspect` and the loader share ------------------------------------------

    unit = "row"

    @property
    def title(self) -> str:
        return (
            f"mlp {'-'.join(map(str, self.layer_sizes))}, activation {self.activation}, "
            f"output {self.output_activation}"
        )

    def misfit(self, tp: int) -> str | None:
        try:
            self.check_tp(tp, Path("config.json"))
        except JobError:
            return "a hidden layer narrower than tp"
        return None

    def shard_table(self, rank: int, size: int) -> ShardTable:
        """Column layers keep the stored weight's rows split_slice(out_i) (w's columns) and
        those entries of b; row layers keep its columns split_slice(in_i) (w's rows) and
        all of b (added once, after the sum). w is held transposed, (in_i, out_i)."""
        top = {}
        splits = layer_splits(self.layer_sizes, size)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(self.layer_sizes)):
            w, b = f"layers.{i}.weight", f"layers.{i}.bias"
            if splits[i].kind == "column":
                part = split_slice(n_out, rank, size)
                top[w] = column(w, part, expect=(n_out, n_in))
                top[b] = column(b, part, transpose=False, expect=(n_out,))
            else:
                top[w] = row(w, split_slice(n_in, rank, size), expect=(n_out, n_in))
                top[b] = whole(b, expect=(n_out,))
        return ShardTable(top)

    def collectives(self, tp: int) -> dict[str, int]:
        return collectives_per_batch(self.layer_sizes, tp)


class MLP:
    """An MLP bound to a backend and a TP group: host batch in, host outputs out.

    Every rank of the TP group gets the same rows and returns the same, complete outputs.
    """

    input_kind = InputKind.ROWS
    reads_texts = False

    def __init__(
        self,
        config: MLPConfig,
        host: dict[str, np.ndarray],
        backend: Any,
        dtype: str,
        tp: Collectives | None = None,
    ):
        tp = tp or Solo()
        self.config = config
        self.tp_size = tp.size
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.weight_bytes = tree_nbytes(host)  # this rank's share
        self.params = tree_map(backend.asarray, host)
        self.row_shape = (config.layer_sizes[0],)
        self.outputs = {"outputs": OutputSpec((config.layer_sizes[-1],), self.dtype)}
        forward = partial(
            mlp_forward,
            xp=backend.xp,
            activation=config.activation,
            output_activation=config.output_activation,
            tp=tp,
            splits=layer_splits(config.layer_sizes, tp.size),
        )
        self._forward = compile_forward(backend, tp, forward)

    @classmethod
    def load(
        cls,
        folder: Path,
        config: dict[str, Any],
        backend: Any,
        dtype: str,
        tp: Collectives | None = None,
    ) -> MLP:
        tp = tp or Solo()
        mlp_config = MLPConfig.from_json(config, folder / "config.json")
        mlp_config.check_tp(tp.size, folder / "config.json")
        weights = open_weights(folder)
        host = read_table(weights, mlp_config.shard_table(tp.rank, tp.size), dtype)
        return cls(mlp_config, host, backend, dtype, tp)

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        y = self._forward(self.params, self.backend.asarray(batch))  # (B, out)
        return {"outputs": self.backend.to_host(y)}

    def activation_bytes(self, batch_size: int) -> int:
        """Rough peak of a forward pass's temporaries: two of the widest (split) layer."""
        splits = layer_splits(self.config.layer_sizes, self.tp_size)
        widths = [
            -(-width // self.tp_size)
            if split.kind == "column" and split.gather_counts is None
            else width
            for width, split in zip(self.config.layer_sizes[1:], splits, strict=True)
        ]
        return 2 * batch_size * max(widths) * self.dtype.itemsize

    def rank_metrics(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "model_type": "mlp",
            "layer_sizes": list(self.config.layer_sizes),
            "activation": self.config.activation,
            "output_activation": self.config.output_activation,
        }


def architecture(folder: Path, config: dict, weights: Any) -> MLPConfig:
    """What `inspect` describes."""
    return MLPConfig.from_json(config, folder / "config.json")


def load(folder: Path, config: dict, backend: Any, dtype: str, tp: Collectives, task: str) -> MLP:
    return MLP.load(folder, config, backend, dtype, tp)
