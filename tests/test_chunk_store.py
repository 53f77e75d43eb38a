"""Chunk files: what is read back is exactly what was written, batch by batch or whole;
the CRC the store returns is the file's; unfinished or damaged files never pass as whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpcinfer.checkpoint.chunk_files import ChunkStore, file_crc32
from hpcinfer.errors import RunError
from hpcinfer.models import OutputSpec

ARRAYS = {
    "outputs": np.arange(15, dtype=np.float32).reshape(5, 3),
    "ids": np.arange(5, dtype=np.int64),
    "empty_rows": np.zeros((5, 0)),
    "cube": np.arange(5 * 2 * 3, dtype=np.float16).reshape(5, 2, 3),
    "strided": np.arange(15.0).reshape(3, 5).T,  # not C-contiguous
}
OUTPUTS = {name: OutputSpec(a.shape[1:], a.dtype) for name, a in ARRAYS.items()}


def write_whole(store, index, arrays):
    chunk = store.create(index, 5, OUTPUTS)
    chunk.write_rows(0, arrays)
    return chunk.commit()


def assert_same(loaded, arrays):
    assert sorted(loaded) == sorted(arrays)
    for name, want in arrays.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("durable", [True, False])
def test_store_write_read_and_crc(tmp_path, durable):
    store = ChunkStore(tmp_path, durable=durable)
    crc = write_whole(store, 7, ARRAYS)
    assert crc == file_crc32(store.path(7))
    assert_same(store.read(7), ARRAYS)
    assert [p.name for p in tmp_path.iterdir()] == [store.path(7).name]  # no temp left


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_rows_written_batch_by_batch_read_back_whole(tmp_path, batch):
    store = ChunkStore(tmp_path)
    chunk = store.create(3, 5, OUTPUTS)
    for b0 in range(0, 5, batch):
        chunk.write_rows(b0, {name: a[b0 : b0 + batch] for name, a in ARRAYS.items()})
    assert not store.path(3).exists()  # not visible before commit
    chunk.commit()
    assert_same(store.read(3), ARRAYS)


def test_outputs_cast_to_the_declared_dtype(tmp_path):
    store = ChunkStore(tmp_path)
    chunk = store.create(0, 2, {"y": OutputSpec((2,), np.dtype("float32"))})
    chunk.write_rows(0, {"y": np.array([[1.5, 2.0], [3.0, 4.0]], dtype=np.float64)})
    chunk.commit()
    got = store.read(0)["y"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[1.5, 2.0], [3.0, 4.0]])


def test_an_unfinished_chunk_is_refused_and_leaves_nothing(tmp_path):
    store = ChunkStore(tmp_path)
    chunk = store.create(1, 5, OUTPUTS)
    chunk.write_rows(0, {name: a[:2] for name, a in ARRAYS.items()})
    with pytest.raises(RunError, match="2 of 5 rows written"):
        chunk.commit()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "start, arrays, message",
    [
        (1, {name: a[:1] for name, a in ARRAYS.items()}, "expected rows from 0"),
        (0, {"outputs": ARRAYS["outputs"]}, "expected rows from 0"),
        (0, {**ARRAYS, "outputs": np.zeros((5, 4), np.float32)}, "'outputs' has shape"),
        (0, {**ARRAYS, "ids": np.arange(4)}, "'ids' has shape"),
        (0, {name: np.concatenate([a, a]) for name, a in ARRAYS.items()}, "beyond"),
    ],
)
def test_wrong_rows_are_refused(tmp_path, start, arrays, message):
    chunk = ChunkStore(tmp_path).create(0, 5, OUTPUTS)
    with pytest.raises(RunError, match=message):
        chunk.write_rows(start, arrays)
    chunk.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "magic", "header", "huge shape"])
def test_a_damaged_chunk_file_is_a_clear_error(tmp_path, damage):
    store = ChunkStore(tmp_path)
    write_whole(store, 2, ARRAYS)
    path = store.path(2)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-8]
    elif damage == "magic":
        data[0] ^= 0xFF
    elif damage == "header":
        data[24] = ord("}")  # the JSON header no longer parses
    else:  # a header that parses but claims 2**40 rows: refused before allocating them
        length = int.from_bytes(data[16:24], "little")
        header = json.loads(data[24 : 24 + length])
        header["arrays"][0]["shape"][0] = 2**40
        text = json.dumps(header).encode()
        data[16 : 24 + length] = len(text).to_bytes(8, "little") + text
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match=f"{path.name}: cannot read finished chunk"):
        store.read(2)


@pytest.mark.parametrize(
    "limit, fails_at",
    [(100, "create"), (2**20, "create"), (2**20, "write")],  # header; sizing; rows past 1 MiB
)
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, limit, fails_at):
    resource = pytest.importorskip("resource")
    store = ChunkStore(tmp_path)
    outputs = {"y": OutputSpec((4,), np.dtype("float32"))}  # 2**18 rows: 4 MiB
    chunk = store.create(4, 2**18, outputs) if fails_at == "write" else None
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # writes past it fail: EFBIG
    try:
        with pytest.raises(RunError, match=rf"chunk-00000004\.bin.*: cannot {fails_at} chunk file"):
            if chunk is None:
                store.create(4, 2**18, outputs)
            else:
                chunk.write_rows(0, {"y": np.ones((2**18, 4), np.float32)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []
