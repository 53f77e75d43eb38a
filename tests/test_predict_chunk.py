"""A chunk's outputs go to its file batch by batch: memory does not grow with chunk_size."""

from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest

from hpcinfer.backends import get_backend
from hpcinfer.checkpoint.chunk_files import ChunkStore
from hpcinfer.compute import compute_chunk
from hpcinfer.io.hdf5_input import open_hdf5
from hpcinfer.models import load_model
from hpcinfer.schedule.chunks import Chunk
from tests.test_mlp import make_mlp

ROWS, WIDTH, BATCH = 4096, 2048, 128  # a chunk's outputs: 32 MiB; one batch's: 1 MiB


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chunk")
    make_mlp(folder / "m", [4, 8, WIDTH], output_activation="identity")
    x = np.random.default_rng(0).standard_normal((ROWS, 4)).astype(np.float32)
    with h5py.File(folder / "x.h5", "w") as f:
        f["x"] = x
    model = load_model(folder / "m", get_backend("numpy", "float32"), "float32")
    return folder, model, x


@pytest.mark.parametrize("writes", [True, False], ids=["writer", "tp-follower"])
def test_a_chunk_never_holds_its_outputs_whole(tmp_path, setup, writes):
    folder, model, x = setup
    reader = open_hdf5(folder / "x.h5", "x")
    store = ChunkStore(tmp_path)
    sink = store.create(0, ROWS, model.outputs) if writes else None
    tracemalloc.start()
    try:
        compute_chunk(model, reader, Chunk(0, 0, ROWS), BATCH, sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        reader.close()
    whole = ROWS * WIDTH * 4
    assert peak < whole / 8, f"peak {peak / 2**20:.1f} MiB for a {whole / 2**20:.0f} MiB chunk"
    if writes:
        sink.commit()
        want = np.concatenate(
            [model.predict(x[i : i + BATCH])["outputs"] for i in range(0, ROWS, BATCH)]
        )
        np.testing.assert_array_equal(store.read(0)["outputs"], want)
