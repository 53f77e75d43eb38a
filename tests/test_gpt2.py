"""GPT-2 scoring against transformers' own log-probs.

The model (data/models/tiny-gpt2: random weights, 12 heads, a vocabulary of 1001 that no
tp divides) and the reference (data/gpt2-reference.h5) were made by
data/make_tiny_gpt2.py with transformers and PyTorch; hpcinfer needs neither.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hpcinfer.backends import get_backend
from hpcinfer.errors import JobError
from hpcinfer.models import load_model
from hpcinfer.parallel.tensor import Solo
from hpcinfer.tools.report import load_run, report_data
from tests.conftest import DATA, fast_and_slow, hpcinfer, write_job

MODEL = DATA / "models" / "tiny-gpt2"
RTOL = 1e-4  # per-text log-prob, relative (float32)


@pytest.fixture(scope="module")
def reference():
    with h5py.File(DATA / "gpt2-reference.h5", "r") as f:
        return {
            "text": list(f["text"].asstr()[:]),
            "logprob": f["logprob"][:],
            "logprob_float64": f["logprob_float64"][:],
            "num_tokens": f["num_tokens"][:],
        }


def load(folder: Path = MODEL, backend: str = "numpy", dtype: str = "float32", **kw):
    return load_model(folder, get_backend(backend, dtype), dtype, **kw)


def assert_scores(got: dict, ref: dict, rtol: float = RTOL, key: str = "logprob") -> None:
    np.testing.assert_array_equal(got["num_tokens"], ref["num_tokens"])
    np.testing.assert_allclose(got["logprob"], ref[key], rtol=rtol, atol=1e-9)
    assert got["logprob"][:2].tolist() == [0.0, 0.0]  # no token, one token: nothing to predict


# JAX: the encoders' launch (tests/test_bert.py) covers it in the fast subset
@pytest.mark.parametrize("backend", fast_and_slow(["numpy", "jax"], {"numpy"}))
def test_scores_match_transformers(reference, backend):
    got = load(backend=backend).predict_items(reference["text"], 512)
    assert_scores(got, reference)


def test_packing_and_batch_company_never_change_a_row(reference):
    """Texts packed several to a row (each attending to its own earlier tokens, at its
    own positions) score as each does alone; the packing is dense."""
    model = load()
    texts = [*reference["text"][:12], "", reference["text"][5]]
    together = model.predict_items(texts, 4096)["logprob"]
    counts = model.token_counts
    assert counts.real / counts.computed > 0.8, (counts.real, counts.computed)  # dense rows
    for i in (2, 3, 5, 11, 13):
        alone = model.predict_items([texts[i]], 1)["logprob"]
        np.testing.assert_allclose(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    assert together[12] == 0.0


def test_float64_matches_transformers_float64(reference):
    got = load(dtype="float64").predict_items(reference["text"], 512)
    assert_scores(got, reference, rtol=1e-9, key="logprob_float64")


def test_padding_never_changes_a_row(reference):
    model = load()
    texts = reference["text"]
    longest = max(texts, key=len)
    alone = model.predict_items([texts[5]], 1)["logprob"]
    together = model.predict_items([texts[5], longest, ""], 512)["logprob"][:1]
    np.testing.assert_allclose(together, alone, rtol=1e-6)


def test_the_head_in_pieces_gives_the_same_scores(reference, monkeypatch):
    """Logits are made a few rows at a time (LOGITS_BYTES); the pieces must join exactly."""
    texts = reference["text"][:24]
    whole = load().predict_items(texts, 512)["logprob"]
    monkeypatch.setattr("hpcinfer.models.gpt2.LOGITS_BYTES", 1)  # one row at a time
    np.testing.assert_allclose(load().predict_items(texts, 512)["logprob"], whole, rtol=1e-6)


def test_token_ids_score_like_their_text(reference):
    model = load()
    texts = reference["text"][:20]
    ids = [e.tolist() for e in model.tokenizer.encode_batch(texts)]
    np.testing.assert_allclose(
        model.predict_items(ids, 512)["logprob"], model.predict_items(texts, 512)["logprob"]
    )


def test_a_token_id_outside_the_vocabulary_is_named():
    from hpcinfer.errors import BadRow

    with pytest.raises(BadRow, match=r"token id 1001 is outside the vocabulary \(0\.\.1000\)"):
        load().predict_items([[1, 2], [3, 1001]], 512)
    with pytest.raises(BadRow, match=r"token id -7 is outside the vocabulary") as bad:
        load().predict_items(["text", [2, -7]], 512)
    assert bad.value.index == 1


def copy_model(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(MODEL, folder)
    return folder


def rewrite(folder: Path, fn) -> None:
    tensors = load_file(folder / "model.safetensors")
    save_file(fn(tensors), folder / "model.safetensors")


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_keys_without_the_transformer_prefix(tmp_path, reference):
    folder = copy_model(tmp_path)
    rewrite(folder, lambda t: {k.removeprefix("transformer."): v for k, v in t.items()})
    assert_scores(load(folder).predict_items(reference["text"], 512), reference)


def test_float16_weights(tmp_path, reference):
    """F16 in the file: the same scores as F32 weights holding the same (rounded) values."""
    half, rounded = copy_model(tmp_path / "a"), copy_model(tmp_path / "b")
    rewrite(half, lambda t: {k: v.astype(np.float16) for k, v in t.items()})
    rewrite(rounded, lambda t: {k: v.astype(np.float16).astype(np.float32) for k, v in t.items()})
    texts = reference["text"][:40]
    np.testing.assert_allclose(
        load(half).predict_items(texts, 512)["logprob"],
        load(rounded).predict_items(texts, 512)["logprob"],
        rtol=1e-6,
    )


def test_untied_head(tmp_path, reference):
    folder = copy_model(tmp_path)
    edit_config(folder, tie_word_embeddings=False)
    with pytest.raises(JobError, match=r"lm_head\.weight is missing"):
        load(folder)
    rewrite(folder, lambda t: {**t, "lm_head.weight": -t["transformer.wte.weight"]})
    texts = reference["text"][:20]
    untied = load(folder).predict_items(texts, 512)["logprob"]
    assert not np.allclose(untied, reference["logprob"][:20], rtol=1e-2)  # the head is read
    rewrite(folder, lambda t: {**t, "lm_head.weight": -t["lm_head.weight"]})
    np.testing.assert_allclose(
        load(folder).predict_items(texts, 512)["logprob"], reference["logprob"][:20], rtol=RTOL
    )


def test_tp_must_divide_the_heads():
    class Five(Solo):
        size = 5

    with pytest.raises(JobError, match=r"run\.tp = 5 does not divide the 12 attention heads"):
        load(tp=Five())


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"activation_function": "swish"}, "activation_function 'swish' is not supported"),
        ({"add_cross_attention": True}, "add_cross_attention is not supported"),
        ({"n_embd": 100}, "n_embd 100 is not a multiple of n_head 12"),
        ({"n_inner": 500}, r"mlp.c_fc.weight has shape \(96, 384\), expected \(96, 500\)"),
    ],
)
def test_unsupported_or_inconsistent_configs_are_clear_errors(tmp_path, changes, expected):
    folder = copy_model(tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(JobError, match=expected):
        load(folder)


def test_a_task_the_model_cannot_do_is_a_clear_error():
    with pytest.raises(JobError, match=r"model\.task = 'embed' is not available for model_type"):
        load(task="embed")


def test_inspect_knows_gpt2_and_agrees_with_what_loading_holds(capsys):
    from hpcinfer.cli import main
    from hpcinfer.io.file_checks import human_bytes

    assert main(["inspect", str(MODEL)]) == 0
    out = capsys.readouterr().out
    assert "gpt2, 2 layers, hidden 96, 12 heads, vocabulary 1001" in out
    assert "8 does not fit: tp does not divide the 12 heads" in out
    for tp in (1, 2, 3, 4):
        held = max(load(tp=_group_of(tp, r)).weight_bytes for r in range(tp))
        line = next(s for s in out.splitlines() if s.split()[:1] == [str(tp)])
        assert line.split()[1:3] == human_bytes(held).split(), (tp, line)


def _group_of(size: int, rank: int) -> Solo:
    """A stand-in TP group for loading one rank's shard in-process (never communicates)."""
    group = Solo()
    group.size, group.rank = size, rank
    return group


