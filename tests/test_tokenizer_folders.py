"""Model folders with the tokenizer files they ship, or none at all, end to end.

- A GPT-2 folder with only vocab.json + merges.txt (most GPT-2 checkpoints) scores like
  the same model with tokenizer.json (data/gpt2-reference.h5, transformers' log-probs).
  The two files are written from tiny-gpt2's tokenizer.json the way transformers'
  GPT2Tokenizer.save_vocabulary writes them (vocab.json: token -> id; merges.txt:
  "#version: 0.2", then one "left right" pair per line).
- A folder with no tokenizer runs a job over token ids; over texts it stops with one line.

(tests/test_tokenizer_files.py checks each tokenizer format against transformers' own
tokenizers line by line.)
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
from tests.test_encoders import FIXTURES, assert_matches, reference

GPT2 = DATA / "models" / "tiny-gpt2"
RTOL = 1e-4


@pytest.fixture(scope="module")
def gpt2_reference():
    with h5py.File(DATA / "gpt2-reference.h5", "r") as f:
        return {
            "text": list(f["text"].asstr()[:]),
            "logprob": f["logprob"][:],
            "num_tokens": f["num_tokens"][:],
        }


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory) -> Path:
    """tiny-gpt2 with vocab.json + merges.txt instead of tokenizer.json."""
    folder = tmp_path_factory.mktemp("bpe") / "tiny-gpt2-bpe"
    shutil.copytree(GPT2, folder)
    model = json.loads((folder / "tokenizer.json").read_text("utf-8"))["model"]
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), "utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return folder


@pytest.fixture(scope="module")
def bare_folder(tmp_path_factory) -> Path:
    """tiny-gpt2 with no tokenizer at all."""
    folder = tmp_path_factory.mktemp("bare") / "tiny-gpt2-bare"
    shutil.copytree(GPT2, folder)
    (folder / "tokenizer.json").unlink()
    return folder


def load(folder: Path, backend: str = "numpy"):
    return load_model(folder, get_backend(backend, "float32"), "float32")


def assert_scores(got: dict, ref: dict) -> float:
    np.testing.assert_array_equal(got["num_tokens"], ref["num_tokens"])
    np.testing.assert_allclose(got["logprob"], ref["logprob"], rtol=RTOL, atol=1e-9)
    nonzero = ref["logprob"] != 0
    return float(np.abs(got["logprob"][nonzero] / ref["logprob"][nonzero] - 1).max())


def test_vocab_and_merges_score_like_tokenizer_json(bpe_folder, gpt2_reference):
    model = load(bpe_folder)
    assert model.tokenizer.kind == "bpe"
    texts = gpt2_reference["text"]
    ours = model.tokenizer.encode_batch(texts)
    theirs = load(GPT2).tokenizer.encode_batch(texts)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"text {i}")
    assert_scores(model.predict_items(texts, 512), gpt2_reference)


def test_token_ids_need_no_tokenizer(bare_folder, gpt2_reference):
    model = load(bare_folder)
    assert model.tokenizer is None
    ids = [t.tolist() for t in load(GPT2).tokenizer.encode_batch(gpt2_reference["text"])]
    assert_scores(model.predict_items(ids, 512), gpt2_reference)


def test_encoder_token_ids_need_no_tokenizer(tmp_path):
    folder = tmp_path / "roberta"
    shutil.copytree(FIXTURES / "tiny-roberta", folder)
    (folder / "tokenizer.json").unlink()
    model = load(folder)
    assert model.tokenizer is None
    ref = reference("tiny-roberta")
    got = model.predict_items([t.tolist() for t in ref["token_ids"]], 512)["embeddings"]
    assert_matches(got, ref["embeddings"])


# --- under mpiexec ------------------------------------------------------------------------


def score_job(root: Path, folder: Path, input_path: Path, **run) -> Path:
    return write_job(
        root / f"{folder.name}-{input_path.stem}.toml",
        model={"path": str(folder)},
        input={"path": str(input_path)},
        output={"path": str(root / f"{folder.name}-{input_path.stem}.h5")},
        run={"batch_size": 16, "chunk_size": 48, **run},
    )


def read_scores(job: Path) -> dict:
    with h5py.File(job.with_suffix(".h5"), "r") as f:
        return {"logprob": f["logprob"][:], "num_tokens": f["num_tokens"][:]}


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["numpy", pytest.param("jax", marks=pytest.mark.slow)])
def test_vocab_and_merges_under_tp(tmp_path, bpe_folder, gpt2_reference, backend):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in gpt2_reference["text"]))
    job = score_job(tmp_path, bpe_folder, texts, tp=2, backend=backend)
    p = hpcinfer("run", str(job), "--quiet", n=2, timeout=300)
    assert p.returncode == 0, p.stderr
    assert_scores(read_scores(job), gpt2_reference)


@pytest.mark.mpi
def test_a_token_id_job_without_a_tokenizer(tmp_path, bare_folder, gpt2_reference):
    ids = load(GPT2).tokenizer.encode_batch(gpt2_reference["text"])
    path = tmp_path / "ids.h5"
    with h5py.File(path, "w") as f:
        data = f.create_dataset("x", (len(ids),), dtype=h5py.vlen_dtype(np.int64))
        for i, e in enumerate(ids):
            data[i] = e
    job = score_job(tmp_path, bare_folder, path, tp=2, backend="numpy")  # JAX: elsewhere
    p = hpcinfer("run", str(job), "--quiet", n=2, timeout=300)
    assert p.returncode == 0, p.stderr
    assert_scores(read_scores(job), gpt2_reference)


@pytest.mark.mpi
@pytest.mark.parametrize("suffix", fast_and_slow([".jsonl", ".txt"], {".jsonl"}))
def test_texts_without_a_tokenizer_are_one_line(tmp_path, bare_folder, suffix):
    path = tmp_path / f"texts{suffix}"
    lines = ['{"text": "hello"}', '{"text": "world"}'] if suffix == ".jsonl" else ["hi", "yo"]
    path.write_text("\n".join(lines) + "\n")
    job = score_job(tmp_path, bare_folder, path, chunk_size=1)  # no rank idles
    p = hpcinfer("run", str(job), "--quiet", "--backend", "numpy", n=2, timeout=120)
    assert p.returncode == 2
    message = p.stderr.strip()
    assert len(message.splitlines()) == 1, message
    if suffix == ".txt":  # texts only: refused before any compute
        assert f"texts{suffix} holds texts, but the model folder" in message
    else:  # a JSONL row may hold token ids instead: the first text is named
        assert f"texts{suffix}:1: a text, but the model folder has no tokenizer" in message
    assert not job.with_suffix(".h5").exists()
