"""Tensor-parallel arithmetic and sharded loading, without MPI."""

from __future__ import annotations

import numpy as np
import pytest

from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_file import SafetensorsFile
from hpcinfer.models.mlp import LayerSplit, MLPConfig, layer_splits
from hpcinfer.models.shards import read_table
from hpcinfer.parallel.grid import check_tp, grid_coords
from hpcinfer.parallel.partition import split_range, split_sizes
from tests.test_mlp import make_mlp


def test_megatron_pairing_and_the_gathered_odd_last_layer():
    assert layer_splits((8, 6, 4, 2, 1), 2) == (
        LayerSplit("column"),
        LayerSplit("row"),
        LayerSplit("column"),
        LayerSplit("row"),
    )
    assert layer_splits((64, 50, 30, 10), 3) == (
        LayerSplit("column"),
        LayerSplit("row"),
        LayerSplit("column", (4, 3, 3)),
    )


def test_shards_cover_a_dimension():
    assert split_sizes(50, 4) == [13, 13, 12, 12]
    assert [split_range(10, r, 3) for r in range(3)] == [range(4), range(4, 7), range(7, 10)]


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
def test_shards_reassemble_the_full_weights(tmp_path, tp):
    sizes = [9, 13, 7, 5]
    tensors = make_mlp(tmp_path / "m", sizes)
    config = MLPConfig(tuple(sizes), "relu", "softmax")
    weights = SafetensorsFile(tmp_path / "m" / "model.safetensors")
    shards = [read_table(weights, config.shard_table(r, tp), "float32") for r in range(tp)]
    for i, split in enumerate(layer_splits(tuple(sizes), tp)):
        w, b = f"layers.{i}.weight", f"layers.{i}.bias"
        w_full, b_full = tensors[w], tensors[b]
        axis = 1 if split.kind == "column" else 0  # held transposed: (in, out)
        np.testing.assert_array_equal(np.concatenate([s[w] for s in shards], axis), w_full.T)
        if split.kind == "column":
            np.testing.assert_array_equal(np.concatenate([s[b] for s in shards]), b_full)
        else:
            for s in shards:
                np.testing.assert_array_equal(s[b], b_full)
    held = sum(a.nbytes for s in shards for k, a in s.items() if k.endswith("weight"))
    assert held == sum(t.nbytes for k, t in tensors.items() if k.endswith("weight"))


def test_grid_coordinates():
    assert [grid_coords(r, 2) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_tp_must_divide_the_ranks_and_fit_the_model():
    check_tp(4, 2)
    with pytest.raises(JobError, match=r"run\.tp = 2 does not divide the 3 rank"):
        check_tp(3, 2)
    config = MLPConfig((8, 3, 5, 2), "relu", "softmax")
    config.check_tp(3, "config.json")  # the output layer's 2 columns over 3 ranks is fine
    with pytest.raises(JobError, match="larger than layer 0's 3 outputs"):
        config.check_tp(4, "config.json")
