"""Job files: TOML -> frozen dataclasses, validated with messages that name file and key.

A job file has four sections:

    [model]   path = "../data/models/digits-mlp", task, prompt_name, pooling
    [input]   path = "../data/digits.h5", format, dataset = "x", field = "text"
    [output]  path = "../out/digits-mlp.h5", keep, datasets, dtype
    [run]     backend, batch_size, chunk_size, dtype, threads, checkpoint, balance, tp,
              tp_comm

Each key is a dataclass field whose metadata holds its check and its `help`;
`describe_keys()` (what `run --help` prints) is made from them.

Relative paths are resolved against the job file's folder, so a job runs the same from
any working directory. Values given with `--set section.key=value` on the command line
override the file; relative paths given there are resolved against the working directory
(where the user typed them).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError

BACKENDS = ("auto", "numpy", "jax", "cupy")
DTYPES = ("float32", "float64")
INPUT_FORMATS = ("auto", "jsonl", "json", "text", "csv", "tsv", "parquet", "hdf5")
OUTPUT_DTYPES = ("auto", "float32", "float16", "bfloat16")
BALANCES = ("steal", "static")
TP_COMMS = ("auto", "mpi", "host", "mpi4jax", "nccl")
TASKS = ("auto", "predict", "embed", "score")
POOLINGS = ("auto", "last_token", "mean")


def key(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A job key: its default, its check (`kind`, `choices`, `min`, `required`) and the
    `help` that `run --help` prints (describe_keys)."""
    meta["help"] = help
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelSection:
    path: Path = key(kind="path", required=True, help=(
        "the model folder: config.json, model.safetensors and, for texts, a tokenizer"
    ))  # fmt: skip
    task: str = key("auto", kind=str, choices=TASKS, help=(
        "what to compute: predict (MLP outputs), embed (encoders), score (GPT-2 "
        "or Llama-family log-probs); auto: the model type's own task"
    ))  # fmt: skip
    prompt_name: str = key("auto", kind=str, help=(
        "sentence embedders: the prompt put before every text, by its name in "
        "config_sentence_transformers.json; auto: its default_prompt_name; none: no prompt"
    ))  # fmt: skip
    pooling: str = key("auto", kind=str, choices=POOLINGS, help=(
        "embed with a decoder (llama, qwen2, ...): last_token or mean over the tokens; "
        "auto: the folder's sentence-transformers pooling, else last_token"
    ))  # fmt: skip


@dataclass(frozen=True)
class InputSection:
    path: Path = key(kind="path", required=True, help=(
        "the input file: JSONL, a JSON array, text, CSV/TSV (with a header), Parquet or "
        "HDF5; JSONL, JSON, text and CSV/TSV also gzip-, zstd- or bz2-compressed"
    ))  # fmt: skip
    format: str = key("auto", kind=str, choices=INPUT_FORMATS, help=(
        "the record format; auto: by content (Parquet, HDF5), else by name (.jsonl "
        ".ndjson .json .txt .csv .tsv .parquet .h5, also before .gz .zst .bz2); an unknown "
        "name is an error. Compression is always found from the content"
    ))  # fmt: skip
    dataset: str = key("x", kind=str, help="HDF5: the dataset of rows (rows along axis 0)")
    field: str = key("text", kind=str, help=(
        "JSONL, JSON array, CSV/TSV, Parquet: the key or column holding each row's text "
        "(or list of token ids)"
    ))  # fmt: skip


@dataclass(frozen=True)
class OutputSection:
    path: Path = key(kind="path", required=True, help=(
        "the HDF5 file written at the end: one dataset per model output (named by the "
        "model, e.g. outputs, embeddings, logprob), rows in input order, and attributes "
        "recording version, model, input, job and layout"
    ))  # fmt: skip
    keep: tuple[str, ...] = key((), kind="names", help=(
        'input columns copied to the output, row-aligned, one dataset each (e.g. ["id"]): '
        "JSON keys, CSV or Parquet columns, HDF5 datasets of the input file; texts are "
        "stored as UTF-8 strings, numbers as their type"
    ))  # fmt: skip
    datasets: dict[str, str] = key({}, kind="renames", help=(
        'output dataset names, the model\'s name = yours (e.g. {embeddings = "vectors"})'
    ))  # fmt: skip
    dtype: str = key("auto", kind=str, choices=OUTPUT_DTYPES, help=(
        "how floating-point outputs are stored; auto: as computed (run.dtype, float64 for "
        "log-probs); bfloat16: its raw bits as uint16, the dataset's attribute "
        "hpcinfer_dtype says so (export reads it back as float32)"
    ))  # fmt: skip


@dataclass(frozen=True)
class RunSection:
    backend: str = key("auto", kind=str, choices=BACKENDS, help=(
        "auto: jax where installed for the models it runs faster (text models), else "
        "numpy; numpy (the reference), jax (XLA-compiled) or cupy (a GPU)"
    ))  # fmt: skip
    batch_size: int = key(256, kind=int, min=1, help=(
        "rows per forward pass of a model of numeric rows (an MLP)"
    ))  # fmt: skip
    max_batch_tokens: int = key(0, kind=int, min=0, help=(
        "padded tokens per forward pass of a text model: bounds a batch's memory whatever "
        "the text lengths; 0: auto (1024 on a CPU, 16384 on a GPU)"
    ))  # fmt: skip
    chunk_size: int | str = key("auto", kind="int_or_auto", min=1, help=(
        "rows per chunk: the unit of scheduling, checkpointing and resume; auto: from the "
        "row count alone, so a run resumes on any layout"
    ))  # fmt: skip
    dtype: str = key("float32", kind=str, choices=DTYPES, help="the dtype weights compute in")
    threads: int = key(0, kind=int, min=0, help=(
        "BLAS/XLA threads per rank; 0: cores on the node / ranks on the node (env "
        "HPCINFER_THREADS also works)"
    ))  # fmt: skip
    checkpoint: bool = key(True, kind=bool, help=(
        "chunks durable (fsync) and journalled, so an interrupted run resumes; false only "
        "to measure what that costs"
    ))  # fmt: skip
    balance: str = key("steal", kind=str, choices=BALANCES, help=(
        "steal: data-parallel groups that run dry take half of another group's remaining "
        "chunks; static: fixed blocks only"
    ))  # fmt: skip
    tp: int = key(1, kind=int, min=1, help=(
        "ranks per tensor-parallel group: each holds 1/tp of every weight matrix; must "
        "divide the rank count"
    ))  # fmt: skip
    tp_comm: str = key("auto", kind=str, choices=TP_COMMS, help=(
        "how tensors cross the TP group: numpy: mpi; jax: host | mpi4jax; cupy: host | "
        "mpi (CUDA-aware) | nccl; auto: the backend's default"
    ))  # fmt: skip


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


def describe_keys(width: int = 88) -> str:
    """Every job key with its default and meaning, from the sections' fields (`run
    --help` prints this, so it cannot drift from the code)."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"  [{name}]")
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("required"):
                default = "required"
            else:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                default = f"default {_toml(value)}"
            choices = f"{' | '.join(meta['choices'])}; " if "choices" in meta else ""
            text = f"{choices}{meta.get('help', '')} ({default})"
            lines += textwrap.wrap(
                text, width, initial_indent=f"    {f.name:<12} ", subsequent_indent=" " * 17
            )
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


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
    if kind == "names":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise JobError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if kind == "renames":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise JobError(
                f'{where} must be a table of names, e.g. {{embeddings = "vectors"}}; got {value!r}'
            )
        return dict(sorted(value.items()))
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
