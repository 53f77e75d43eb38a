"""Multi-layer perceptron: the model format hpcinfer defines for dense feed-forward nets.

Folder contract:
    config.json        {"model_type": "mlp", "layer_sizes": [in, h1, ..., out],
                        "activation": "relu"|"tanh"|"logistic"|"identity",
                        "output_activation": "softmax"|"logistic"|"identity"}
    model.safetensors  layers.{i}.weight (out_i, in_i), layers.{i}.bias (out_i,)
                       (PyTorch nn.Linear convention; F32, F16, BF16 or F64)

Forward, for layer i with W_i stored as (out_i, in_i):
    x_{i+1} = act(x_i @ W_i^T + b_i)      # (B, out_i); the last layer uses output_activation
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_file import SafetensorsFile


def relu(x, xp):
    return xp.maximum(x, 0)


def tanh(x, xp):
    return xp.tanh(x)


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


def mlp_forward(params, x, *, xp, activation: str, output_activation: str):
    """x (B, in) -> (B, out). params: [(w_t (in_i, out_i), b (out_i,)), ...]."""
    hidden, last = ACTIVATIONS[activation], OUTPUT_ACTIVATIONS[output_activation]
    for i, (w_t, b) in enumerate(params):
        x = x @ w_t + b  # (B, out_i)
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


def read_mlp_weights(folder: Path, config: MLPConfig, dtype: str) -> list[tuple[Any, Any]]:
    """[(w_t (in_i, out_i), b (out_i,))] as host arrays in `dtype`, shapes checked."""
    weights = SafetensorsFile(folder / "model.safetensors")
    params = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(config.layer_sizes)):
        for name, shape in ((f"layers.{i}.weight", (n_out, n_in)), (f"layers.{i}.bias", (n_out,))):
            info = weights.info(name)
            if info.shape != shape:
                raise JobError(
                    f"{weights.path}: {name} has shape {info.shape}, expected {shape} "
                    f"from layer_sizes in config.json"
                )
        w = weights.read(f"layers.{i}.weight", dtype=dtype)  # (out_i, in_i)
        b = weights.read(f"layers.{i}.bias", dtype=dtype)  # (out_i,)
        params.append((np.ascontiguousarray(w.T), b))
    return params


class MLP:
    """An MLP bound to a backend: host batch in, host probabilities/logits out."""

    def __init__(self, config: MLPConfig, params: list, backend: Any, dtype: str):
        self.config = config
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.params = [(backend.asarray(w), backend.asarray(b)) for w, b in params]
        self.row_shape = (config.layer_sizes[0],)
        self.outputs = {"outputs": ((config.layer_sizes[-1],), self.dtype)}
        self._forward = backend.jit(
            partial(
                mlp_forward,
                xp=backend.xp,
                activation=config.activation,
                output_activation=config.output_activation,
            )
        )

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any], backend: Any, dtype: str) -> MLP:
        mlp_config = MLPConfig.from_json(config, folder / "config.json")
        return cls(mlp_config, read_mlp_weights(folder, mlp_config, dtype), backend, dtype)

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        y = self._forward(self.params, self.backend.asarray(batch))  # (B, out)
        return {"outputs": self.backend.to_host(y)}

    def describe(self) -> dict[str, Any]:
        return {
            "model_type": "mlp",
            "layer_sizes": list(self.config.layer_sizes),
            "activation": self.config.activation,
            "output_activation": self.config.output_activation,
        }
