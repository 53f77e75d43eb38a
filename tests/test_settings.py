"""The run settings "auto" resolves (hpcinfer/settings.py) and the line that states them."""

from __future__ import annotations

from pathlib import Path

from hpcinfer.job import job_from_dict
from hpcinfer.settings import CPU_BATCH_TOKENS, TEXT_CHUNK_FLOOR, resolve


def job(**run):
    data = {"model": {"path": "m"}, "input": {"path": "i.h5"}, "output": {"path": "o.h5"}}
    return job_from_dict({**data, "run": run}, Path("/tmp"))


def test_texts_state_their_token_budget_and_what_auto_chose():
    s = resolve(job(backend="numpy"), 1000, texts=True, prefers_jax=True)
    assert (s.backend, s.chunk_size, s.max_batch_tokens) == ("numpy", TEXT_CHUNK_FLOOR, 1024)
    line = s.describe()
    assert line == (
        f"backend numpy, chunk_size {TEXT_CHUNK_FLOOR} (auto), "
        f"max_batch_tokens {CPU_BATCH_TOKENS:,} (auto)"
    )


def test_numeric_rows_state_their_batch_size_not_a_token_budget():
    line = resolve(job(backend="numpy", batch_size=64), 10_000, False, False).describe()
    assert line == "backend numpy, chunk_size 1,024 (auto), batch_size 64"


def test_auto_backend_is_jax_for_text_models_but_numpy_under_host_staged_tp(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec_with(mpi4jax: bool):
        def find_spec(name, *args):
            if name == "mpi4jax":
                return real("jax") if mpi4jax else None  # any spec stands for "installed"
            return real(name, *args)

        return find_spec

    for have_mpi4jax in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec", find_spec_with(have_mpi4jax))
        assert resolve(job(), 1000, texts=True, prefers_jax=True).backend == "jax"
        assert resolve(job(), 1000, texts=False, prefers_jax=False).backend == "numpy"
        under_tp = resolve(job(tp=2), 1000, texts=True, prefers_jax=True).backend
        assert under_tp == ("jax" if have_mpi4jax else "numpy")
    explicit = resolve(job(tp=2, backend="jax"), 1000, texts=True, prefers_jax=True)
    assert explicit.backend == "jax"  # asked for: kept
