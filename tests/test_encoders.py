"""Encoders in sentence-transformers folders of every format against sentence-transformers.

The fixtures (data/fixtures/, made by data/make_encoder_fixtures.py with PyTorch,
transformers and sentence-transformers 6.3; hpcinfer needs none of them): tiny BERTs in
the 2.x and 6.x layouts, every pooling mode in both config formats, Dense + Normalize,
prompts, RoBERTa, XLM-RoBERTa and DistilBERT. Each reference group holds
sentence-transformers' embeddings of data/fixtures/encoder-texts.jsonl and the token ids
it fed the model.

In-process, one test per group (numpy; JAX for a few); under mpiexec, tp 2 for a
representative subset (the rest of the matrix is marked slow).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinfer.backends import get_backend
from hpcinfer.models import load_model
from tests.conftest import DATA, fast_and_slow, hpcinfer, write_job

FIXTURES = DATA / "fixtures"
REFERENCE = FIXTURES / "encoder-reference.h5"
TEXTS = FIXTURES / "encoder-texts.jsonl"
MIN_COSINE = 0.99999
ATOL = 1e-5  # per value; the embeddings are O(1)
GROUPS = (
    "st-v2-mean",
    "st-v6-cls",
    "pooling-max",
    "pooling-mean",
    "pooling-mean_sqrt_len_tokens",
    "pooling-weightedmean",
    "pooling-lasttoken",
    "st-dense-normalize",
    "st-prompts-default",
    "st-prompts-passage",
    "st-prompts-none",
    "tiny-roberta",
    "tiny-xlm-roberta",
    "tiny-distilbert",
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [json.loads(line)["text"] for line in TEXTS.read_text("utf-8").splitlines()]


def reference(group: str) -> dict:
    with h5py.File(REFERENCE, "r") as f:
        g = f[group]
        return {
            "embeddings": g["embeddings"][()],
            "token_ids": [np.asarray(t) for t in g["token_ids"]],
            **dict(g.attrs),
        }


def prompt_name(ref: dict) -> str:
    """The job's model.prompt_name for a reference group: its prompt_name, "" = none."""
    if "prompt_name" not in ref:
        return "auto"
    return ref["prompt_name"] or "none"


def group_folder(group: str, root: Path, legacy: bool = False) -> Path:
    """The group's model folder; a pooling variant is its folder with 1_Pooling/config.json
    replaced (6.x `pooling_config`, or the 2.7-5.x flags `pooling_config_legacy`)."""
    ref = reference(group)
    folder = FIXTURES / ref["folder"]
    if "pooling_config" not in ref:
        return folder
    copy = root / f"{group}{'-legacy' if legacy else ''}"
    if not copy.exists():
        shutil.copytree(folder, copy)
        key = "pooling_config_legacy" if legacy else "pooling_config"
        (copy / "1_Pooling" / "config.json").write_text(ref[key])
    return copy


def assert_matches(got: np.ndarray, expected: np.ndarray, atol: float = ATOL) -> float:
    """Every row's cosine >= MIN_COSINE and every value within atol; the smallest cosine."""
    assert got.shape == expected.shape and got.dtype == np.float32
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= MIN_COSINE, f"cosine {cos.min()} at row {cos.argmin()}"
    np.testing.assert_allclose(got, expected, atol=atol)
    return float(cos.min())


def embed(folder: Path, texts: list, backend: str = "numpy", **options) -> tuple:
    model = load_model(folder, get_backend(backend, "float32"), "float32", **options)
    return model, model.predict_items(texts, 512)["embeddings"]


# --- in-process, every group -------------------------------------------------------------


@pytest.mark.parametrize("group", GROUPS)
def test_group_matches_sentence_transformers(group, texts, tmp_path):
    ref = reference(group)
    model, got = embed(group_folder(group, tmp_path), texts, prompt_name=prompt_name(ref))
    assert model.cfg.max_length == ref["max_seq_length"]
    assert model.describe()["pooling"] == ref["pooling"]
    assert model.describe()["normalize"] == bool(ref["normalize"])
    assert model.prompt == ref["prompt"]
    ids = model.tokenizer.encode_batch([ref["prompt"] + t for t in texts])
    for i, (mine, theirs) in enumerate(zip(ids, ref["token_ids"], strict=True)):
        np.testing.assert_array_equal(mine, theirs, err_msg=f"{group} text {i}")
    assert_matches(got, ref["embeddings"])


@pytest.mark.parametrize("group", [g for g in GROUPS if g.startswith("pooling-")])
def test_legacy_pooling_flags_give_the_same(group, texts, tmp_path):
    """The 2.7-5.x boolean flags for each mode, same embeddings."""
    _, got = embed(group_folder(group, tmp_path, legacy=True), texts)
    assert_matches(got, reference(group)["embeddings"])


