import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import bf16_to_f32
from hpcinfer.io.safetensors_file import SafetensorsFile


@pytest.fixture
def tensors(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        "f32": rng.standard_normal((37, 23)).astype(np.float32),
        "f16": rng.standard_normal((5, 9)).astype(np.float16),
        "f64": rng.standard_normal((11,)),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    path = tmp_path / "t.safetensors"
    save_file(data, str(path))
    return path, data


def test_reads_match_the_reference_library(tensors):
    path, data = tensors
    f = SafetensorsFile(path)
    for name, ref in data.items():
        assert f.info(name).shape == ref.shape
        np.testing.assert_array_equal(f.read(name), ref)


def test_row_and_column_slices_read_only_their_part(tensors):
    path, data = tensors
    f = SafetensorsFile(path)
    np.testing.assert_array_equal(f.read("f32", rows=slice(3, 9)), data["f32"][3:9])
    np.testing.assert_array_equal(f.read("f32", cols=slice(5, 17)), data["f32"][:, 5:17])
    got = f.read("f32", rows=slice(1, 30), cols=slice(20, 23))
    np.testing.assert_array_equal(got, data["f32"][1:30, 20:23])
    assert f.read("f16", dtype="float32").dtype == np.float32


def test_bf16_is_decoded(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    header = header.encode().ljust(48)
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)
    got = SafetensorsFile(path).read("b")
    np.testing.assert_array_equal(got, values.reshape(2, 2))
    np.testing.assert_array_equal(bf16_to_f32(np.array([0x3F80], np.uint16)), [1.0])


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"abc", "too short"),
        (struct.pack("<Q", 10**12) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"{no}", "bad JSON header"),
        (
            struct.pack("<Q", 64)
            + json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
            .encode()
            .ljust(64),
            "do not fit",
        ),
    ],
)
def test_corrupt_files_are_clear_errors(tmp_path, payload, expected):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(JobError, match=expected) as e:
        SafetensorsFile(path)
    assert str(path) in str(e.value)


def test_transposed_reads_in_small_blocks(tensors, monkeypatch):
    path, data = tensors
    monkeypatch.setattr("hpcinfer.io.safetensors_file.TRANSPOSE_BLOCK_BYTES", 50)
    f = SafetensorsFile(path)
    got = f.read_transposed("f32", rows=slice(2, 31), cols=slice(4, 19), dtype="float64")
    assert got.flags.c_contiguous and got.dtype == np.float64
    np.testing.assert_array_equal(got, data["f32"][2:31, 4:19].T)
    np.testing.assert_array_equal(f.read_transposed("f16"), data["f16"].T.astype(np.float32))
