"""tests/test_adversarial.py's cases for model folders (tiny-gpt2 and digits-mlp, copied,
then one thing broken) and for `report` / `inspect` on damaged or foreign files."""

from __future__ import annotations

import os

from tests.adversarial import (
    NAN,
    Case,
    damaged,
    edit_config,
    h5_del_attr,
    h5_set_attr,
    header_garbage,
    poke,
    shrink,
)

MODEL_CASES = [
    Case(
        "config-not-json",
        damaged(lambda ws: (ws.gpt2 / "config.json").write_text("{")),
        "tiny-gpt2/config.json: not valid JSON",
    ),
    Case(
        "config-nested-deep",
        damaged(lambda ws: (ws.gpt2 / "config.json").write_text("[" * 100000)),
        "tiny-gpt2/config.json: not valid JSON",
    ),
    Case(
        "config-model-type",
        damaged(lambda ws: edit_config(ws.gpt2, model_type="gpt3")),
        "config.json: unsupported model_type 'gpt3'",
    ),
    Case(
        "gpt2-zero-heads",
        damaged(lambda ws: edit_config(ws.gpt2, n_head=0)),
        "config.json: n_head must be a positive integer; got 0",
    ),
    Case(
        "gpt2-negative-layers",
        damaged(lambda ws: edit_config(ws.gpt2, n_layer=-2)),
        "config.json: n_layer must be a positive integer; got -2",
    ),
    Case(
        "gpt2-zero-vocab",
        damaged(lambda ws: edit_config(ws.gpt2, vocab_size=0)),
        "config.json: vocab_size must be a positive integer",
    ),
    Case(
        "gpt2-hidden-vs-heads",
        damaged(lambda ws: edit_config(ws.gpt2, n_embd=100)),
        "config.json: n_embd 100 is not a multiple of n_head 12",
    ),
    Case(
        "gpt2-positions-string",
        damaged(lambda ws: edit_config(ws.gpt2, n_positions="128")),
        "config.json: n_positions must be a positive integer; got '128'",
    ),
    Case(
        "gpt2-eps-nan",
        damaged(lambda ws: edit_config(ws.gpt2, layer_norm_epsilon=NAN)),
        "config.json: layer_norm_epsilon must be a number in (0, 1)",
    ),
    Case(
        "gpt2-flag-string",
        damaged(lambda ws: edit_config(ws.gpt2, tie_word_embeddings="false")),
        "config.json: tie_word_embeddings must be true or false",
    ),
    Case(
        "mlp-zero-width",
        lambda ws: (edit_config(ws.mlp, layer_sizes=[64, 0, 10]), ws.run("mlp"))[1],
        "digits-mlp/config.json: layer_sizes must be a list of >= 2 positive integers",
    ),
    Case(
        "mlp-activation-list",
        lambda ws: (edit_config(ws.mlp, activation=["relu"]), ws.run("mlp"))[1],
        "config.json: activation ['relu'] is not supported",
    ),
    Case(
        "mlp-shape-vs-config",
        lambda ws: (edit_config(ws.mlp, layer_sizes=[64, 40, 30, 10]), ws.run("mlp"))[1],
        "layers.0.weight has shape (50, 64), expected (40, 64) from config.json",
    ),
    Case(
        "mlp-nan-weight",
        lambda ws: (poke(ws.mlp, "layers.1.weight", NAN), ws.run("mlp"))[1],
        "model.safetensors: tensor 'layers.1.weight': 1 of 1500 values are NaN or Inf",
    ),
    Case(
        "gpt2-inf-weight",
        damaged(lambda ws: poke(ws.gpt2, "transformer.h.1.mlp.c_fc.weight", float("inf"))),
        "tensor 'transformer.h.1.mlp.c_fc.weight': 1 of",
    ),
    Case("weights-header-garbage", damaged(header_garbage), "model.safetensors: bad JSON header"),
    Case(
        "weights-truncated",
        damaged(lambda ws: shrink(ws.gpt2 / "model.safetensors", 0.7)),
        "model.safetensors: tensor 'transformer.wpe.weight': data offsets",
    ),
    Case(
        "weights-missing",
        damaged(lambda ws: (ws.gpt2 / "model.safetensors").unlink()),
        "tiny-gpt2: no model.safetensors",
    ),
    Case(
        "tokenizer-garbage",
        damaged(lambda ws: (ws.gpt2 / "tokenizer.json").write_text('{"model": 3')),
        "tiny-gpt2/tokenizer.json",
    ),
    # ---- report and inspect on damaged or foreign files ----
    Case(
        "inspect-header-garbage",
        damaged(header_garbage, "inspect", "{ws.gpt2}"),
        "tiny-gpt2/model.safetensors",
    ),
    Case(
        "inspect-zero-heads",
        damaged(lambda ws: edit_config(ws.gpt2, n_head=0), "inspect", "{ws.gpt2}"),
        "config.json: n_head must be a positive integer",
    ),
    Case(
        "inspect-a-file",
        lambda ws: ["inspect", str(ws.digits)],
        "digits.h5: a file, but not a .gguf file; a model is a folder",
    ),
    Case(
        "inspect-shape-vs-config",
        lambda ws: (edit_config(ws.mlp, layer_sizes=[64, 40, 30, 10]), ["inspect", str(ws.mlp)])[1],
        "layers.0.weight has shape (50, 64), expected (40, 64)",
    ),
    Case(
        "report-truncated",
        damaged(lambda ws: shrink(ws.root / "done.h5"), "report", "{ws.root}/done.h5"),
        "done.h5: cannot read the run's output file",
    ),
    Case(
        "report-random-file",
        lambda ws: [
            "report",
            str((ws.root / "r.h5", (ws.root / "r.h5").write_bytes(os.urandom(999)))[0]),
        ],
        "r.h5: not an HDF5 file",
    ),
    Case(
        "report-foreign-h5", lambda ws: ["report", str(ws.digits)], "digits.h5: no run/chunks log"
    ),
    Case(
        "report-missing-attr",
        damaged(
            lambda ws: h5_del_attr(ws.root / "done.h5", "layout"), "report", "{ws.root}/done.h5"
        ),
        "done.h5: not a complete hpcinfer output (missing layout)",
    ),
    Case(
        "report-damaged-attr",
        damaged(
            lambda ws: h5_set_attr(ws.root / "done.h5", "rank_metrics", "[{"),
            "report",
            "{ws.root}/done.h5",
        ),
        "done.h5: its run record is damaged",
    ),
    Case(
        "report-no-output-yet",
        lambda ws: ["report", str(ws.job("mlp"))],
        "result.h5: no output file",
    ),
]
