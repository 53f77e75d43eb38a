"""A model folder's weights: one model.safetensors, or shards named by an index.

Large checkpoints come as `model.safetensors.index.json`
(`{"metadata": {...}, "weight_map": {tensor name: shard file name}}`) beside
`model-0000k-of-0000n.safetensors`. `SafetensorsCheckpoint` shows them as one namespace
with `SafetensorsFile`'s surface, so a loader reads a tensor (or a rank's slice of it)
without knowing which file holds it; a shard's header is parsed the first time one of its
tensors is asked for, and its data is opened only when read.

`weights_identity` says cheaply which weights a job used (for its fingerprint): file
names, sizes, mtimes and header hashes, never the tensor bytes, so a 100 GB model costs
a few stat calls and a few MiB of reading.

    weights = open_weights(folder)              # SafetensorsFile | SafetensorsCheckpoint
    w = weights.read_transposed("layers.0.weight", rows=slice(0, 512))
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import clip, error_text, short_repr, strict_json
from hpcinfer.io.safetensors_file import SafetensorsFile, TensorInfo, read_header_bytes

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_INDEX_BYTES = 100 * 2**20
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt")  # PyTorch's pickled checkpoints, and
PICKLE_PREFIX = "pytorch_model"  # pytorch_model.bin, pytorch_model-00001-of-00002.bin


class SafetensorsCheckpoint:
    """The tensors of a sharded checkpoint, read through its index.

    `metadata` is the index's own "metadata" object (Hugging Face writes
    {"total_size": bytes}); each shard's `__metadata__` stays with the shard.
    """

    def __init__(self, index: str | Path):
        self.path = Path(index)
        self.folder = self.path.parent
        self.metadata, self.weight_map, _ = _read_index(self.path)
        self._shards: dict[str, SafetensorsFile] = {}
        self._tensors: dict[str, TensorInfo] | None = None

    @property
    def shard_files(self) -> list[Path]:
        """The shard files the index names, each once, in name order."""
        return [self.folder / name for name in sorted(set(self.weight_map.values()))]

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        """Every tensor the index lists (parses every shard's header, once).

        A TensorInfo's offsets are within the shard that holds it: see `shard`.
        """
        if self._tensors is None:
            self._tensors = {name: self.info(name) for name in self.weight_map}
        return self._tensors

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def shard(self, name: str) -> SafetensorsFile:
        """The shard that holds tensor `name`, its header parsed on first use and checked
        to hold every tensor the index puts there."""
        if name not in self.weight_map:
            raise JobError(f"{self.path}: tensor {name!r} not found")
        file = self.weight_map[name]
        if file not in self._shards:
            shard = SafetensorsFile(self.folder / file)
            listed = [t for t, f in self.weight_map.items() if f == file]
            if absent := [t for t in listed if t not in shard]:
                more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
                raise JobError(
                    f"{self.path}: lists tensor {short_repr(absent[0])}{more} in "
                    f"{shard.path}, which does not hold it"
                )
            self._shards[file] = shard
        return self._shards[file]

    def info(self, name: str) -> TensorInfo:
        return self.shard(name).info(name)

    def read(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: np.dtype | str | None = None,
        check_finite: bool = False,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols] from its shard: see SafetensorsFile.read."""
        return self.shard(name).read(name, rows, cols, dtype, check_finite)

    def read_transposed(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: np.dtype | str = "float32",
        check_finite: bool = False,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols].T from its shard: see SafetensorsFile.read_transposed."""
        return self.shard(name).read_transposed(name, rows, cols, dtype, check_finite)


def open_weights(folder: str | Path) -> SafetensorsFile | SafetensorsCheckpoint:
    """The weights of a model folder: model.safetensors if present, else the sharded
    checkpoint its index names. Pickled PyTorch weights are never loaded."""
    folder = Path(folder)
    if _present(folder / SINGLE):
        return SafetensorsFile(folder / SINGLE)
    if _present(folder / INDEX):
        return SafetensorsCheckpoint(folder / INDEX)
    raise JobError(_no_weights(folder))


def weights_identity(folder: str | Path) -> dict:
    """Which weights these are, for a job's fingerprint, without reading tensor data.

    For each weight file: its name, size, mtime_ns and the SHA-256 of its header (length
    prefix + JSON); for a sharded checkpoint also the index's name, size, mtime_ns and
    content hash. A changed header, size or index changes it; so does touching or
    copying a file (mtime), which errs on the side of a fresh run.
    """
    folder = Path(folder)
    if _present(folder / SINGLE):
        return {"format": "safetensors", "files": [_file_identity(folder, SINGLE)]}
    if _present(folder / INDEX):
        _, weight_map, index_bytes = _read_index(folder / INDEX)
        st = (folder / INDEX).stat()
        return {
            "format": "safetensors-sharded",
            "index": {
                "name": INDEX,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": hashlib.sha256(index_bytes).hexdigest(),
            },
            "files": [_file_identity(folder, n) for n in sorted(set(weight_map.values()))],
        }
    raise JobError(_no_weights(folder))


def _present(path: Path) -> bool:
    """Exists, or is a dangling link (a Hugging Face cache missing its blob): the reader's
    "file not found" then says more than "no weights in this folder"."""
    return path.exists() or path.is_symlink()


def _file_identity(folder: Path, name: str) -> dict:
    path = folder / name
    header = read_header_bytes(path)
    st = path.stat()
    return {
        "name": name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "header_sha256": hashlib.sha256(header).hexdigest(),
    }


def _read_index(index: Path) -> tuple[dict, dict[str, str], bytes]:
    """(metadata, weight_map, the index's bytes), with every shard name checked to stay in
    the folder and to exist; one JobError line naming the index otherwise."""
    try:
        size = index.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise JobError(f"{index}: {size} bytes, more than an index can be")
        raw = index.read_bytes()
    except OSError as e:
        raise JobError(f"{index}: cannot read ({error_text(e)})") from None
    body = strict_json(index, raw, "index")
    if not isinstance(body, dict):
        raise JobError(f"{index}: not a checkpoint index (not a JSON object)")
    metadata = body.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise JobError(f'{index}: "metadata" must be an object')
    weight_map = body.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise JobError(f"{index}: no weight_map (an object of tensor name -> shard file)")
    for tensor, file in weight_map.items():
        if problem := _unsafe_shard_name(file):
            raise JobError(
                f"{index}: tensor {short_repr(tensor)}: shard {short_repr(file)} {problem}"
            )
    for file in sorted(set(weight_map.values())):
        if not os.path.isfile(index.parent / file):  # False, never OSError, for odd names
            tensor = next(t for t, f in weight_map.items() if f == file)
            raise JobError(
                f"{index}: shard file {index.parent / clip(file, 100)} "
                f"(of tensor {short_repr(tensor)}) is missing"
            )
    return metadata, weight_map, raw


def _unsafe_shard_name(file: object) -> str | None:
    """Why `file` may not be a shard name (None if it may): the index is user input and
    must not point the reader outside the model folder."""
    if not isinstance(file, str) or not file or "\0" in file:
        return "is not a file name"
    path = PurePosixPath(file)
    if path.is_absolute() or file.startswith("\\") or (len(file) > 1 and file[1] == ":"):
        return "is an absolute path; shards must be inside the model folder"
    if ".." in path.parts or ".." in file.split("\\"):
        return "escapes the model folder"
    return None


def _no_weights(folder: Path) -> str:
    """What the folder holds instead, and what to do about pickled PyTorch weights."""
    if not folder.is_dir():
        return f"{folder}: model folder not found"
    names = sorted(_printable(p.name) + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    message = f"{folder}: no {SINGLE} or {INDEX}; the folder holds " + (
        shown if names else "nothing"
    )
    pickles = [
        n
        for n in names
        if n.endswith(PICKLE_SUFFIXES) or (n.startswith(PICKLE_PREFIX) and n.endswith(".bin"))
    ]
    if pickles:
        message += (
            f". {pickles[0]} is a pickled PyTorch checkpoint, which hpcinfer never loads: "
            f"convert it to safetensors (e.g. transformers' "
            f"save_pretrained(folder, safe_serialization=True))"
        )
    return message


def _printable(name: str) -> str:
    """A file name as a message can show it on one line."""
    return name if name.isprintable() else repr(name)
