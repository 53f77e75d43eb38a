"""A job's identity: every fact that decides its output's content, and their fingerprint.

    model weights        per weight file: name, size, mtime and the hash of its header
                         (never the tensor bytes: a 100 GB model costs a few stat calls;
                         a .gguf model: its header holds the config and tokenizer too)
    model file <name>    every small file of the model folder a loader may read (config,
                         tokenizer, sentence-transformers modules, ...), by content hash
    input source <path>  the input file and every file it draws rows from (HDF5 external
                         links, virtual-dataset sources): size and mtime
    input                path, dataset or field, format, rows, row shape and dtype
    <section.key>        the job settings that change outputs (task, chunk_size, dtype,
                         kept columns, dataset names, output dtype)

Backend, batch size, threads, balance and the DP x TP layout are deliberately left out:
a run may resume on another layout; results then agree within float tolerance
(bit-identical when those stay the same). A partial run is resumed, and a finished
output accepted as complete, only for a job with the same fingerprint; a difference is
named key by key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError
from hpcinfer.io.gguf_header import read_header
from hpcinfer.io.safetensors_checkpoint import weights_identity
from hpcinfer.job import Job

# Small files a loader may read, by suffix; weights are identified by their headers.
MODEL_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja")
MAX_MODEL_FILE_BYTES = 64 * 2**20  # larger "small" files are identified by size and mtime
OUTPUT_SETTINGS = (
    ("model", "task"),
    ("model", "pooling"),
    ("model", "prompt_name"),
    ("input", "format"),
    ("input", "dataset"),
    ("input", "field"),
    ("run", "chunk_size"),
    ("run", "dtype"),
    ("output", "keep"),
    ("output", "datasets"),
    ("output", "dtype"),
)


def file_sha256(path: Path, block: int = 2**20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def gguf_identity(path: Path) -> dict[str, Any]:
    """A GGUF file by size, mtime and the hash of its header (metadata, tokenizer and
    tensor table: everything before the first tensor's bytes), never its tensor data."""
    header = read_header(path)  # checks the file; a damaged one is a JobError
    start = min((t.begin for t in header.tensors.values()), default=None)
    try:
        st = path.stat()
        with path.open("rb") as f:
            head = f.read(st.st_size if start is None else start)
    except OSError as e:
        raise JobError(f"{path}: cannot read ({e.strerror or e})") from None
    return {
        "format": "gguf",
        "files": [
            {
                "name": path.name,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "header_sha256": hashlib.sha256(head).hexdigest(),
            }
        ],
    }


def model_identity(folder: Path) -> dict[str, Any]:
    """The weights by their headers (the model's, and every module's in a subfolder, such
    as a sentence-transformers Dense), the folder's small files by content; a GGUF file
    (metadata, tokenizer and all) by its header."""
    if folder.suffix.lower() == ".gguf" and not folder.is_dir():
        return {"model weights": gguf_identity(folder)}
    facts: dict[str, Any] = {"model weights": weights_identity(folder)}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if not path.is_file() or name.startswith("."):
            continue
        if path.suffix == ".safetensors" and path.parent != folder:
            facts[f"model weights {name}"] = weights_identity(path.parent)
            continue
        if path.suffix not in MODEL_FILE_SUFFIXES:
            continue
        try:
            st = path.stat()
            digest = (
                file_sha256(path)
                if st.st_size <= MAX_MODEL_FILE_BYTES
                else f"size {st.st_size}, mtime_ns {st.st_mtime_ns}"
            )
        except OSError as e:
            raise JobError(f"{path}: cannot read ({e.strerror or e})") from None
        facts[f"model file {name}"] = digest
    return facts


def input_identity(reader: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "input": {
            "path": str(reader.path),
            "dataset": reader.dataset,
            "rows": reader.n_rows,
            "row_shape": list(reader.row_shape),
            "dtype": str(reader.dtype),
        }
    }
    for source in reader.sources():
        try:
            st = source.stat()
        except OSError as e:
            raise JobError(f"{source}: cannot read ({e.strerror or e})") from None
        facts[f"input source {source}"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return facts


def job_identity(job: Job, reader: Any, chunk_size: int) -> dict[str, Any]:
    """What decides the output of `job` over the input `reader` opened, cut into chunks
    of `chunk_size` rows (the job's setting, or what "auto" made of it)."""
    settings = {f"{s}.{k}": str(getattr(getattr(job, s), k)) for s, k in OUTPUT_SETTINGS}
    settings["run.chunk_size"] = str(chunk_size)
    return {**model_identity(job.model.path), **input_identity(reader), **settings}


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of the facts that decide the output's content."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def differences(recorded: Any, identity: dict[str, Any]) -> tuple[str, ...]:
    """The keys whose facts differ between a recorded identity and this job's."""
    recorded = recorded if isinstance(recorded, dict) else {}
    keys = set(recorded) | set(identity)
    return tuple(sorted(k for k in keys if recorded.get(k) != identity.get(k)))
