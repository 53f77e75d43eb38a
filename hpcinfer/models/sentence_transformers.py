"""The sentence-transformers files of a model folder, every version in use (2.x to 6.x).

Pure parsing, no arrays: what the files say about the head that turns token states into
one vector per text, the maximum length, and the prompts. Every malformed file is one
JobError line naming the file and the key.

    modules.json                        the module chain: Transformer, Pooling, then any of
                                        Dense and Normalize, in order. Types are matched by
                                        their class name, so 2.x-5.x paths
                                        (sentence_transformers.models.Pooling) and 6.x ones
                                        (sentence_transformers.sentence_transformer.modules
                                        .pooling.Pooling) both work.
    1_Pooling/config.json               2.x-5.x: one boolean per mode (pooling_mode_cls_token,
                                        _mean_tokens, _max_tokens, _mean_sqrt_len_tokens,
                                        _weightedmean_tokens, pooling_mode_lasttoken), several
                                        true = concatenated in that fixed order, none = mean;
                                        6.x: "pooling_mode": a mode or a list (concatenated in
                                        the list's order). include_prompt (default true).
    2_Dense/config.json                 in_features, out_features, bias, activation_function
                                        (torch class path; absent = Tanh), use_residual;
                                        weights linear.weight (out, in), linear.bias,
                                        residual.weight in model.safetensors (2.x wrote a
                                        pickle, pytorch_model.bin: refused, with a hint)
    Normalize                           listed in modules.json; its folder is optional
    sentence_bert_config.json           2.x-5.x: max_seq_length (wins over the tokenizer's),
                                        do_lower_case; 6.x: neither
    tokenizer_config.json               model_max_length (what 6.x keeps the length in)
    config_sentence_transformers.json   prompts {name: text}, default_prompt_name (2.7+)

A folder without modules.json is a plain Hugging Face model: mean pooling, as
sentence-transformers does for one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError

# Concatenation order when several 2.x-5.x flags are true (sentence-transformers' own).
LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(LEGACY_FLAGS.values())
# Dense activation_function (a torch.nn class path) -> hpcinfer's name for it.
ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
KNOWN_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
NO_PROMPT = "none"  # model.prompt_name: encode texts as they are
DEFAULT_PROMPT = "auto"  # model.prompt_name: the folder's default_prompt_name, if any
# transformers' "no limit" (VERY_LARGE_INTEGER = 1e30) and anything like it
UNSET_LENGTH = 10**12


@dataclass(frozen=True)
class Pooling:
    modes: tuple[str, ...]  # concatenated in this order
    include_prompt: bool = True  # False: prompt tokens are left out of the pooled vector


@dataclass(frozen=True)
class Dense:
    """A linear layer after pooling: y = act(x @ W.T + b) (+ x, or + x @ R.T, if residual)."""

    path: str  # the module's folder, relative to the model folder
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a value of ACTIVATIONS
    residual: bool = False

    @property
    def weight_names(self) -> tuple[str, ...]:
        names = ["linear.weight"] + (["linear.bias"] if self.bias else [])
        if self.residual and self.in_features != self.out_features:
            names.append("residual.weight")
        return tuple(names)


@dataclass(frozen=True)
class Normalize:
    """Unit length: x / max(|x|, 1e-12)."""


@dataclass(frozen=True)
class Head:
    """What turns token states into sentence embeddings, and how texts are prepared."""

    pooling: Pooling
    steps: tuple[Dense | Normalize, ...] = ()  # after pooling, in modules.json order
    max_seq_length: int | None = None  # sentence_bert_config.json's, if it has one
    do_lower_case: bool = False  # sentence_bert_config.json: lower-case texts first
    prompts: tuple[tuple[str, str], ...] = ()  # (name, text)
    default_prompt_name: str | None = None

    @property
    def normalize(self) -> bool:
        return any(isinstance(s, Normalize) for s in self.steps)

    @property
    def dense(self) -> tuple[Dense, ...]:
        return tuple(s for s in self.steps if isinstance(s, Dense))

    def dimension(self, hidden: int) -> int:
        dense = self.dense
        return dense[-1].out_features if dense else hidden * len(self.pooling.modes)

    def describe(self) -> str:
        """e.g. "mean pooling -> Dense 32->16 tanh -> normalize"."""
        parts = ["+".join(self.pooling.modes) + " pooling"]
        if not self.pooling.include_prompt:
            parts[0] += " (prompt left out)"
        for s in self.steps:
            parts.append(
                f"Dense {s.in_features}->{s.out_features} {s.activation}"
                if isinstance(s, Dense)
                else "normalize"
            )
        return " -> ".join(parts)


# ---- reading files -------------------------------------------------------------------


def read_json(path: Path, expect: type = dict) -> Any:
    """A JSON value of type `expect` from `path`, or one JobError line naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise JobError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JobError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, expect):
        raise JobError(f"{path}: expected a JSON {expect.__name__}, found {type(value).__name__}")
    return value


