"""HDF5 input: one dataset whose first axis is the rows; each rank reads only its rows.

A dataset of numbers gives arrays (Hdf5Rows, for models such as the MLP); a dataset of
strings, or of variable-length integers (token ids), gives items (Hdf5Items, for text
models). `open_hdf5` picks by the dataset's type.

A file HDF5 cannot open (truncated, damaged, not HDF5) or read, a string that is not
UTF-8 and a token id beyond int64 are each a JobError naming the file, dataset and row;
so is a batch of rows too large for the memory there is (`check_batch`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io import keep as kept_columns
from hpcinfer.io.file_checks import available_memory_bytes, error_text, human_bytes
from hpcinfer.io.text_cut import TextCut
from hpcinfer.io.text_input import Batch

VALIDATE_ROWS = 4096  # items decoded at a time by validate()
INT64_MAX = 2**63 - 1
# What HDF5 raises for a damaged file or object (h5py maps HDF5's errors onto these).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _source_files(path: Path, file: h5py.File, dataset: str, node: h5py.Dataset) -> list[Path]:
    """Every file the rows come from: the file itself, the targets of external links on
    the dataset's path, and the sources of a virtual dataset (each must exist: HDF5
    would read a missing source as fill values, silently)."""
    files = [path.resolve()]
    parts = [p for p in dataset.split("/") if p]
    for i in range(1, len(parts) + 1):
        link = file.get("/".join(parts[:i]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            files.append((path.parent / link.filename).resolve())
    if node.is_virtual:
        for source in node.virtual_sources():
            name = source.file_name
            target = path.resolve() if name == "." else (path.parent / name).resolve()
            if not target.is_file():
                raise JobError(
                    f"{path}:{dataset} is a virtual dataset whose source {name} is missing "
                    "(HDF5 would read its rows as fill values)"
                )
            files.append(target)
    return list(dict.fromkeys(files))


def _open_dataset(path: Path, dataset: str) -> tuple[h5py.File, h5py.Dataset]:
    if not path.is_file():
        raise JobError(f"{path}: input file not found (input.path)")
    if not h5py.is_hdf5(path):
        raise JobError(f"{path}: not an HDF5 file (input.path)")
    try:
        file = h5py.File(path, "r")
    except H5_ERRORS as e:
        raise JobError(
            f"{path}: HDF5 cannot open it (truncated or damaged?): {error_text(e)}"
        ) from None
    try:
        node = file.get(dataset)
        if isinstance(node, h5py.Dataset):
            _ = (node.shape, node.dtype)  # a damaged header fails here, not later
    except H5_ERRORS as e:
        file.close()
        raise JobError(
            f"{path}:{dataset}: HDF5 cannot read it (damaged?): {error_text(e)}"
        ) from None
    if not isinstance(node, h5py.Dataset):
        names = [k for k, v in file.items() if isinstance(v, h5py.Dataset)]
        file.close()
        what = "is a group, not a dataset" if node is not None else "not found"
        raise JobError(
            f"{path}: dataset {dataset!r} {what} (input.dataset; "
            f"datasets at the top level: {', '.join(names) or 'none'})"
        )
    if node.ndim < 1:
        file.close()
        raise JobError(f"{path}:{dataset} is a scalar; expected rows along axis 0")
    return file, node


def item_kind(dtype: np.dtype) -> str | None:
    """ "texts" or "token ids" for the dataset types Hdf5Items reads; None otherwise."""
    if h5py.check_string_dtype(dtype) is not None:
        return "texts"
    base = h5py.check_vlen_dtype(dtype)
    if base is not None and np.issubdtype(base, np.integer):
        return "token ids"
    return None


def open_hdf5(path: Path, dataset: str, keep: tuple[str, ...] = ()) -> Hdf5Rows | Hdf5Items:
    """The reader for `dataset`; `keep` names datasets of the same file, one row per
    input row, copied to the output (output.keep)."""
    file, node = _open_dataset(Path(path), dataset)
    try:
        sources = _source_files(Path(path), file, dataset, node)
    except JobError:
        file.close()
        raise
    kind = Hdf5Items if item_kind(node.dtype) is not None else Hdf5Rows
    reader = kind(Path(path), dataset, file, node, sources)
    try:
        for name in keep:
            reader.add_kept(name)
    except BaseException:
        reader.close()
        raise
    return reader


class Hdf5Rows:
    """Row slices of a dataset of numbers; the file stays open read-only for the run."""

    items = False
    codec = None
    texts_only = False

    def __init__(
        self, path: Path, dataset: str, file: h5py.File, node: h5py.Dataset, sources: list[Path]
    ):
        self.path, self.dataset, self._file = path, dataset, file
        self._sources = sources
        if not np.issubdtype(node.dtype, np.number):
            file.close()
            raise JobError(
                f"{path}:{dataset} has dtype {node.dtype}; expected numbers, strings or "
                "variable-length integers (token ids)"
            )
        self._data = node
        self.n_rows = int(node.shape[0])
        self.row_shape = tuple(int(s) for s in node.shape[1:])
        self.dtype = node.dtype
        self._init_keep()

    def _init_keep(self) -> None:
        self.keep: tuple[str, ...] = ()
        self.kinds: dict[str, kept_columns.Kinds] = {}
        self._kept: dict[str, tuple[h5py.Dataset, bool]] = {}  # name -> (data, texts?)

    def add_kept(self, name: str) -> None:
        """Keep dataset `name` of this file: one row per input row, numbers or texts."""
        where = f"{self.path}:{name}"
        try:
            node = self._file.get(name)
            shape, dtype = (node.shape, node.dtype) if isinstance(node, h5py.Dataset) else (0, 0)
        except H5_ERRORS as e:
            raise JobError(f"{where}: HDF5 cannot read it (damaged?): {error_text(e)}") from None
        if not isinstance(node, h5py.Dataset):
            raise JobError(f"{where}: no such dataset to keep (output.keep)")
        if len(shape) < 1 or shape[0] != self.n_rows:
            raise JobError(
                f"{where} has shape {shape}: a kept dataset needs one row per input row "
                f"({self.n_rows}) (output.keep)"
            )
        texts = h5py.check_string_dtype(dtype) is not None
        if texts and len(shape) == 1:
            kind, data = "str", node.asstr(encoding="utf-8", errors="surrogateescape")
        elif not texts and (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            kind, data = kept_columns.dtype_kind(dtype, shape[1:]), node
        else:
            raise JobError(
                f"{where} has dtype {dtype} and shape {shape}; hpcinfer keeps numbers, "
                "booleans and texts (one per row) (output.keep)"
            )
        self.keep += (name,)
        self.kinds[name] = {kind: (0, where)}
        self._kept[name] = (data, texts)

    def read_batch(self, start: int, stop: int) -> Batch:
        """Rows [start, stop), and the kept datasets' rows."""
        kept = {}
        for name, (data, texts) in self._kept.items():
            try:
                values = data[start:stop]
            except H5_ERRORS as e:
                raise JobError(
                    f"{self.path}:{name}[{start}]..[{stop - 1}]: HDF5 cannot read these rows "
                    f"(damaged or truncated file?): {error_text(e)}"
                ) from None
            if texts:
                values = list(values)
                for i, text in enumerate(values):
                    where = f"{self.path}:{name}[{start + i}]"
                    _check_utf8(text, where)
                    kept_columns.check_text(text, name, where)
            kept[name] = values
        return Batch(self.read(start, stop), kept)

    def _validate_kept(self, rows: range) -> None:
        if any(texts for _, texts in self._kept.values()):
            for start in range(rows.start, rows.stop, VALIDATE_ROWS):
                self.read_batch(start, min(rows.stop, start + VALIDATE_ROWS))

    def where(self, i: int) -> str:
        return f"{self.path}:{self.dataset}[{i}]"

    def describe(self) -> dict[str, object]:
        rows = self.kind[5:] if self.items else "numbers"
        facts = {"format": "hdf5", "dataset": self.dataset, "rows": rows}
        return {**facts, "keep": list(self.keep)} if self.keep else facts

    def save_index(self, folder: Path) -> None:
        """HDF5 needs no index."""

    def sources(self) -> list[Path]:
        """The files the rows come from (the identity of the input covers each)."""
        return self._sources

    def validate(self, rows: range) -> None:
        """Numbers need no parsing: HDF5 types them (kept texts are checked)."""
        self._validate_kept(rows)

    def set_cut(self, cut: TextCut) -> None:
        """Rows of numbers are never cut."""

    def check_batch(self, batch_size: int, dtype: str) -> None:
        """Refuse a batch (read as stored, then cast to `dtype`) larger than the memory
        available, before any rank reads one: the row shape comes from the file."""
        row = int(np.prod(self.row_shape, dtype=object)) * (
            self.dtype.itemsize + np.dtype(dtype).itemsize
        )
        need, avail = min(batch_size, max(1, self.n_rows)) * row, available_memory_bytes()
        if avail is not None and need > avail:
            raise JobError(
                f"{self.path}:{self.dataset}: a batch of {min(batch_size, self.n_rows)} rows of "
                f"shape {self.row_shape} {self.dtype} needs {human_bytes(need)} of memory but "
                f"only {human_bytes(avail)} is available (lower run.batch_size)"
            )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a numpy array; reads nothing else."""
        try:
            return self._data[start:stop]
        except H5_ERRORS as e:
            raise self._unreadable(start, stop, e) from None

    def _unreadable(self, start: int, stop: int, e: BaseException) -> JobError:
        return JobError(
            f"{self.where(start)}..[{stop - 1}]: HDF5 cannot read these rows (damaged or "
            f"truncated file?): {error_text(e)}"
        )

    def close(self) -> None:
        self._file.close()


class Hdf5Items(Hdf5Rows):
    """Texts (a string dataset) or token-id lists (variable-length integers), one per row."""

    items = True

    def __init__(
        self, path: Path, dataset: str, file: h5py.File, node: h5py.Dataset, sources: list[Path]
    ):
        self.path, self.dataset, self._file = path, dataset, file
        self._sources = sources
        if node.ndim != 1:
            shape, kind = node.shape, item_kind(node.dtype)
            file.close()
            raise JobError(
                f"{path}:{dataset} is a {len(shape)}-D dataset of {kind} (shape {shape}); "
                "expected one item per row (1-D)"
            )
        kind = item_kind(node.dtype)
        self.kind = f"hdf5 {kind}"
        self._texts = kind == "texts"
        # Bytes as stored: decoded here, as UTF-8 (ASCII is UTF-8), so a bad row is named.
        self._data = node.asstr(encoding="utf-8", errors="surrogateescape") if self._texts else node
        self.n_rows = int(node.shape[0])
        self.row_shape = ()
        self.dtype = node.dtype
        self.texts_only = self._texts
        self._init_keep()

    def validate(self, rows: range) -> None:
        """Read and check every item of `rows` (and kept texts), VALIDATE_ROWS at a time."""
        for start in range(rows.start, rows.stop, VALIDATE_ROWS):
            self.read_batch(start, min(rows.stop, start + VALIDATE_ROWS))

    def read(self, start: int, stop: int) -> list[Any]:
        """Items [start, stop): str for texts, int64 arrays for token ids."""
        try:
            values = self._data[start:stop]
        except H5_ERRORS as e:
            raise self._unreadable(start, stop, e) from None
        if self._texts:
            for i, text in enumerate(values):
                _check_utf8(text, self.where(start + i))
            return list(values)
        out = []
        for i, ids in enumerate(values):
            if ids.dtype.kind == "u" and ids.size and ids.max() > INT64_MAX:
                raise JobError(f"{self.where(start + i)}: token id {ids.max()} does not fit int64")
            # Ids outside the vocabulary (negative ones too) are the model's to refuse.
            out.append(ids.astype(np.int64, copy=False))
        return out


def _check_utf8(text: str, where: str) -> None:
    """A text read with surrogateescape: an escaped (undecodable) byte is an error."""
    if (m := _SURROGATE.search(text)) is not None:
        column = len(text[: m.start()].encode("utf-8")) + 1
        raise JobError(f"{where}: not valid UTF-8 (byte {column})")
