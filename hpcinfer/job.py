"""Job files: TOML -> frozen dataclasses, validated with messages that name file and key.

A job file has four sections:

    [model]   path = "../data/models/digits-mlp", task (auto | predict | embed | score),
              prompt_name (auto | none | a prompt's name; sentence embedders)
    [input]   path = "../data/digits.h5", dataset = "x"  (or a .jsonl with field = "text")
    [output]  path = "../out/digits-mlp.h5"
    [run]     backend, batch_size, chunk_size, dtype, threads, checkpoint, balance, tp,
              tp_comm

Relative paths are resolved against the job file's folder, so a job runs the same from
any working directory. Values given with `--set section.key=value` on the command line
override the file; relative paths given there are resolved against the working directory
(where the user typed them).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError

BACKENDS = ("auto", "numpy", "jax", "cupy")
DTYPES = ("float32", "float64")
INPUT_FORMATS = ("auto", "hdf5", "jsonl", "text")
BALANCES = ("steal", "static")
TP_COMMS = ("auto", "mpi", "host", "mpi4jax", "nccl")
TASKS = ("auto", "predict", "embed", "score")


@dataclass(frozen=True)
class ModelSection:
    path: Path = field(metadata={"kind": "path", "required": True})
    # What to compute: predict (MLP outputs), embed (encoders), score (GPT-2 log-probs);
    # auto: the model type's own task (hpcinfer.models.TASKS).
    task: str = field(default="auto", metadata={"kind": str, "choices": TASKS})
    # Sentence embedders: the prompt put before every text, by its name in the folder's
    # config_sentence_transformers.json; auto: its default_prompt_name; none: no prompt.
    prompt_name: str = field(default="auto", metadata={"kind": str})


@dataclass(frozen=True)
class InputSection:
    path: Path = field(metadata={"kind": "path", "required": True})
    # hdf5 | jsonl | text; auto: by extension (.h5/.hdf5, .jsonl/.json, anything else text)
    format: str = field(default="auto", metadata={"kind": str, "choices": INPUT_FORMATS})
    dataset: str = field(default="x", metadata={"kind": str})  # HDF5: the dataset's name
    # JSONL: the key holding each row's text (or list of token ids)
    field: str = field(default="text", metadata={"kind": str})


@dataclass(frozen=True)
class OutputSection:
    path: Path = field(metadata={"kind": "path", "required": True})


@dataclass(frozen=True)
class RunSection:
    # auto: jax where installed for the models it runs faster (text models), else numpy
    backend: str = field(default="auto", metadata={"kind": str, "choices": BACKENDS})
    # Rows per forward pass of a model of numeric rows (an MLP).
    batch_size: int = field(default=256, metadata={"kind": int, "min": 1})
    # Padded tokens per forward pass of a text model: bounds a batch's memory whatever
    # the text lengths; 0 = auto (1024 on a CPU, 16384 on a GPU).
    max_batch_tokens: int = field(default=0, metadata={"kind": int, "min": 0})
    # Rows per chunk, the unit of scheduling and of durable progress; auto: from the row
    # count alone (hpcinfer.settings), so a run resumes on any layout.
    chunk_size: int | str = field(default="auto", metadata={"kind": "int_or_auto", "min": 1})
    dtype: str = field(default="float32", metadata={"kind": str, "choices": DTYPES})
    # Threads per rank for BLAS/XLA; 0 = this node's cores / ranks on this node.
    threads: int = field(default=0, metadata={"kind": int, "min": 0})
    # Chunks durable (fsync) and journalled, so an interrupted run resumes; false only
    # to measure what that costs.
    checkpoint: bool = field(default=True, metadata={"kind": bool})
    # steal: DP groups that run dry take work from others; static: fixed blocks only.
    balance: str = field(default="steal", metadata={"kind": str, "choices": BALANCES})
    # Ranks per tensor-parallel group: each holds 1/tp of every weight matrix.
    tp: int = field(default=1, metadata={"kind": int, "min": 1})
    # How tensors cross the TP group (per backend; see hpcinfer.parallel.comm): auto = the default.
    tp_comm: str = field(default="auto", metadata={"kind": str, "choices": TP_COMMS})


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "input": InputSection,
    "output": OutputSection,
    "run": RunSection,
}


@dataclass(frozen=True)
class Job:
    source: Path
    model: ModelSection
    input: InputSection
    output: OutputSection
    run: RunSection

    def options(self) -> dict[str, Any]:
        """The job as plain TOML-like data (paths as strings), for output attributes."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: str(v) if isinstance(v, Path) else v for k, v in section.items()}
        return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); value read as TOML, else as a string."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise JobError(f"--set {text!r}: expected section.key=value, e.g. run.batch_size=64")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key.strip(), value


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """Read and validate a job file; `overrides` are `section.key=value` strings."""
    if "\x00" in str(path):
        raise JobError(f"{str(path)!r}: the job file's path contains a NUL byte")
    source = Path(path)
    _check_no_loop(source, f"{source}: job file")
    if not source.is_file():
        raise JobError(f"{source}: job file not found")
    raw = _read_toml(source)
    return build_job(raw, source, source.resolve().parent, overrides)


