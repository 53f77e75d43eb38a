"""The final HDF5 file: assembled from chunk files, in input order, made visible at once.

It is written under a temporary name inside the run's partial folder, flushed and
fsync'd, then renamed onto the output path: a reader sees either no file or the whole
file, never a half-written one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcinfer.checkpoint.chunk_files import ChunkStore, fsync_dir
from hpcinfer.models.base import OutputSpec
from hpcinfer.schedule.chunks import Chunk


def assemble_output(
    final_path: Path,
    store: ChunkStore,
    chunks: Iterable[Chunk],
    n_rows: int,
    outputs: dict[str, OutputSpec],
    attrs: dict[str, Any],
    run_records: dict[str, np.ndarray] | None = None,
) -> None:
    """Copy every chunk's results into datasets of `n_rows` rows, then publish the file.

    `run_records` are written under the group `run/` (e.g. run/chunks, the chunk log).
    """
    tmp = store.folder / f".assembling-{uuid.uuid4().hex}-{final_path.name}"
    with h5py.File(tmp, "w") as f:
        datasets = {
            name: f.create_dataset(name, shape=(n_rows, *o.shape), dtype=o.dtype)
            for name, o in outputs.items()
        }
        for chunk in chunks:
            arrays = store.read(chunk.index)
            for name, ds in datasets.items():
                ds[chunk.start : chunk.stop] = arrays[name]
        for name, records in (run_records or {}).items():
            f.create_dataset(f"run/{name}", data=records)
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    final_path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final_path)
    fsync_dir(final_path.parent)


def output_fingerprint(path) -> str | None:
    """The job fingerprint recorded in an existing output file, if any."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("job_fingerprint", ""))
    except OSError:
        return None
