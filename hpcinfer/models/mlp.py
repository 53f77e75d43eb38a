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
from hpcinfer.comm import Collectives, Solo
from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_file import SafetensorsFile
from hpcinfer.parallel import column_linear, row_linear, shard_range, shard_sizes

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
            splits.append(LayerSplit("column", shard_sizes(layer_sizes[i + 1], tp)))
        else:
            splits.append(LayerSplit("column"))
    return tuple(splits)


def shard_weight_elements(layer_sizes: tuple[int, ...], tp: int, tp_rank: int) -> int:
    """Weight and bias elements TP rank `tp_rank` holds (what read_mlp_shard reads)."""
    total = 0
    for (n_in, n_out), split in zip(
        itertools.pairwise(layer_sizes), layer_splits(layer_sizes, tp), strict=True
    ):
        if split.kind == "column":
            out_r = len(shard_range(n_out, tp_rank, tp))
            total += out_r * n_in + out_r
        else:
            total += len(shard_range(n_in, tp_rank, tp)) * n_out + n_out
    return total


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

    params: this rank's [(w (in_i or in_i/tp, out_i or out_i/tp), b), ...] per `splits`,
    w being the transposed nn.Linear weight.
    """
    hidden, last = ACTIVATIONS[activation], OUTPUT_ACTIVATIONS[output_activation]
    for i, ((w, b), split) in enumerate(zip(params, splits, strict=True)):
        if split.kind == "row":
            x = row_linear(x, w, b, tp)  # (B, out_i), complete
        else:
            x = column_linear(x, w, b, tp, split.gather_counts)  # (B, out_i/tp) or (B, out_i)
        x = last(x, xp) if i == len(params) - 1 else hidden(x, xp)
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
                f"{where}: layer_sizes must be a list of >= 2 positive integers, got {sizes!r}"
            )
        activation = config.get("activation", "relu")
        output_activation = config.get("output_activation", "identity")
        if activation not in ACTIVATIONS:
            raise JobError(
                f"{where}: activation {activation!r} is not supported "
                f"(known: {', '.join(ACTIVATIONS)})"
            )
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise JobError(
                f"{where}: output_activation {output_activation!r} is not supported "
                f"(known: {', '.join(OUTPUT_ACTIVATIONS)})"
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


def read_mlp_shard(
    folder: Path, config: MLPConfig, dtype: str, tp_rank: int = 0, tp: int = 1
) -> list[tuple[Any, Any]]:
    """This TP rank's [(w, b)] as host arrays in `dtype`, reading only its slices.

    The stored weight A is (out_i, in_i); w is its transpose (in_i, out_i), read a few MiB
    at a time. Column layers keep A's rows `shard_range(out_i)` (w's columns) and those
    entries of b; row layers keep A's columns `shard_range(in_i)` (w's rows) and all of b
    (added once, after the sum).
    """
    weights = SafetensorsFile(folder / "model.safetensors")
    params = []
    splits = layer_splits(config.layer_sizes, tp)
    for i, (n_in, n_out) in enumerate(itertools.pairwise(config.layer_sizes)):
        for name, shape in ((f"layers.{i}.weight", (n_out, n_in)), (f"layers.{i}.bias", (n_out,))):
            info = weights.info(name)
            if info.shape != shape:
                raise JobError(
                    f"{weights.path}: {name} has shape {info.shape}, expected {shape} "
                    f"from layer_sizes in config.json"
                )
        if splits[i].kind == "column":
            rows = _as_slice(shard_range(n_out, tp_rank, tp))
            w = weights.read_transposed(f"layers.{i}.weight", rows=rows, dtype=dtype)
            b = weights.read(f"layers.{i}.bias", rows=rows, dtype=dtype)
            # w (in_i, out_i/tp), b (out_i/tp,)
        else:
            cols = _as_slice(shard_range(n_in, tp_rank, tp))
            w = weights.read_transposed(f"layers.{i}.weight", cols=cols, dtype=dtype)
            b = weights.read(f"layers.{i}.bias", dtype=dtype)  # w (in_i/tp, out_i), b (out_i,)
        params.append((w, b))
    return params


def _as_slice(r: range) -> slice:
    return slice(r.start, r.stop)


class MLP:
    """An MLP bound to a backend and a TP group: host batch in, host outputs out.

    Every rank of the TP group gets the same rows and returns the same, complete outputs.
    """

    def __init__(
        self,
        config: MLPConfig,
        params: list,
        backend: Any,
        dtype: str,
        tp: Collectives | None = None,
    ):
        tp = tp or Solo()
        self.config = config
        self.tp_size = tp.size
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.weight_bytes = sum(w.nbytes + b.nbytes for w, b in params)  # this rank's share
        self.params = [(backend.asarray(w), backend.asarray(b)) for w, b in params]
        self.row_shape = (config.layer_sizes[0],)
        self.outputs = {"outputs": ((config.layer_sizes[-1],), self.dtype)}
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
        tp_rank: int = 0,
    ) -> MLP:
        tp = tp or Solo()
        mlp_config = MLPConfig.from_json(config, folder / "config.json")
        mlp_config.check_tp(tp.size, folder / "config.json")
        params = read_mlp_shard(folder, mlp_config, dtype, tp_rank, tp.size)
        return cls(mlp_config, params, backend, dtype, tp)

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

    def describe(self) -> dict[str, Any]:
        return {
            "model_type": "mlp",
            "layer_sizes": list(self.config.layer_sizes),
            "activation": self.config.activation,
            "output_activation": self.config.output_activation,
        }
