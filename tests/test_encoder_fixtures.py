"""The encoder fixtures (data/make_encoder_fixtures.py) agree with themselves.

Plain json, h5py and numpy: each folder has the files its sentence-transformers format
promises, and every reference group's shapes, lengths and attributes match the folder it
names. Catches a fixture broken by hand or by a partial regeneration; the model code's
own tests compare against the references.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import DATA

FIXTURES = DATA / "fixtures"
REFERENCE = FIXTURES / "encoder-reference.h5"
CORPUS_ROWS = 40
V2_FOLDERS = ("st-v2-mean",)
V6_FOLDERS = (
    "st-v6-cls",
    "st-dense-normalize",
    "st-prompts",
    "tiny-roberta",
    "tiny-xlm-roberta",
    "tiny-distilbert",
)
LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def legacy_mode(config: dict) -> str:
    modes = [mode for key, mode in LEGACY_FLAGS.items() if config.get(key)]
    assert len(modes) == 1, config
    return modes[0]


def pooling_mode(folder: Path) -> str:
    config = read_json(folder / "1_Pooling" / "config.json")
    return config["pooling_mode"] if "pooling_mode" in config else legacy_mode(config)


def max_seq_length(folder: Path) -> int:
    """2.x: sentence_bert_config.json; 6.x: tokenizer_config.json's model_max_length."""
    sbert = read_json(folder / "sentence_bert_config.json")
    if "max_seq_length" in sbert:
        return sbert["max_seq_length"]
    return read_json(folder / "tokenizer_config.json")["model_max_length"]


def model_config(folder: Path) -> tuple[int, int, int]:
    """(vocab size, hidden size, position rows) from config.json."""
    c = read_json(folder / "config.json")
    return c["vocab_size"], c.get("hidden_size", c.get("dim")), c["max_position_embeddings"]


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.fail(f"{REFERENCE} missing: run data/make_encoder_fixtures.py")
    with h5py.File(REFERENCE, "r") as f:
        yield f