def job_from_dict(data: Mapping[str, Any], base: Path) -> Job:
    """A job built in code, validated like a job file; relative paths against `base`."""
    if not isinstance(data, Mapping):
        raise JobError(f"a job must be a mapping of sections, got {type(data).__name__}")
    return build_job(dict(data), PYTHON_SOURCE, Path(base).resolve(), ())


PYTHON_SOURCE = Path("<job built in Python>")


def build_job(
    raw: dict[str, Any], source: Path, base: Path, overrides: list[str] | tuple[str, ...]
) -> Job:
    """Sections of plain values -> a validated Job (`source` names it in messages)."""
    # (value, where it came from, folder relative paths are resolved against)
    entries: dict[str, dict[str, tuple[Any, str, Path]]] = {}
    for section_name, body in raw.items():
        if section_name not in SECTIONS:
            raise JobError(
                f"{source}: unknown section [{section_name}] (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(body, dict):
            raise JobError(f"{source}: {section_name} must be a [section], not a value")
        entries[section_name] = {
            key: (value, f"{source}: {section_name}.{key}", base) for key, value in body.items()
        }
    for text in overrides:
        section_name, key, value = parse_override(text)
        if section_name not in SECTIONS:
            raise JobError(f"--set {text!r}: unknown section [{section_name}]")
        where = f"--set {section_name}.{key}"
        entries.setdefault(section_name, {})[key] = (value, where, Path.cwd())

    sections = {
        name: _build_section(name, cls, entries.get(name, {}), source)
        for name, cls in SECTIONS.items()
    }
    return Job(source=source, **sections)


def _read_toml(source: Path) -> dict[str, Any]:
    """The job file as TOML data; not UTF-8, not TOML or nested past the stack: one line."""
    data = source.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise JobError(
            f"{source}:{line}: not UTF-8 (byte {column}); job files are UTF-8 TOML"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:
        raise JobError(f"{source}: not valid TOML: nested too deeply") from None


def _check_no_loop(path: Path, where: str) -> None:
    """A symbolic-link loop on the way to `path` is an error naming it (a missing or
    not-yet-made path is fine: what it must be is checked where it is used)."""
    try:
        os.path.realpath(path, strict=True)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise JobError(f"{where}: {path} runs into a loop of symbolic links") from None


def _path(value: str, where: str, base: Path) -> Path:
    """A path from a job: `~` and `~user` expanded, relative to `base`; no NUL, no loop."""
    if "\x00" in value:
        raise JobError(f"{where}: the path {value!r} contains a NUL byte")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user, or no home directory
        raise JobError(f"{where}: {value.split('/')[0]} in {value!r}: no such user") from None
    absolute = p.is_absolute()
    p = p if absolute else base / p
    _check_no_loop(p, where)
    return p if absolute else p.resolve()


def _build_section(name: str, cls: type, entries: dict, source: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, (_, where, _) in entries.items():
        if key not in fields:
            known = ", ".join(fields)
            raise JobError(f"{where}: unknown key (known in [{name}]: {known})")
    values = {}
    for key, f in fields.items():
        if key not in entries:
            if f.metadata.get("required"):
                raise JobError(f"{source}: missing required key {name}.{key}")
            continue
        value, where, base = entries[key]
        values[key] = _check_value(value, f.metadata, where, base)
    return cls(**values)


def _check_value(value: Any, meta: dict, where: str, base: Path) -> Any:
    kind = meta["kind"]
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise JobError(f"{where} must be a path string, got {value!r}")
        return _path(value, where, base)
    if kind == "int_or_auto":
        if value == "auto":
            return value
        kind = int
    if kind is bool and not isinstance(value, bool):
        raise JobError(f"{where} must be true or false, got {type(value).__name__} {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise JobError(f"{where} must be an integer, got {type(value).__name__} {value!r}")
    if kind is str and not isinstance(value, str):
        raise JobError(f"{where} must be a string, got {type(value).__name__} {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise JobError(f"{where} must be one of {', '.join(meta['choices'])}; got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise JobError(f"{where} must be >= {meta['min']}, got {value}")
    return value
