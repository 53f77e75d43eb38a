"""Models: pure forward functions of (params, inputs), and loaders from model folders.

A model folder holds `config.json` (its `model_type` selects the family) and the
weights; a model may also be one llama.cpp `.gguf` file, whose metadata stands in for
config.json (`model_type` from `general.architecture`). Each family module offers:

    load(path, config, backend, dtype, tp, task, **options) -> Model   this rank's shard
    architecture(path, config, weights) -> config object            for `inspect`: title,
                                     misfit(tp), shard_table(rank, size), collectives(tp)
    open_model_weights(path, config)  (optional) its weights under the names its shard
                                     table uses (GGUF files); else `open_weights(folder)`

Models import no MPI: they receive a `Collectives` (hpcinfer.parallel.tensor) and call
the tensor-parallel kernels, so `inspect` and `status` run without mpi4py.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hpcinfer.errors import JobError
from hpcinfer.models.base import InputKind, Model, OutputSpec
from hpcinfer.parallel.tensor import Collectives, Solo

__all__ = ["FAMILIES", "InputKind", "Model", "OutputSpec", "family_of", "load_model"]


@dataclass(frozen=True)
class Family:
    tasks: tuple[str, ...]  # what it can compute; the first is the default
    module: str  # imported only when a model of this family is loaded or inspected
    options: tuple[str, ...] = ()  # [model] job keys its load() takes (see MODEL_OPTIONS)
    fast_backend: str = "numpy"  # run.backend = "auto" takes it (measured per family)

    def load_module(self) -> ModuleType:
        return importlib.import_module(self.module)


EMBEDDER = "hpcinfer.models.embedder"
# MLP: numpy and JAX run at the GEMM rate alike (README, tensor parallelism), numpy is
# the reference; text models: JAX ~4x numpy (fused attention and elementwise work).
_DECODER = Family(("score", "embed"), "hpcinfer.models.llama", ("pooling",), "jax")
FAMILIES = {
    "mlp": Family(("predict",), "hpcinfer.models.mlp"),
    "bert": Family(("embed",), EMBEDDER, ("prompt_name",), "jax"),
    "roberta": Family(("embed",), EMBEDDER, ("prompt_name",), "jax"),
    "xlm-roberta": Family(("embed",), EMBEDDER, ("prompt_name",), "jax"),
    "distilbert": Family(("embed",), EMBEDDER, ("prompt_name",), "jax"),
    "gpt2": Family(("score",), "hpcinfer.models.gpt2", (), "jax"),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
}
# [model] job keys a family may take, with the value that means "not set".
MODEL_OPTIONS = {"prompt_name": "auto", "pooling": "auto"}


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a model folder (or the config a .gguf file's metadata describes),
    with errors that name the file."""
    if is_gguf(folder) and not folder.is_dir():
        from hpcinfer.io.gguf_file import GgufFile
        from hpcinfer.models.llama_gguf import gguf_config

        if not folder.exists():
            raise JobError(f"{folder}: GGUF file not found (model.path)")
        return gguf_config(GgufFile(folder))
    if folder.is_file():
        raise JobError(
            f"{folder}: a file, but not a .gguf file; a model is a folder (config.json and "
            "weights) or a GGUF file"
        )
    if not folder.is_dir():
        raise JobError(f"{folder}: model folder not found (model.path)")
    path = folder / "config.json"
    if not path.is_file():
        raise JobError(f"{path}: not found (a model folder needs config.json)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
        raise JobError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise JobError(f"{path}: must hold a JSON object")
    return config


def family_of(folder: Path, config: dict[str, Any]) -> Family:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        where = folder if is_gguf(folder) else folder / "config.json"
        raise JobError(
            f"{where}: unsupported model_type {model_type!r} (known: {', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def open_model_weights(path: Path, config: dict[str, Any]) -> Any:
    """The weights of a model (folder or GGUF file), header only, under the names its
    family's shard table uses: what `inspect` reads."""
    module = family_of(path, config).load_module()
    if hasattr(module, "open_model_weights"):
        return module.open_model_weights(path, config)
    from hpcinfer.io.safetensors_checkpoint import open_weights

    return open_weights(path)


def load_model(
    folder: Path,
    backend: Any,
    dtype: str,
    tp: Collectives | None = None,
    task: str = "auto",
    **options: Any,
) -> Model:
    """Load this TP rank's shard of the model in `folder` (or GGUF file), computing in
    `dtype`.

    `tp` is the TP group's collectives (hpcinfer.parallel.comm), which know this rank's
    place in the group; None means no tensor parallelism. `task` (model.task) must be
    one the family can do; "auto" takes its default. `options` are further [model] keys
    (MODEL_OPTIONS, e.g. prompt_name): one set to other than its default is refused for
    a family that does not take it.
    """
    config = read_config(folder)
    family = family_of(folder, config)
    if task != "auto" and task not in family.tasks:
        raise JobError(
            f"model.task = {task!r} is not available for model_type {config['model_type']!r} "
            f"({folder}); it can do: {', '.join(family.tasks)}"
        )
    task = family.tasks[0] if task == "auto" else task
    for key, value in options.items():
        if key not in MODEL_OPTIONS:
            raise TypeError(f"load_model: unknown option {key!r}")
        if key not in family.options and value != MODEL_OPTIONS[key]:
            raise JobError(
                f"model.{key} = {value!r} is not available for model_type "
                f"{config['model_type']!r} ({folder})"
            )
    taken = {k: v for k, v in options.items() if k in family.options}
    return family.load_module().load(folder, config, backend, dtype, tp or Solo(), task, **taken)
