"""Chunk files: what np.load reads back is exactly what was written, and the CRC the
store returns is the file's."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hpcinfer.io.chunk_store import ChunkStore, file_crc32, write_npz

ARRAYS = {
    "outputs": np.arange(15, dtype=np.float32).reshape(5, 3),
    "ids": np.arange(4, dtype=np.int64),
    "empty": np.zeros((0, 2)),
    "scalar": np.float32(3.5),
    "strided": np.arange(12.0).reshape(4, 3).T,  # not C-contiguous
}


def assert_same(loaded, arrays):
    assert sorted(loaded) == sorted(arrays)
    for name, want in arrays.items():
        got = loaded[name]
        assert got.dtype == np.asarray(want).dtype, name
        assert got.shape == np.shape(want), name
        np.testing.assert_array_equal(got, want)


def test_write_npz_round_trips_through_np_load():
    buf = io.BytesIO()
    write_npz(buf, ARRAYS)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        assert_same({k: npz[k] for k in npz.files}, ARRAYS)


@pytest.mark.parametrize("durable", [True, False])
def test_store_write_read_and_crc(tmp_path, durable):
    store = ChunkStore(tmp_path, durable=durable)
    crc = store.write(7, ARRAYS)
    assert crc == file_crc32(store.path(7))
    assert_same(store.read(7), ARRAYS)
    assert [p.name for p in tmp_path.iterdir()] == [store.path(7).name]  # no temp left