def _optional_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _typed(config: dict, key: str, kind: type, where: Path, default: Any = None) -> Any:
    """config[key] if it has type `kind` (bool is not an int here); default if absent/null."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise JobError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    return value


def read_head(folder: Path, hidden: int) -> Head:
    """The sentence-transformers head of `folder` for an encoder of width `hidden`."""
    sbert_path = folder / "sentence_bert_config.json"
    sbert = _optional_json(sbert_path)
    max_seq = _typed(sbert, "max_seq_length", int, sbert_path)
    if max_seq is not None and max_seq < 1:
        raise JobError(f"{sbert_path}: max_seq_length must be at least 1, got {max_seq}")
    lower = _typed(sbert, "do_lower_case", bool, sbert_path, False)
    prompts, default_prompt = read_prompts(folder)
    pooling, steps = Pooling(("mean",)), []
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        pooling, steps = _read_modules(folder, modules_path, hidden)
    return Head(pooling, tuple(steps), max_seq, lower, prompts, default_prompt)


def _read_modules(folder: Path, where: Path, hidden: int) -> tuple[Pooling, list]:
    modules = read_json(where, list)
    kinds = []
    for i, m in enumerate(modules):
        if not isinstance(m, dict) or not isinstance(m.get("type"), str):
            raise JobError(f"{where}: module {i} must be an object with a string 'type'")
        path = m.get("path", "")
        if not isinstance(path, str):
            raise JobError(f"{where}: module {i} ({m['type']}): path must be a string")
        kind = m["type"].rsplit(".", 1)[-1]
        if kind not in KNOWN_MODULES:
            raise JobError(
                f"{where}: module {i} type {m['type']!r} is not supported "
                f"(known: {', '.join(KNOWN_MODULES)})"
            )
        kinds.append((kind, path))
    names = [k for k, _ in kinds]
    if names[:2] != ["Transformer", "Pooling"] or "Transformer" in names[1:]:
        raise JobError(
            f"{where}: expected Transformer, then Pooling, then Dense or Normalize modules; "
            f"got {', '.join(names) or 'none'}"
        )
    if kinds[0][1] not in ("", "."):
        raise JobError(
            f"{where}: the Transformer module lives in {kinds[0][1]!r}; hpcinfer reads the "
            "encoder from the model folder itself"
        )
    pooling = read_pooling(folder / kinds[1][1] / "config.json", hidden)
    steps: list = []
    width = hidden * len(pooling.modes)
    for kind, path in kinds[2:]:
        if kind == "Pooling":
            raise JobError(f"{where}: more than one Pooling module")
        if kind == "Normalize":
            steps.append(Normalize())
            continue
        dense = read_dense(folder / path / "config.json", path)
        if dense.in_features != width:
            raise JobError(
                f"{folder / path / 'config.json'}: in_features {dense.in_features} does not "
                f"match the {width} values the module before it gives"
            )
        steps.append(dense)
        width = dense.out_features
    return pooling, steps


def read_pooling(path: Path, hidden: int) -> Pooling:
    """A Pooling module's config.json, in either format."""
    if not path.is_file():
        raise JobError(f"{path}: not found (modules.json lists a Pooling module there)")
    config = read_json(path)
    if "pooling_mode" in config:
        given = config["pooling_mode"]
        modes = (given,) if isinstance(given, str) else given
        if (
            not isinstance(modes, list | tuple)
            or not modes
            or not all(isinstance(m, str) for m in modes)
        ):
            raise JobError(f"{path}: pooling_mode must be a mode or a list of modes, got {given!r}")
        modes = tuple(modes)
    else:
        for key in LEGACY_FLAGS:
            _typed(config, key, bool, path)
        modes = tuple(mode for key, mode in LEGACY_FLAGS.items() if config.get(key)) or ("mean",)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise JobError(
            f"{path}: pooling_mode {unknown[0]!r} is not known ({', '.join(POOLING_MODES)})"
        )
    for key in ("embedding_dimension", "word_embedding_dimension"):
        dim = _typed(config, key, int, path)
        if dim is not None and dim != hidden:
            raise JobError(f"{path}: {key} is {dim} but the encoder's hidden size is {hidden}")
    return Pooling(modes, _typed(config, "include_prompt", bool, path, True))


