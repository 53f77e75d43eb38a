"""The process that writes the final HDF5 file: `python -m hpcinfer.checkpoint.output_writer
REQUEST.json`, started by `assemble_output`.

Why a separate process: HDF5 cannot recover from a write that fails half-way (a full
disk, a quota, a file-size limit): releasing the broken file's objects, or exiting,
crashes the process (a segfault, seen with h5py 3.16 / HDF5 1.14). Here that crash can
only take this writer down; the run reports one line and keeps its chunk files. (A fork
would be cheaper, but a rank running JAX is multithreaded, where fork is unsafe.)

The request names the temporary file, the chunk folder, the chunks (index, start, stop),
the outputs (name -> row shape, dtype; dtype object: UTF-8 texts, written as
variable-length strings), their encodings (name -> "bfloat16": raw bits, said in the
dataset's `hpcinfer_dtype` attribute), the attributes (JSON) and the run records (a
.npy beside the request). The answer, on stdout, is one JSON line: {"ok": {dataset: rows with
a non-finite value}} or {"error": text, "full": bool}. A failed write is answered at once
and the process leaves with os._exit, before anything can release the broken file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcinfer.checkpoint.chunk_files import ChunkStore
from hpcinfer.checkpoint.columns import TEXT, nonfinite_rows
from hpcinfer.errors import DiskError

DISK_FULL_TEXT = ("No space left", "Disk quota", "File too large")


def write(request: dict[str, Any]) -> dict[str, int]:
    """Every chunk's rows into datasets of n_rows rows, then attributes; fsync'd."""
    tmp, store = Path(request["tmp"]), ChunkStore(Path(request["folder"]))
    outputs = {
        name: (tuple(shape), np.dtype(dt)) for name, (shape, dt) in request["outputs"].items()
    }
    encodings = request.get("encodings", {})
    nonfinite = dict.fromkeys(outputs, 0)
    f = h5py.File(tmp, "w")  # no `with`: closing a file after a failed write crashes HDF5
    datasets = {}
    for name, (shape, dtype) in outputs.items():
        stored = h5py.string_dtype("utf-8") if dtype == TEXT else dtype
        datasets[name] = f.create_dataset(name, shape=(request["n_rows"], *shape), dtype=stored)
        if encodings.get(name):
            datasets[name].attrs["hpcinfer_dtype"] = encodings[name]
    for index, start, stop in request["chunks"]:
        arrays = store.read(index)
        for name, ds in datasets.items():
            values = arrays[name]
            ds[start:stop] = values
            nonfinite[name] += nonfinite_rows(values, encodings.get(name, ""))
    for name, path in request["records"].items():
        f.create_dataset(f"run/{name}", data=np.load(path))
    for key, value in {**request["attrs"], "rows_nonfinite": nonfinite}.items():
        f.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    f.close()
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    return nonfinite


def answer(result: dict[str, Any]) -> None:
    """The one JSON line for the run, then leave at once (no cleanup that could crash)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


def main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    try:
        answer({"ok": write(request)})
    except BaseException as e:  # noqa: BLE001 (answered while the broken file's objects live)
        errno = getattr(e, "errno", None)
        full = errno in DiskError.ERRNOS or any(t in str(e) for t in DISK_FULL_TEXT)
        answer({"error": " ".join(str(e).split())[:300], "full": full})


if __name__ == "__main__":
    main(sys.argv[1])
