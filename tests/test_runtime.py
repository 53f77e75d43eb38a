"""Threads and pinning per rank, and where JAX keeps what it compiled."""

from __future__ import annotations

import os
import subprocess
import sys

from hpcinfer.parallel.runtime import pinned_cores, threads_per_rank
from tests.conftest import ROOT


def test_threads_are_the_node_cores_shared_by_its_ranks():
    assert threads_per_rank(16, 4) == 4
    assert threads_per_rank(2, 3) == 1  # oversubscribed: never zero
    assert threads_per_rank(2, 1) == 2
    assert threads_per_rank(16, 4, requested=7) == 7


def test_pinning_gives_each_local_rank_its_own_cores():
    cores = list(range(8))
    assert [pinned_cores(cores, r, 2) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert pinned_cores([0, 1], 2, 1) == [0]  # oversubscribed ranks wrap around


def test_jax_compilation_cache_folder(monkeypatch, tmp_path):
    from hpcinfer.backends.jax_backend import compilation_cache_dir

    monkeypatch.setenv("HPCINFER_JAX_CACHE", str(tmp_path / "c"))
    assert compilation_cache_dir() == tmp_path / "c"
    monkeypatch.setenv("HPCINFER_JAX_CACHE", "")
    assert compilation_cache_dir() is None  # turned off
    monkeypatch.delenv("HPCINFER_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache_dir() == tmp_path / "xdg" / "hpcinfer" / "jax"


def test_a_jax_run_fills_the_compilation_cache(tmp_path):
    """What one run compiles, the next loads: the cache folder gets the compiled forward."""
    script = (
        "from pathlib import Path\n"
        "from hpcinfer.backends import get_backend\n"
        "from hpcinfer.models import load_model\n"
        "m = load_model(Path('data/models/tiny-gpt2'), get_backend('jax', 'float32'), 'float32')\n"
        "m.predict_items(['a text of a few words'], 512)\n"
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "HPCINFER_JAX_CACHE": str(cache)}
    cmd = [sys.executable, "-c", script]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert any(cache.iterdir())
