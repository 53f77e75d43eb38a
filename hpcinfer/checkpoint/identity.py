"""A job's identity: the facts that decide its output's content, and their fingerprint.

The model's weights and config, the input (path, dataset, shape, dtype, size,
modification time), chunk_size (it defines the chunks) and dtype. Backend, batch size,
threads, balance and the DP x TP layout are deliberately left out: a run may resume on
another layout; results then agree within float tolerance (bit-identical when those
stay the same). A partial run is resumed only by a job with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hpcinfer.job import Job


def file_sha256(path: Path, block: int = 2**20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def job_identity(job: Job, reader: Any) -> dict[str, Any]:
    """What decides the output of `job` over the input `reader` opened."""
    stat = reader.path.stat()
    return {
        "model_sha256": file_sha256(job.model.path / "model.safetensors"),
        "model_config_sha256": file_sha256(job.model.path / "config.json"),
        "input_path": str(reader.path),
        "input_dataset": reader.dataset,
        "input_shape": [reader.n_rows, *reader.row_shape],
        "input_dtype": str(reader.dtype),
        "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "chunk_size": job.run.chunk_size,
        "dtype": job.run.dtype,
    }


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of the facts that decide the output's content."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
