"""HDF5 input: one dataset whose first axis is the rows; each rank reads only its rows."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from hpcinfer.errors import JobError


class Hdf5Rows:
    """Row slices of `path[dataset]`; the file stays open read-only for the run."""

    def __init__(self, path: Path, dataset: str):
        self.path, self.dataset = Path(path), dataset
        if not self.path.is_file():
            raise JobError(f"{self.path}: input file not found (input.path)")
        if not h5py.is_hdf5(self.path):
            raise JobError(f"{self.path}: not an HDF5 file (input.path)")
        self._file = h5py.File(self.path, "r")
        node = self._file.get(dataset)
        if not isinstance(node, h5py.Dataset):
            names = [k for k, v in self._file.items() if isinstance(v, h5py.Dataset)]
            what = "is a group, not a dataset" if node is not None else "not found"
            raise JobError(
                f"{self.path}: dataset {dataset!r} {what} (input.dataset; "
                f"datasets at the top level: {', '.join(names) or 'none'})"
            )
        if node.ndim < 1:
            raise JobError(f"{self.path}:{dataset} is a scalar; expected rows along axis 0")
        if not np.issubdtype(node.dtype, np.number):
            raise JobError(f"{self.path}:{dataset} has dtype {node.dtype}; expected numbers")
        self._data = node
        self.n_rows = int(node.shape[0])
        self.row_shape = tuple(int(s) for s in node.shape[1:])
        self.dtype = node.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a numpy array; reads nothing else."""
        return self._data[start:stop]

    def close(self) -> None:
        self._file.close()
