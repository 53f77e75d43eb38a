"""References for the sentence-transformers options the encoder fixtures leave at their
defaults: pooling that leaves the prompt out, do_lower_case, Dense with other
activations and residual connections.

    /work/refvenv/bin/python data/make_encoder_extras.py     # from the repository root

(a venv with torch, sentence-transformers and h5py; the committed file was made with
torch 2.13.0+cpu, transformers 5.25.0, sentence-transformers 6.3.0.) Each variant is a
committed fixture folder (data/fixtures/, data/make_encoder_fixtures.py) with a few files
replaced; data/fixtures/encoder-extras.h5 holds, per variant, the replaced files (group
attribute `files`: JSON {relative path: text}), the Dense weights it adds (datasets
`weights/<module folder>/<tensor name>`, written as model.safetensors there), and
`embeddings`: SentenceTransformer(folder).encode(texts of encoder-texts.jsonl,
batch_size=8), default prompt applied. tests/test_encoder_options.py rebuilds each folder
the same way and compares.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
OUT = FIXTURES / "encoder-extras.h5"
ALL_MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


def dense_modules(kinds: list[str]) -> str:
    base = "sentence_transformers.base.modules."
    types = {
        "Transformer": base + "transformer.Transformer",
        "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "Dense": base + "dense.Dense",
        "Normalize": base + "normalize.Normalize",
    }
    paths = {"Transformer": ""}
    modules = []
    for i, kind in enumerate(kinds):
        path = paths.get(kind, f"{i}_{kind}")
        modules.append({"idx": i, "name": str(i), "path": path, "type": types[kind]})
    return json.dumps(modules, indent=2)


def variants() -> dict[str, dict]:
    rng = np.random.default_rng(15)
    sbert = json.loads((FIXTURES / "tiny-distilbert" / "sentence_bert_config.json").read_text())
    return {
        # every mode at once (a 6.x list), the prompt "query: " left out of pooling
        "prompt-excluded": {
            "base": "st-prompts",
            "files": {
                "1_Pooling/config.json": json.dumps(
                    {"embedding_dimension": 32, "pooling_mode": ALL_MODES, "include_prompt": False}
                )
            },
            "weights": {},
        },
        # the cased DistilBERT, lower-cased by sentence-transformers (a Lowercase normalizer)
        "do-lower-case": {
            "base": "tiny-distilbert",
            "files": {"sentence_bert_config.json": json.dumps({**sbert, "do_lower_case": True})},
            "weights": {},
        },
        # Dense 32 -> 16 ReLU with a projected residual, Dense 16 -> 16 GELU without bias
        # with a plain residual, Dense 16 -> 8 Sigmoid, Dense 8 -> 8 Identity, Normalize
        "dense-chain": {
            "base": "st-dense-normalize",
            "files": {
                "modules.json": dense_modules(
                    ["Transformer", "Pooling", "Dense", "Dense", "Dense", "Dense", "Normalize"]
                ),
                "2_Dense/config.json": json.dumps(
                    {
                        "in_features": 32,
                        "out_features": 16,
                        "bias": True,
                        "activation_function": "torch.nn.modules.activation.ReLU",
                        "use_residual": True,
                    }
                ),
                "3_Dense/config.json": json.dumps(
                    {
                        "in_features": 16,
                        "out_features": 16,
                        "bias": False,
                        "activation_function": "torch.nn.modules.activation.GELU",
                        "use_residual": True,
                    }
                ),
                "4_Dense/config.json": json.dumps(
                    {
                        "in_features": 16,
                        "out_features": 8,
                        "bias": True,
                        "activation_function": "torch.nn.modules.activation.Sigmoid",
                    }
                ),
                "5_Dense/config.json": json.dumps(
                    {
                        "in_features": 8,
                        "out_features": 8,
                        "bias": True,
                        "activation_function": "torch.nn.modules.linear.Identity",
                    }
                ),
                "6_Normalize/config.json": "{}",
            },
            "weights": {
                "2_Dense": {
                    "linear.weight": rng.normal(0, 0.3, (16, 32)),
                    "linear.bias": rng.normal(0, 0.3, 16),
                    "residual.weight": rng.normal(0, 0.3, (16, 32)),
                },
                "3_Dense": {"linear.weight": rng.normal(0, 0.3, (16, 16))},
                "4_Dense": {
                    "linear.weight": rng.normal(0, 0.3, (8, 16)),
                    "linear.bias": rng.normal(0, 0.3, 8),
                },
                "5_Dense": {
                    "linear.weight": rng.normal(0, 0.3, (8, 8)),
                    "linear.bias": rng.normal(0, 0.3, 8),
                },
            },
        },
    }


def build(root: Path, name: str, variant: dict) -> Path:
    """The variant's folder: its base fixture with the files and weights replaced."""
    from safetensors.numpy import save_file

    folder = root / name
    shutil.copytree(FIXTURES / variant["base"], folder)
    for stale in ("2_Dense", "3_Normalize"):
        if variant["weights"] and (folder / stale).exists():
            shutil.rmtree(folder / stale)
    for relative, text in variant["files"].items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    for module, tensors in variant["weights"].items():
        arrays = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        save_file(arrays, str(folder / module / "model.safetensors"))
    return folder


def main() -> None:
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    lines = (FIXTURES / "encoder-texts.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    with tempfile.TemporaryDirectory() as tmp, h5py.File(OUT, "w") as out:
        out.attrs["texts"] = "data/fixtures/encoder-texts.jsonl, field text"
        out.attrs["sentence_transformers"] = str(sentence_transformers.__version__)
        out.attrs["transformers"] = str(transformers.__version__)
        out.attrs["torch"] = str(torch.__version__)
        for name, variant in variants().items():
            folder = build(Path(tmp), name, variant)
            model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
            emb = model.encode(texts, batch_size=8, convert_to_numpy=True)
            group = out.create_group(name)
            group.attrs["base"] = variant["base"]
            group.attrs["files"] = json.dumps(variant["files"])
            group["embeddings"] = np.asarray(emb, np.float32)
            for module, tensors in variant["weights"].items():
                for key, value in tensors.items():
                    group[f"weights/{module}/{key}"] = np.asarray(value, np.float32)
            print(name, emb.shape)


if __name__ == "__main__":
    main()
