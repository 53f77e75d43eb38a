"""Broken safetensors files, built on the fly: each one is a single-line JobError naming
the file (and the tensor where one is at fault), never a traceback or a huge allocation."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import hpcinfer.io.file_checks as checks
import hpcinfer.io.safetensors_file as sf
from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import nonfinite_count
from hpcinfer.io.safetensors_file import SafetensorsFile

T = "layer.w"  # the tensor at fault, wherever there is one


def st_bytes(header: dict | bytes, data: bytes = b"") -> bytes:
    """A safetensors file: length prefix, the header (JSON-encoded unless bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def one(dtype: object = "F32", shape: object = (2,), offsets: object = (0, 8), **more) -> dict:
    """A header holding tensor T with these (possibly broken) fields."""
    entry = {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape}
    entry["data_offsets"] = list(offsets) if isinstance(offsets, tuple) else offsets
    return {T: entry, **more}


def opens(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SafetensorsFile(path)


def reads(**kwargs) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def act(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        SafetensorsFile(path).read(T, **kwargs)

    return act


def truncated_after_open(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = SafetensorsFile(path)
    os.truncate(path, path.stat().st_size - 4)
    f.read(T)


def short_read(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file keeps its size but the read comes back short (a file shrinking mid-read)."""
    f = SafetensorsFile(path)
    monkeypatch.setattr(sf, "_current_size", lambda f: 10**9)
    os.truncate(path, path.stat().st_size - 4)
    f.read(T)


def low_memory(transposed: bool = False) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def act(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(checks, "available_memory_bytes", lambda: 10)
        monkeypatch.setattr(checks, "MEMORY_CHECK_MIN_BYTES", 0)
        f = SafetensorsFile(path)
        if transposed:
            f.read_transposed(T)
        else:
            f.read(T)

    return act


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


@dataclass(frozen=True)
class Case:
    id: str
    file: bytes
    expect: str  # a piece of the message
    tensor: bool = False  # the message must name tensor T
    act: Callable[[Path, pytest.MonkeyPatch], None] = field(default=opens)


F32x4 = np.arange(4, dtype="<f4").tobytes()  # 16 bytes of data for a (2, 2) F32 tensor
GOOD_2x2 = one(shape=(2, 2), offsets=(0, 16))

CASES = [
    # -- the length prefix and the header as a whole
    Case("too-short", b"abc", "too short"),
    Case("header-length-absurd", struct.pack("<Q", 2**64 - 1) + b"{}", "header length"),
    Case("header-length-past-eof", struct.pack("<Q", 100) + b'{"a": 1}', "header length"),
    Case("header-length-zero", struct.pack("<Q", 0), "bad JSON header"),
    Case("header-not-utf8", st_bytes(b'{"\xff\xfe": 1}'), "UTF-8"),
    Case("header-utf16", st_bytes('{"a": {}}'.encode("utf-16")), "UTF-8"),
    Case("header-not-json", st_bytes(b"{no}"), "bad JSON header"),
    Case("header-not-object", st_bytes(b"[1, 2]"), "not a JSON object"),
    Case("header-string", st_bytes(b'"F32"'), "not a JSON object"),
    Case("header-nested-deeply", st_bytes(deep(100_000)), "nested too deeply"),
    Case("entry-nested-deeply", st_bytes(b'{"a": {"dtype": ' + deep(50_000) + b"}}"), "nested"),
    Case("nan-literal", st_bytes(json.dumps(one(shape=[float("nan")])).encode()), "NaN"),
    Case("int-too-many-digits", st_bytes(b'{"a": {"shape": [' + b"9" * 5000 + b"]}}"), "JSON"),
    Case("duplicate-tensor", st_bytes(b'{"a": {}, "a": {}}', F32x4), "duplicate key 'a'"),
    # -- __metadata__
    Case("metadata-list", st_bytes({"__metadata__": ["format", "pt"]}), "__metadata__"),
    Case("metadata-empty-list", st_bytes({"__metadata__": []}), "__metadata__"),
    Case("metadata-number-value", st_bytes({"__metadata__": {"format": 1}}), "__metadata__"),
    # -- one entry
    Case("entry-list", st_bytes({T: [1, 2]}), "not an object", tensor=True),
    Case("entry-string", st_bytes({T: "F32"}), "not an object", tensor=True),
    Case("entry-no-offsets", st_bytes({T: {"dtype": "F32", "shape": [2]}}), "data_offsets", True),
    Case("dtype-unknown", st_bytes(one(dtype="Q4_K"), F32x4), "dtype 'Q4_K'", tensor=True),
    Case("dtype-not-string", st_bytes(one(dtype=["F32"]), F32x4), "dtype", tensor=True),
    Case("dtype-null", st_bytes(one(dtype=None), F32x4), "dtype", tensor=True),
    Case("shape-string", st_bytes(one(shape="22"), F32x4), "shape", tensor=True),
    Case("shape-object", st_bytes(one(shape={"0": 2}), F32x4), "shape", tensor=True),
    Case("shape-negative", st_bytes(one(shape=(-2, -2), offsets=(0, 16)), F32x4), "shape", True),
    Case("shape-negative-one", st_bytes(one(shape=(-1,), offsets=(8, 4)), F32x4), "shape", True),
    Case("shape-float", st_bytes(one(shape=(2.0,)), F32x4), "shape", tensor=True),
    Case("shape-bool", st_bytes(one(shape=(True, 2)), F32x4), "shape", tensor=True),
    Case("shape-string-dims", st_bytes(one(shape=("2",)), F32x4), "shape", tensor=True),
    Case(
        "shape-overflows-int64", st_bytes(one(shape=(2**32, 2**32), offsets=(0, 0))), "int64", True
    ),
    Case("shape-dim-past-int64", st_bytes(one(shape=(0, 2**70), offsets=(0, 0))), "shape", True),
    Case(
        "shape-too-many-dims", st_bytes(one(shape=(1,) * 70, offsets=(0, 4)), F32x4), "dims", True
    ),
    Case("offsets-string", st_bytes(one(offsets="08"), F32x4), "data_offsets", tensor=True),
    Case("offsets-strings", st_bytes(one(offsets=("0", "8")), F32x4), "data_offsets", tensor=True),
    Case("offsets-floats", st_bytes(one(offsets=(0.0, 8.0)), F32x4), "data_offsets", tensor=True),
    Case("offsets-bools", st_bytes(one("U8", (1,), (False, True)), F32x4), "data_offsets", True),
    Case("offsets-three", st_bytes(one(offsets=(0, 8, 16)), F32x4), "data_offsets", tensor=True),
    Case("offsets-negative", st_bytes(one(offsets=(-8, 0)), F32x4), "data_offsets", tensor=True),
    Case("offsets-reversed", st_bytes(one(offsets=(8, 0)), F32x4), "begin 8 > end 0", True),
    Case(
        "offsets-past-int64", st_bytes(one(offsets=(2**64, 2**64 + 8)), F32x4), "do not fit", True
    ),
    Case("offsets-vs-shape", st_bytes(one(shape=(3,), offsets=(0, 8)), F32x4), "needs 12", True),
    Case(
        "outside-data-area", st_bytes(one(shape=(4,), offsets=(8, 24)), F32x4), "do not fit", True
    ),
    Case("larger-than-file", st_bytes(one("U8", (2**40,), (0, 2**40)), F32x4), "do not fit", True),
    Case(
        "overlapping-tensors",
        st_bytes(
            {"a.w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, **one(offsets=(4, 12))},
            F32x4,
        ),
        "overlap",
        tensor=True,
    ),
    # -- reads of a file whose header is fine
    Case(
        "truncated-after-open", st_bytes(GOOD_2x2, F32x4), "truncated", True, truncated_after_open
    ),
    Case("short-read", st_bytes(GOOD_2x2, F32x4), "truncated", True, short_read),
    Case("read-exceeds-memory", st_bytes(GOOD_2x2, F32x4), "memory", True, low_memory()),
    Case("transposed-exceeds-memory", st_bytes(GOOD_2x2, F32x4), "memory", True, low_memory(True)),
    Case(
        "nonfinite-weights",
        st_bytes(GOOD_2x2, np.array([1, np.nan, np.inf, 0], "<f4").tobytes()),
        "2 of 4 values are NaN or Inf",
        True,
        reads(check_finite=True),
    ),
    Case(
        "nonfinite-after-cast",
        st_bytes(GOOD_2x2, np.array([1, 2, 3, 1e30], "<f4").tobytes()),
        "NaN or Inf as float16",
        True,
        reads(check_finite=True, dtype="float16"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_file_is_one_line_job_error(tmp_path, monkeypatch, case):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(case.file)
    with pytest.raises(JobError) as e:
        case.act(path, monkeypatch)
    message = str(e.value)
    assert str(path) in message
    assert "\n" not in message and len(message) < 400, message
    assert case.expect in message, message
    if case.tensor:
        assert repr(T) in message, message


def test_enough_cases():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def test_a_directory_or_a_missing_file_is_one_line(tmp_path):
    for path, expect in ((tmp_path, "not a regular file"), (tmp_path / "no", "not found")):
        with pytest.raises(JobError, match=expect) as e:
            SafetensorsFile(path)
        assert str(path) in str(e.value)


def test_huge_sparse_tensor_is_refused_before_allocating(tmp_path):
    """A valid header over a sparse data area larger than memory: the read is refused
    by comparing sizes, before a byte is allocated."""
    size = 2**42  # 4 TiB, sparse
    avail = checks.available_memory_bytes()
    if avail is not None and avail >= size:
        pytest.skip("this machine has more free memory than the test's sparse tensor")
    path = tmp_path / "huge.safetensors"
    path.write_bytes(st_bytes(one("U8", (2**21, 2**21), (0, size))))
    try:
        os.truncate(path, path.stat().st_size + size)
    except OSError as e:
        pytest.skip(f"the file system refuses a sparse {size}-byte file: {e}")
    f = SafetensorsFile(path)
    with pytest.raises(JobError, match=r"'layer.w'.*memory") as e:
        f.read(T)
    assert str(path) in str(e.value)
    # A slice that fits is read from the same file.
    assert f.read(T, rows=slice(5, 6), cols=slice(0, 3)).tolist() == [[0, 0, 0]]


def test_memory_is_checked_against_the_read_not_the_tensor(tmp_path, monkeypatch):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(st_bytes(GOOD_2x2, F32x4))
    monkeypatch.setattr(checks, "available_memory_bytes", lambda: 8)
    monkeypatch.setattr(checks, "MEMORY_CHECK_MIN_BYTES", 0)
    assert SafetensorsFile(path).read(T, rows=slice(1, 2)).tolist() == [[2.0, 3.0]]


def test_available_memory_is_a_positive_number_here():
    avail = checks.available_memory_bytes()
    assert avail is None or avail > 0


def test_nonfinite_count():
    a = np.ones((300, 7), np.float32)
    a[3, 3], a[299, 6], a[100, 0] = np.nan, np.inf, -np.inf
    assert nonfinite_count(a) == 3
    assert nonfinite_count(a[:, ::2]) == 2  # a non-contiguous view, counted without a copy
    assert nonfinite_count(np.float64(np.nan)) == 1
    assert nonfinite_count(np.arange(5)) == 0
    assert nonfinite_count(np.zeros((0, 4), np.float16)) == 0


def test_check_finite_passes_clean_weights(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(st_bytes(GOOD_2x2, F32x4))
    f = SafetensorsFile(path)
    assert f.read(T, check_finite=True).shape == (2, 2)
    assert f.read_transposed(T, check_finite=True).tolist() == [[0, 2], [1, 3]]


def _valid_file(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.safetensors"
    save_file(
        {
            "a": np.arange(12, dtype=np.float32).reshape(3, 4),
            "b": np.arange(5, dtype=np.int64),
            "c": np.ones((2, 2), np.float16),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path.read_bytes()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_files_open_and_read_or_fail_cleanly(tmp_path, data):
    """Random damage anywhere in a valid file: every outcome is a clean read or a JobError."""
    raw = bytearray(_valid_file(tmp_path))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(raw[:cut]))
    try:
        f = SafetensorsFile(path)
        for name, info in f.tensors.items():
            f.read(name)
            if len(info.shape) == 2:
                f.read_transposed(name, cols=slice(0, 1))
    except JobError as e:
        assert "\n" not in str(e) and str(path) in str(e)