@pytest.mark.parametrize(
    "group",
    fast_and_slow(
        [
            "tiny-distilbert",
            "st-v2-mean",
            "tiny-roberta",
            "st-dense-normalize",
            "st-prompts-passage",
            "tiny-xlm-roberta",
            "pooling-lasttoken",
            "pooling-weightedmean",
        ],
        set(),  # JAX encoders run fast in tests/test_bert.py; these in the full suite
    ),
)
def test_jax_matches_sentence_transformers(group, texts, tmp_path):
    ref = reference(group)
    folder = group_folder(group, tmp_path)
    _, got = embed(folder, texts, "jax", prompt_name=prompt_name(ref))
    assert_matches(got, ref["embeddings"])


def test_several_modes_are_concatenated(texts, tmp_path):
    """6.x: in the list's order; 2.x-5.x flags: cls, max, mean, ... whatever their order."""
    cls, mean = reference("st-v6-cls")["embeddings"], reference("pooling-mean")["embeddings"]
    maxed = reference("pooling-max")["embeddings"]
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "st-v6-cls", folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": ["mean", "cls"]}))
    model, got = embed(folder, texts)
    assert model.outputs["embeddings"].shape == (64,)
    assert_matches(got, np.concatenate([mean, cls], axis=1))
    flags = {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    pooling.write_text(json.dumps(flags))
    _, got = embed(folder, texts)
    assert_matches(got, np.concatenate([maxed, mean], axis=1))


def test_token_ids_embed_like_their_texts(texts):
    """Pre-tokenised input (the reference's own ids, prompt included) gives the same."""
    ref = reference("tiny-roberta")
    _, got = embed(FIXTURES / "tiny-roberta", [t.tolist() for t in ref["token_ids"]])
    assert_matches(got, ref["embeddings"])


def test_padding_never_changes_a_row(texts):
    """RoBERTa's position ids come from the mask, so padding after a text changes nothing."""
    model = load_model(FIXTURES / "tiny-roberta", get_backend("numpy", "float32"), "float32")
    alone = model.predict_items([texts[3]], 1)["embeddings"]
    together = model.predict_items([texts[3], max(texts, key=len)], 512)["embeddings"][:1]
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_inspect_knows_every_family(capsys):
    from hpcinfer.cli import main

    for name, title in [
        ("tiny-roberta", "roberta, 2 layers, hidden 32, 4 heads"),
        ("tiny-xlm-roberta", "xlm-roberta, 2 layers"),
        ("tiny-distilbert", "distilbert, 2 layers, hidden 32, 4 heads, intermediate 64"),
        ("st-dense-normalize", "mean pooling -> Dense 32->16 tanh -> normalize; max length 48"),
    ]:
        assert main(["inspect", str(FIXTURES / name)]) == 0
        out = capsys.readouterr().out
        assert title in out, out
        held = load_model(FIXTURES / name, get_backend("numpy", "float32"), "float32")
        line = next(s for s in out.splitlines() if s.split()[:1] == ["1"])
        shown = float(line.split()[1])  # KiB, as printed
        assert shown == pytest.approx(held.weight_bytes / 2**10, abs=0.05)
        assert "3 does not fit: tp does not divide the 4 heads" in out


# --- under mpiexec: DP x TP, numpy and JAX --------------------------------------------------

LAYOUTS = [  # (group, ranks, tp, backend): every group at n2-tp2 in numpy and JAX, and more
    *[(g, 2, 2, backend) for backend in ("numpy", "jax") for g in GROUPS],
    ("tiny-xlm-roberta", 4, 2, "numpy"),
    ("st-v6-cls", 3, 1, "numpy"),
]
FAST_LAYOUTS = {  # the fast subset: the sentence-transformers modules and another family
    ("tiny-distilbert", 2, 2, "numpy"),
    ("st-dense-normalize", 2, 2, "numpy"),
    ("st-prompts-passage", 2, 2, "numpy"),
}


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("encoders")


@pytest.mark.mpi
@pytest.mark.parametrize(
    ("group", "ranks", "tp", "backend"),
    fast_and_slow(LAYOUTS, FAST_LAYOUTS, ids=lambda x: "{}-n{}-tp{}-{}".format(*x)),
)
def test_layout_matches_sentence_transformers(jobs_root, group, ranks, tp, backend):
    ref = reference(group)
    name = f"{group}-n{ranks}-tp{tp}-{backend}"
    out = jobs_root / f"{name}.h5"
    job = write_job(
        jobs_root / f"{name}.toml",
        model={"path": str(group_folder(group, jobs_root)), "prompt_name": prompt_name(ref)},
        input={"path": str(TEXTS), "field": "text"},
        output={"path": str(out)},
        run={"batch_size": 8, "chunk_size": 16, "tp": tp, "backend": backend},
    )
    p = hpcinfer("run", str(job), "--quiet", n=ranks, timeout=300)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        got = f["embeddings"][()]
        described = json.loads(f.attrs["model"])
    assert described["prompt"] == ref["prompt"]
    assert_matches(got, ref["embeddings"])
