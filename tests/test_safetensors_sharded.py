"""Sharded checkpoints read like one file; broken indexes are one JobError line; the
weights' identity changes with their headers and sizes and never reads tensor bytes."""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import hpcinfer.io.safetensors_checkpoint as ckpt
from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_checkpoint import (
    INDEX,
    SafetensorsCheckpoint,
    open_weights,
    weights_identity,
)
from hpcinfer.io.safetensors_file import SafetensorsFile

SHARDS = [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]


def model_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "embed.weight": rng.standard_normal((41, 16)).astype(np.float32),
        "layers.0.weight": rng.standard_normal((24, 16)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(24).astype(np.float32),
        "layers.1.weight": rng.standard_normal((16, 24)).astype(np.float16),
        "layers.1.bias": rng.standard_normal(16).astype(np.float64),
        "norm.scale": np.array(1.5, dtype=np.float32),
        "positions": np.arange(12, dtype=np.int64).reshape(3, 4),
        "conv.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
    }


def write_index(folder: Path, weight_map: dict, metadata: dict | None = None) -> Path:
    body = {"metadata": metadata or {"total_size": 1234}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(body))
    return folder / INDEX


@pytest.fixture
def model(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """(folder with model.safetensors, folder with the same tensors over 3 shards, tensors)"""
    tensors = model_tensors()
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir()
    sharded.mkdir()
    save_file(tensors, str(single / "model.safetensors"), metadata={"format": "pt"})
    names = list(tensors)
    weight_map = {}
    for k, shard in enumerate(SHARDS):
        part = {n: tensors[n] for n in names[k::3]}
        save_file(part, str(sharded / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    write_index(sharded, weight_map)
    return single, sharded, tensors


def test_shards_read_like_the_single_file(model):
    single, sharded, tensors = model
    one, many = open_weights(single), open_weights(sharded)
    assert isinstance(one, SafetensorsFile) and isinstance(many, SafetensorsCheckpoint)
    assert set(many.tensors) == set(one.tensors) == set(tensors)
    assert many.metadata == {"total_size": 1234}
    assert many.shard_files == [sharded / s for s in SHARDS]
    for name, ref in tensors.items():
        assert name in many
        assert (many.info(name).dtype, many.info(name).shape) == (
            one.info(name).dtype,
            one.info(name).shape,
        )
        np.testing.assert_array_equal(many.read(name), one.read(name))
        np.testing.assert_array_equal(many.read(name), ref)
        np.testing.assert_array_equal(many.read(name, dtype="float64"), ref.astype(np.float64))
    for name in ("embed.weight", "layers.0.weight", "layers.1.weight", "positions"):
        ref = tensors[name]
        rows, cols = slice(1, 3), slice(2, 4)
        for kw in ({"rows": rows}, {"cols": cols}, {"rows": rows, "cols": cols}):
            got = many.read(name, **kw)
            np.testing.assert_array_equal(got, one.read(name, **kw))
            np.testing.assert_array_equal(
                got, ref[kw.get("rows", slice(None)), kw.get("cols", slice(None))]
            )
            np.testing.assert_array_equal(
                many.read_transposed(name, **kw), one.read_transposed(name, **kw)
            )
    np.testing.assert_array_equal(
        many.read("conv.weight", rows=slice(1, 3)), tensors["conv.weight"][1:3]
    )
    assert "absent" not in many
    with pytest.raises(JobError, match="'absent' not found"):
        many.read("absent")


def test_shards_are_parsed_when_first_needed_and_once(model, monkeypatch):
    _, sharded, _ = model
    opened: list[Path] = []

    class Counting(SafetensorsFile):
        def __init__(self, path):
            opened.append(Path(path).name)
            super().__init__(path)

    monkeypatch.setattr(ckpt, "SafetensorsFile", Counting)
    weights = SafetensorsCheckpoint(sharded / INDEX)
    assert opened == [] and "layers.0.weight" in weights
    weights.read("embed.weight")
    weights.read("embed.weight", rows=slice(0, 1))
    weights.info("positions")  # also in the first shard
    assert opened == [SHARDS[0]]
    assert len(weights.tensors) == 8
    assert sorted(opened) == SHARDS


def test_model_safetensors_is_preferred_over_an_index(model):
    single, sharded, _ = model
    (sharded / "model.safetensors").write_bytes((single / "model.safetensors").read_bytes())
    assert isinstance(open_weights(sharded), SafetensorsFile)


def _break(folder: Path, how: str) -> str:
    """Damage the sharded folder one way; return the tensor the message must name, if any."""
    index = json.loads((folder / INDEX).read_text())
    weight_map = index["weight_map"]
    if how == "index-not-json":
        (folder / INDEX).write_text('{"weight_map": {')
    elif how == "index-not-utf8":
        (folder / INDEX).write_bytes(b'{"weight_map": "\xff"}')
    elif how == "index-nested":
        (folder / INDEX).write_text("[" * 100_000 + "]" * 100_000)
    elif how == "index-list":
        (folder / INDEX).write_text("[]")
    elif how == "no-weight-map":
        (folder / INDEX).write_text('{"metadata": {}}')
    elif how == "empty-weight-map":
        write_index(folder, {})
    elif how == "weight-map-list":
        (folder / INDEX).write_text('{"weight_map": ["model-00001-of-00003.safetensors"]}')
    elif how == "metadata-list":
        (folder / INDEX).write_text(json.dumps({"metadata": [], "weight_map": weight_map}))
    elif how == "shard-name-number":
        write_index(folder, {**weight_map, "norm.scale": 3})
        return "norm.scale"
    elif how == "missing-shard":
        (folder / SHARDS[1]).unlink()
        return next(t for t, f in weight_map.items() if f == SHARDS[1])
    elif how == "shard-name-too-long":
        write_index(folder, {**weight_map, "norm.scale": "x" * 5000})
        return "norm.scale"
    elif how == "tensor-not-in-shard":
        write_index(folder, {**weight_map, "norm.scale": SHARDS[0]})  # it is in shard 3
        return "norm.scale"
    elif how == "tensor-unknown-to-shards":
        write_index(folder, {**weight_map, "ghost.weight": SHARDS[2]})
        return "ghost.weight"
    elif how in ("parent", "absolute", "nested-parent", "backslash-parent"):
        escape = {
            "parent": "../" + SHARDS[0],
            "absolute": str((folder / SHARDS[0]).resolve()),
            "nested-parent": "sub/../../" + SHARDS[0],
            "backslash-parent": "..\\" + SHARDS[0],
        }[how]
        write_index(folder, {**weight_map, "norm.scale": escape})
        return "norm.scale"
    elif how == "broken-shard-header":
        raw = (folder / SHARDS[2]).read_bytes()
        (folder / SHARDS[2]).write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    elif how == "truncated-shard":
        os.truncate(folder / SHARDS[2], (folder / SHARDS[2]).stat().st_size - 3)
    else:
        raise AssertionError(how)
    return ""


@pytest.mark.parametrize(
    ("how", "expect", "names"),
    [
        ("index-not-json", "bad JSON index", INDEX),
        ("index-not-utf8", "not UTF-8", INDEX),
        ("index-nested", "nested too deeply", INDEX),
        ("index-list", "not a JSON object", INDEX),
        ("no-weight-map", "no weight_map", INDEX),
        ("empty-weight-map", "no weight_map", INDEX),
        ("weight-map-list", "no weight_map", INDEX),
        ("metadata-list", '"metadata" must be an object', INDEX),
        ("shard-name-number", "is not a file name", INDEX),
        ("missing-shard", f"shard file {{folder}}/{SHARDS[1]}", INDEX),
        ("shard-name-too-long", "xxx... (of tensor 'norm.scale') is missing", INDEX),
        ("tensor-not-in-shard", f"{SHARDS[0]}, which does not hold it", INDEX),
        ("tensor-unknown-to-shards", f"{SHARDS[2]}, which does not hold it", INDEX),
        ("parent", "escapes the model folder", INDEX),
        ("nested-parent", "escapes the model folder", INDEX),
        ("backslash-parent", "escapes the model folder", INDEX),
        ("absolute", "is an absolute path", INDEX),
        ("broken-shard-header", "header length", SHARDS[2]),
        ("truncated-shard", "do not fit", SHARDS[2]),
    ],
)
def test_broken_checkpoints_are_one_line(model, how, expect, names):
    _, folder, _ = model
    tensor = _break(folder, how)
    with pytest.raises(JobError) as e:
        weights = open_weights(folder)
        _ = weights.tensors  # every shard's header
        weights.read("norm.scale")
    message = str(e.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(folder / names) in message, message
    assert expect.format(folder=folder) in message, message
    if tensor:
        assert repr(tensor) in message, message


def test_index_errors_also_stop_the_identity(model):
    _, folder, _ = model
    _break(folder, "parent")
    with pytest.raises(JobError, match="escapes the model folder"):
        weights_identity(folder)


@pytest.mark.parametrize(
    ("files", "expect"),
    [
        ({}, "the folder holds nothing"),
        ({"config.json": "{}", "tokenizer.json": "{}"}, "holds config.json, tokenizer.json"),
        ({"config.json": "{}", "pytorch_model.bin": "x"}, "pytorch_model.bin is a pickled"),
        ({"weights.pt": "x"}, "weights.pt is a pickled PyTorch checkpoint"),
        ({"model-00001-of-00002.safetensors": ""}, "holds model-00001-of-00002.safetensors"),
        ({"pytorch_model-00001-of-00002.bin": "x"}, "00002.bin is a pickled"),
        ({"training_args.bin": "x", "odd\nname": ""}, "holds 'odd\\nname', training_args.bin"),
    ],
)
def test_a_folder_without_weights_says_what_it_holds(tmp_path, files, expect):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(JobError) as e:
        open_weights(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path}: no model.safetensors or {INDEX}"), message
    assert expect in message and "\n" not in message, message
    assert ("convert it to safetensors" in message) == ("pickled" in expect)
    with pytest.raises(JobError, match="model folder not found"):
        open_weights(tmp_path / "absent")


def test_a_dangling_link_is_reported_as_the_missing_file(tmp_path):
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "blobs" / "abc")
    with pytest.raises(JobError, match=r"model.safetensors: file not found"):
        open_weights(tmp_path)


def _keep_mtime(path: Path, change) -> None:
    """Apply `change` to the file and put its mtime back: only the content differs."""
    st = path.stat()
    change(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_identity_follows_headers_sizes_and_the_index(model):
    single, sharded, _ = model
    base = weights_identity(sharded)
    assert base == weights_identity(sharded)
    assert base["format"] == "safetensors-sharded"
    assert [f["name"] for f in base["files"]] == SHARDS
    assert weights_identity(single)["files"][0]["name"] == "model.safetensors"

    def same_size_new_header(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        at = raw.index(b'"pt"')
        raw[at + 1 : at + 3] = b"PT"
        path.write_bytes(bytes(raw))

    shard = sharded / SHARDS[1]
    size = shard.stat().st_size
    _keep_mtime(shard, same_size_new_header)
    changed = weights_identity(sharded)
    assert shard.stat().st_size == size
    assert changed["files"][1]["header_sha256"] != base["files"][1]["header_sha256"]
    assert changed["files"][0] == base["files"][0] and changed != base

    _keep_mtime(shard, lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8))
    grown = weights_identity(sharded)
    assert grown["files"][1]["size"] == size + 8 and grown != changed

    _keep_mtime(sharded / INDEX, lambda p: p.write_text(p.read_text().replace("1234", "4321")))
    assert weights_identity(sharded)["index"]["sha256"] != grown["index"]["sha256"]

    os.utime(shard, ns=(0, 10**18))
    assert weights_identity(sharded)["files"][1]["mtime_ns"] == 10**18


def test_identity_reads_headers_not_tensor_bytes(tmp_path, monkeypatch):
    """Shards whose data areas are 1 TiB each (sparse): the identity reads only headers
    and the index, counted at every open file."""
    huge = 2**40
    weight_map = {}
    for k, shard in enumerate(SHARDS):
        name = f"w{k}"
        header = json.dumps({name: {"dtype": "U8", "shape": [huge], "data_offsets": [0, huge]}})
        (tmp_path / shard).write_bytes(struct.pack("<Q", len(header)) + header.encode())
        try:
            os.truncate(tmp_path / shard, 8 + len(header) + huge)
        except OSError as e:
            pytest.skip(f"the file system refuses a sparse 1 TiB file: {e}")
        weight_map[name] = shard
    write_index(tmp_path, weight_map)
    budget = (tmp_path / INDEX).stat().st_size + sum(
        min(4096, (tmp_path / s).stat().st_size) for s in SHARDS
    )
    read = [0]
    real_open = io.open

    class Counted:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            data = self._f.read(n)
            read[0] += len(data)
            assert read[0] <= budget, f"read {read[0]} bytes: tensor data is being read"
            return data

        def readinto(self, buffer):
            got = self._f.readinto(buffer)
            read[0] += got
            assert read[0] <= budget, f"read {read[0]} bytes: tensor data is being read"
            return got

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def counting_open(*args, **kwargs):
        return Counted(real_open(*args, **kwargs))

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    identity = weights_identity(tmp_path)
    monkeypatch.undo()
    assert [f["size"] for f in identity["files"]] == [(tmp_path / s).stat().st_size for s in SHARDS]
    assert 0 < read[0] <= budget