# --- end to end, under mpiexec ------------------------------------------------------------

LAYOUTS = [
    (1, 1, "numpy"),
    (2, 2, "numpy"),
    (3, 3, "numpy"),
    (4, 2, "numpy"),
    (2, 1, "jax"),
    (2, 2, "jax"),
    (4, 4, "jax"),
]


@pytest.fixture(scope="module")
def score_job(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("gpt2")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in reference["text"]))
    return write_job(
        root / "score.toml",
        model={"path": str(MODEL)},
        input={"path": str(corpus)},
        output={"path": str(root / "out.h5")},
        run={"batch_size": 16, "chunk_size": 48},
    )


def run_scores(job: Path, ranks: int, tp: int, backend: str, *sets: str, tag: str = "") -> dict:
    out = job.parent / f"out-{ranks}-{tp}-{backend}-{len(sets)}{tag}.h5"
    args = ["run", str(job), "--tp", str(tp), "--backend", backend, "--quiet"]
    for s in (f"output.path='{out}'", *sets):
        args += ["--set", s]
    p = hpcinfer(*args, n=ranks, timeout=300)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["model"])["task"] == "score"
        return {"logprob": f["logprob"][:], "num_tokens": f["num_tokens"][:]}


@pytest.mark.mpi
@pytest.mark.parametrize(
    ("ranks", "tp", "backend"),
    fast_and_slow(LAYOUTS, {(3, 3, "numpy")}, ids=lambda x: "n{}-tp{}-{}".format(*x)),
)
def test_every_layout_matches_transformers(score_job, reference, ranks, tp, backend):
    assert_scores(run_scores(score_job, ranks, tp, backend), reference)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", fast_and_slow(["strings", "token ids"], {"token ids"}))