@pytest.fixture(scope="module")
def texts() -> list[str]:
    lines = (FIXTURES / "encoder-texts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def test_texts(texts, reference):
    corpus = (DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert texts[:CORPUS_ROWS] == [json.loads(line)["text"] for line in corpus[:CORPUS_ROWS]]
    extra = texts[CORPUS_ROWS:]
    assert "" in extra
    assert any(not t.isascii() for t in extra)
    assert max(map(len, texts)) > 1000  # the overlong line
    assert reference.attrs["num_texts"] == len(texts)


@pytest.mark.parametrize("name", V2_FOLDERS + V6_FOLDERS)
def test_folder_files(name):
    folder = FIXTURES / name
    for file in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ):
        assert (folder / file).is_file(), f"{name}/{file}"
    modules = read_json(folder / "modules.json")
    assert [m["idx"] for m in modules] == list(range(len(modules)))
    assert modules[0]["path"] == "" and modules[0]["type"].endswith(".Transformer")
    assert modules[1]["path"] == "1_Pooling" and modules[1]["type"].endswith(".Pooling")
    vocab, hidden, positions = model_config(folder)
    header = safetensors_header(folder / "model.safetensors")
    assert all(t["dtype"] == "F32" for t in header.values())
    assert header["embeddings.word_embeddings.weight"]["shape"] == [vocab, hidden]
    assert header["embeddings.position_embeddings.weight"]["shape"] == [positions, hidden]
    tokenizer = read_json(folder / "tokenizer.json")
    assert len(tokenizer["model"]["vocab"]) == vocab
    if name in V2_FOLDERS:  # the 2.x layout
        assert all(m["type"].startswith("sentence_transformers.models.") for m in modules)
        pool = read_json(folder / "1_Pooling" / "config.json")
        assert "pooling_mode" not in pool and "word_embedding_dimension" in pool
        assert "max_seq_length" in read_json(folder / "sentence_bert_config.json")
        assert "prompts" not in read_json(folder / "config_sentence_transformers.json")
        assert not (folder / "2_Normalize").exists()  # 2.x wrote nothing there
        assert (folder / "vocab.txt").is_file()
    else:  # the 6.x layout
        assert not any(m["type"].startswith("sentence_transformers.models.") for m in modules)
        pool = read_json(folder / "1_Pooling" / "config.json")
        assert set(pool) == {"embedding_dimension", "pooling_mode", "include_prompt"}
        assert pool["embedding_dimension"] == hidden
        assert "max_seq_length" not in read_json(folder / "sentence_bert_config.json")
        assert isinstance(read_json(folder / "tokenizer_config.json")["model_max_length"], int)
    assert max_seq_length(folder) <= positions


def test_dense_normalize_folder():
    folder = FIXTURES / "st-dense-normalize"
    modules = read_json(folder / "modules.json")
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    assert modules[3]["type"].endswith(".Normalize")
    dense = read_json(folder / "2_Dense" / "config.json")
    _, hidden, _ = model_config(folder)
    assert dense["in_features"] == hidden and dense["bias"] is True
    assert dense["activation_function"] == "torch.nn.modules.activation.Tanh"
    header = safetensors_header(folder / "2_Dense" / "model.safetensors")
    assert header["linear.weight"]["shape"] == [dense["out_features"], hidden]
    assert header["linear.bias"]["shape"] == [dense["out_features"]]


def test_prompts_folder():
    config = read_json(FIXTURES / "st-prompts" / "config_sentence_transformers.json")
    assert config["prompts"]["query"] == "query: "
    assert config["prompts"]["passage"] == "passage: "
    assert config["default_prompt_name"] == "query"


def test_reference_groups(reference, texts):
    folders = {reference[name].attrs["folder"] for name in reference}
    assert folders == set(V2_FOLDERS + V6_FOLDERS)
    for name, group in reference.items():
        folder = FIXTURES / group.attrs["folder"]
        vocab, hidden, _ = model_config(folder)
        emb = group["embeddings"][()]
        dense = folder / "2_Dense" / "config.json"
        dim = read_json(dense)["out_features"] if dense.is_file() else hidden
        assert emb.dtype == np.float32 and emb.shape == (len(texts), dim), name
        assert np.isfinite(emb).all(), name
        assert len(np.unique(emb.round(4), axis=0)) > len(texts) // 2, name  # not degenerate
        if group.attrs["normalize"]:
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        modules = read_json(folder / "modules.json")
        assert bool(group.attrs["normalize"]) == modules[-1]["type"].endswith(".Normalize"), name

        max_len = int(group.attrs["max_seq_length"])
        assert max_len == max_seq_length(folder), name
        ids = list(group["token_ids"])
        assert len(ids) == len(texts), name
        lengths = [len(row) for row in ids]
        assert min(lengths) >= 2 and max(lengths) == max_len, name  # truncation happened
        assert all(row.dtype == np.int64 and row.min() >= 0 and row.max() < vocab for row in ids)
        firsts, lasts = {int(row[0]) for row in ids}, {int(row[-1]) for row in ids}
        assert len(firsts) == 1 and len(lasts) == 1, name  # special tokens at both ends

        if "pooling_config" in group.attrs:  # a variant of the folder's 1_Pooling
            new = json.loads(group.attrs["pooling_config"])
            legacy = json.loads(group.attrs["pooling_config_legacy"])
            assert new["pooling_mode"] == legacy_mode(legacy) == group.attrs["pooling"], name
            assert new["embedding_dimension"] == legacy["word_embedding_dimension"] == hidden
        else:
            assert group.attrs["pooling"] == pooling_mode(folder), name


def test_pooling_modes_covered(reference):
    modes = {reference[name].attrs["pooling"] for name in reference}
    assert set(LEGACY_FLAGS.values()) <= modes


def test_prompt_groups(reference):
    none = list(reference["st-prompts-none"]["token_ids"])
    for variant, prompt in (("default", "query: "), ("passage", "passage: ")):
        group = reference[f"st-prompts-{variant}"]
        assert group.attrs["prompt"] == prompt
        ids = list(group["token_ids"])
        # the prompt's tokens follow the first special token in every row
        k = 1
        while len({tuple(row[: k + 1]) for row in ids}) == 1:
            k += 1
        assert k >= 2, variant
        prompt_ids = ids[0][1:k]
        for with_prompt, without in zip(ids, none, strict=True):
            assert (with_prompt[1:k] == prompt_ids).all()
            n = len(with_prompt) - len(prompt_ids)  # what is left of the text
            assert (np.delete(with_prompt, range(1, k))[:-1] == without[: n - 1]).all(), variant
    assert not np.allclose(
        reference["st-prompts-default"]["embeddings"], reference["st-prompts-none"]["embeddings"]
    )


def test_roberta_positions_and_raw_pooling(reference):
    for name in ("tiny-roberta", "tiny-xlm-roberta"):
        config = read_json(FIXTURES / name / "config.json")
        # positions start at pad_token_id + 1: the table has that many extra rows
        assert config["pad_token_id"] == 1
        max_len = reference[name].attrs["max_seq_length"]
        assert config["max_position_embeddings"] >= max_len + config["pad_token_id"] + 1
    group = reference["tiny-roberta"]
    assert "padding_idx + 1" in group.attrs["position_ids"]
    np.testing.assert_allclose(group["raw_mean_pooling"][()], group["embeddings"][()], atol=1e-5)


def test_fixtures_small():
    names = V2_FOLDERS + V6_FOLDERS
    files = [p for n in names for p in (FIXTURES / n).rglob("*") if p.is_file()]
    files += [REFERENCE, FIXTURES / "encoder-texts.jsonl"]
    assert sum(p.stat().st_size for p in files) < 4_000_000