def read_dense(path: Path, module_path: str) -> Dense:
    """A Dense module's config.json (its weights are read by the loader)."""
    if not path.is_file():
        raise JobError(f"{path}: not found (modules.json lists a Dense module there)")
    config = read_json(path)
    sizes = []
    for key in ("in_features", "out_features"):
        value = _typed(config, key, int, path)
        if value is None or value < 1:
            raise JobError(f"{path}: {key} must be a positive integer, got {value!r}")
        sizes.append(value)
    activation = _typed(
        config, "activation_function", str, path, "torch.nn.modules.activation.Tanh"
    )
    if activation not in ACTIVATIONS:
        raise JobError(
            f"{path}: activation_function {activation!r} is not supported "
            f"(known: {', '.join(ACTIVATIONS)})"
        )
    return Dense(
        module_path,
        *sizes,
        bias=_typed(config, "bias", bool, path, True),
        activation=ACTIVATIONS[activation],
        residual=_typed(config, "use_residual", bool, path, False),
    )


def dense_weights_folder(folder: Path, dense: Dense) -> Path:
    """The folder of a Dense module's model.safetensors; a pickle is refused with a hint."""
    where = folder / dense.path
    if (where / "model.safetensors").is_file():
        return where
    if (where / "pytorch_model.bin").is_file():
        raise JobError(
            f"{where / 'pytorch_model.bin'}: a PyTorch pickle, which hpcinfer never loads; "
            'convert it once where PyTorch is installed: python -c "import torch, '
            "safetensors.torch as s; s.save_file(torch.load('pytorch_model.bin', "
            "weights_only=True), 'model.safetensors')\" in that folder (weights_only: "
            "tensors only, no code)"
        )
    raise JobError(f"{where / 'model.safetensors'}: not found (the Dense module's weights)")


# ---- lengths and prompts -------------------------------------------------------------


def max_length(folder: Path, head: Head, positions: int) -> int:
    """Tokens per text: sentence_bert_config.json's max_seq_length, else
    tokenizer_config.json's model_max_length, else `positions` (what the position
    embeddings hold); never more than `positions`."""
    if head.max_seq_length is not None:
        return min(head.max_seq_length, positions)
    path = folder / "tokenizer_config.json"
    config = _optional_json(path)
    value = config.get("model_max_length")
    if value is None:
        return positions
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobError(f"{path}: model_max_length must be a positive integer, got {value!r}")
    return positions if value >= UNSET_LENGTH else min(value, positions)


def read_prompts(folder: Path) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """(prompts as (name, text) pairs, default_prompt_name) of
    config_sentence_transformers.json; none if it has none."""
    path = folder / "config_sentence_transformers.json"
    config = _optional_json(path)
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise JobError(f"{path}: prompts must be an object of name -> text")
    default = _typed(config, "default_prompt_name", str, path)
    if default is not None and default not in prompts:
        raise JobError(
            f"{path}: default_prompt_name {default!r} is not one of the prompts "
            f"({', '.join(prompts) or 'none'})"
        )
    return tuple(prompts.items()), default


def choose_prompt(folder: Path, head: Head, prompt_name: str) -> tuple[str | None, str]:
    """(name, text) of the prompt put before every text, as sentence-transformers'
    encode() does: `auto` = the folder's default_prompt_name (none if it has none),
    `none` = no prompt, else a prompt of config_sentence_transformers.json by name."""
    prompts = dict(head.prompts)
    if prompt_name == NO_PROMPT:
        return None, ""
    if prompt_name == DEFAULT_PROMPT:
        name = head.default_prompt_name
        return (name, prompts[name]) if name else (None, "")
    if prompt_name not in prompts:
        known = ", ".join(prompts) or "none"
        raise JobError(
            f"model.prompt_name = {prompt_name!r}: "
            f"{folder / 'config_sentence_transformers.json'} has no such prompt (known: {known}; "
            f"or {DEFAULT_PROMPT!r}, {NO_PROMPT!r})"
        )
    return prompt_name, prompts[prompt_name]
