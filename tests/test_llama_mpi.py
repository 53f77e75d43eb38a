"""Llama-family decoders end to end under mpiexec, DP x TP, numpy and JAX, against
transformers' numbers (tests/decoders.py): every layout's per-row log-probs within 1e-4
(SmolLM2: 1e-3), embeddings within cosine 0.99999. Each test prints its figures
(`pytest -s -m mpi tests/test_llama_mpi.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import DATA, JOBS, hpcinfer, write_job
from tests.decoders import (
    COSINE,
    MODELS,
    SMOLLM2,
    SMOLLM2_RTOL,
    VARIANT_MODELS,
    assert_scores,
    min_cosine,
    needs_smollm2,
    reference_group,
)

pytestmark = pytest.mark.mpi

PATHS = {**MODELS, **VARIANT_MODELS, "smollm2": SMOLLM2}
FAST = {("tiny-llama", 2, 2, "numpy"), ("tiny-qwen2", 3, 3, "numpy")}
LAYOUTS = [  # (reference group, ranks, tp, backend)
    ("tiny-llama", 2, 2, "numpy"),
    ("tiny-qwen2", 3, 3, "numpy"),  # 6 heads over 2 KV heads at tp 3: KV heads replicated
    ("tiny-llama", 1, 1, "numpy"),
    ("tiny-llama", 3, 3, "numpy"),  # 4 heads over 3 ranks: 2, 1, 1
    ("tiny-llama", 4, 2, "numpy"),  # 2 DP groups of 2
    ("tiny-qwen2", 2, 2, "numpy"),  # tp 2 divides the KV heads
    ("tiny-llama", 2, 1, "jax"),
    ("tiny-llama", 2, 2, "jax"),
    ("tiny-qwen2", 3, 3, "jax"),
    ("tiny-llama-sharded", 2, 2, "numpy"),
    ("tiny-llama-f16-gguf", 2, 2, "numpy"),
    ("tiny-llama-q8_0-gguf", 2, 2, "numpy"),
    ("tiny-llama-q8_0-gguf", 2, 2, "jax"),
    ("tiny-qwen2-bf16-gguf", 3, 3, "numpy"),
    ("mistral-window", 2, 2, "numpy"),
    ("llama-dynamic", 2, 2, "numpy"),  # MQA: the one KV head on both ranks
    ("llama-yarn", 3, 3, "numpy"),
    ("qwen3-window", 2, 2, "jax"),
]
SMOLLM2_LAYOUTS = [(1, 1), (2, 2), (3, 3)]


def run_job(tmp: Path, group: str, ranks: int, tp: int, backend: str, **model) -> dict:
    """The group's token ids through `mpiexec -n RANKS hpcinfer run --tp TP`."""
    ref = reference_group(group)
    data = tmp / f"{group}.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"text": ids}) + "\n" for ids in ref["ids"]))
    out = tmp / f"{group}-{ranks}-{tp}-{backend}-{'-'.join(model.values())}.h5"
    job = write_job(
        tmp / f"{out.stem}.toml",
        model={"path": str(PATHS[group]), **model},
        input={"path": str(data)},
        output={"path": str(out)},
        run={"chunk_size": 12, "backend": backend, "tp": tp},
    )
    p = hpcinfer("run", str(job), "--quiet", n=ranks, timeout=600)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        layout = json.loads(f.attrs["layout"])
        assert (layout["tp"], layout["ranks"]) == (tp, ranks)
        return {key: f[key][:] for key in f if key != "run"} | {"ref": ref}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("llama-mpi")


@pytest.mark.parametrize(
    ("group", "ranks", "tp", "backend"),
    [pytest.param(*x, marks=[] if x in FAST else [pytest.mark.slow]) for x in LAYOUTS],
    ids=[f"{g}-n{n}-tp{t}-{b}" for g, n, t, b in LAYOUTS],
)
def test_scores_match_transformers_in_every_layout(tmp, group, ranks, tp, backend):
    got = run_job(tmp, group, ranks, tp, backend)
    err = assert_scores(got, got["ref"])
    print(f"\nFIDELITY {group} n{ranks} tp{tp} {backend}: logprob max rel err {err:.2e}")