def test_hdf5_inputs(score_job, reference, kind):
    path = score_job.parent / f"{kind}.h5"
    with h5py.File(path, "w") as f:
        if kind == "strings":
            f.create_dataset("rows", data=reference["text"], dtype=h5py.string_dtype())
        else:
            ids = load().tokenizer.encode_batch(reference["text"])
            data = f.create_dataset("rows", (len(ids),), dtype=h5py.vlen_dtype(np.int32))
            for i, e in enumerate(ids):
                data[i] = e
    got = run_scores(
        score_job, 3, 3, "numpy", f"input.path='{path}'", "input.dataset=rows", tag=kind
    )
    assert_scores(got, reference)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["jsonl", "hdf5"])
def test_a_bad_token_id_names_file_and_row(score_job, kind):
    if kind == "jsonl":
        bad = score_job.parent / "bad.jsonl"
        bad.write_text('{"text": [1, 2, 3]}\n{"text": "fine"}\n{"text": [4, 99999]}\n')
        sets, expected = [], "bad.jsonl:3: token id 99999 is outside the vocabulary (0..1000)"
    else:
        bad = score_job.parent / "bad.h5"
        with h5py.File(bad, "w") as f:
            rows = f.create_dataset("rows", (3,), dtype=h5py.vlen_dtype(np.int64))
            rows[0], rows[1], rows[2] = [1, 2], [2, -7], [3]
        sets, expected = ["--set", "input.dataset=rows"], "bad.h5:rows[1]: token id -7 is outside"
    out = score_job.parent / f"bad-{kind}-out.h5"
    sets += ["--set", f"input.path='{bad}'", "--set", f"output.path='{out}'"]
    p = hpcinfer("run", str(score_job), "--backend", "numpy", *sets, n=2, timeout=120)
    assert p.returncode == 2
    assert expected in p.stderr
    assert not out.exists()


@pytest.mark.mpi
@pytest.mark.slow
def test_the_shipped_job_runs(tmp_path):
    out = tmp_path / "gpt2.h5"
    p = hpcinfer(
        "run", "jobs/gpt2-score.toml", "--quiet", "--set", f"output.path='{out}'", n=2, timeout=300
    )
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        n = len((DATA / "corpus.jsonl").read_text().splitlines())
        assert f["logprob"].shape == (n,) and f["num_tokens"].dtype == np.int64
        assert (f["logprob"][:] < 0).all() and (f["num_tokens"][:] > 1).all()
        tokens = int(f["num_tokens"][:].sum())
    real, computed = report_data(load_run(out))["tokens"]  # what the ranks counted
    assert real == tokens and tokens < computed < 2 * tokens


def test_status_reads_a_text_job(tmp_path, score_job):
    from hpcinfer.job import load_job
    from hpcinfer.tools.status import job_status

    job = load_job(score_job, [f"output.path='{tmp_path / 'none.h5'}'"])
    assert job_status(job).endswith("not started (5 chunks, 200 rows)")