@pytest.mark.parametrize(
    ("group", "ranks", "tp", "backend"),
    [
        ("tiny-llama", 2, 2, "numpy"),
        pytest.param("tiny-qwen2", 2, 2, "jax", marks=pytest.mark.slow),
        pytest.param("tiny-llama-q8_0-gguf", 3, 3, "numpy", marks=pytest.mark.slow),
    ],
)
def test_embeddings_match_transformers(tmp, group, ranks, tp, backend):
    for pooling, key in (("last_token", "embed_last"), ("mean", "embed_mean")):
        got = run_job(tmp, group, ranks, tp, backend, task="embed", pooling=pooling)
        cos = min_cosine(got["embeddings"], got["ref"][key])
        print(f"\nFIDELITY {group} n{ranks} tp{tp} {backend} embed {pooling}: min cosine {cos:.7f}")
        assert cos >= COSINE


@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize(
    ("ranks", "tp"), SMOLLM2_LAYOUTS, ids=[f"n{n}-tp{t}" for n, t in SMOLLM2_LAYOUTS]
)
def test_smollm2_matches_transformers(tmp, ranks, tp, backend):
    got = run_job(tmp, "smollm2", ranks, tp, backend)
    err = assert_scores(got, got["ref"], SMOLLM2_RTOL)
    print(f"\nFIDELITY smollm2 n{ranks} tp{tp} {backend}: logprob max rel err {err:.2e}")


@pytest.mark.slow
def test_texts_through_a_lone_gguf(tmp):
    """Texts in, tokenized from the GGUF's own metadata on each rank (tp 3)."""
    ref = reference_group("tiny-qwen2-bf16-gguf")
    data = tmp / "texts.jsonl"
    texts = reference_group("tiny-qwen2")["text"]  # the same 48 corpus texts
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp / "texts.h5"
    job = write_job(
        tmp / "texts.toml",
        model={"path": str(VARIANT_MODELS["tiny-qwen2-bf16-gguf"])},
        input={"path": str(data)},
        output={"path": str(out)},
        run={"chunk_size": 16, "backend": "numpy"},
    )
    p = hpcinfer("run", str(job), "--quiet", "--tp", "3", n=3, timeout=600)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        logprob, n = f["logprob"][:], f["num_tokens"][:]
        assert json.loads(f.attrs["model_identity"])["model weights"]["format"] == "gguf"
    whole = n <= 128  # the reference cut texts at 128 tokens; this model reads 256
    assert whole.sum() > 30 and (n >= ref["num_tokens"]).all()
    np.testing.assert_allclose(logprob[whole], ref["logprob"][whole], rtol=1e-4)


@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize(("ranks", "tp"), [(2, 1), (3, 3)])
def test_the_shipped_job_runs(tmp, ranks, tp):
    """jobs/smollm2-score.toml as shipped, over the first 48 texts (the model from its
    data/models link, or from the wheel where get_smollm2.py --link was not run)."""
    ref = reference_group("smollm2")
    texts = tmp / "smol-texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ref["text"]))
    out = tmp / f"smol-{ranks}-{tp}.h5"
    sets = ["--set", f"input.path='{texts}'", "--set", f"output.path='{out}'"]
    if not (DATA / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
        sets += ["--set", f"model.path='{SMOLLM2}'"]
    p = hpcinfer(
        "run",
        str(JOBS / "smollm2-score.toml"),
        "--quiet",
        "--tp",
        str(tp),
        *sets,
        n=ranks,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        logprob, n = f["logprob"][:], f["num_tokens"][:]
    whole = n <= 128
    np.testing.assert_allclose(logprob[whole], ref["logprob"][whole], rtol=SMOLLM2_RTOL)


def test_an_unsupported_gguf_is_one_line_and_exit_2(tmp):
    """Every rank refuses it at load; rank 0 says so once; nothing is written."""
    from tests.test_llama_config import write_gguf

    bad = write_gguf(tmp / "falcon.gguf", arch="falcon")
    data = tmp / "ids.jsonl"
    data.write_text('{"text": [1, 2, 3]}\n')
    out = tmp / "never.h5"
    job = write_job(
        tmp / "bad.toml",
        model={"path": str(bad)},
        input={"path": str(data)},
        output={"path": str(out)},
    )
    p = hpcinfer("run", str(job), n=2, timeout=120)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "GGUF architecture 'falcon'" in errors[0], p.stderr
    assert not out.exists()
