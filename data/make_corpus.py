"""A real English corpus, from the Python standard library's own documentation strings.

    python data/make_corpus.py        # rewrites data/corpus.jsonl

Every paragraph of the docstrings of a fixed list of stdlib modules and their public
functions and classes, whitespace-normalised, de-duplicated, in a fixed order: real,
varied text (a few words to a few hundred) under the PSF licence, with no download.
The committed file is the canonical corpus; another Python version would produce a
slightly different one.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = (
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "math",
    "mimetypes",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "shlex",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
    "zlib",
)


def paragraphs(doc: str | None):
    for block in re.split(r"\n\s*\n", doc or ""):
        text = " ".join(block.split())
        if len(text) >= 20 and not text.startswith((">>>", "...")):
            yield text


def main() -> None:
    seen, rows = set(), []
    for name in MODULES:
        module = importlib.import_module(name)
        objects = [module] + [
            obj
            for attr, obj in sorted(vars(module).items())
            if not attr.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", "") == module.__name__
        ]
        for obj in objects:
            for text in paragraphs(inspect.getdoc(obj)):
                if text not in seen:
                    seen.add(text)
                    rows.append({"id": len(rows), "source": f"{name}", "text": text})
    with (HERE / "corpus.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"corpus.jsonl: {len(rows)} texts from {len(MODULES)} modules")


if __name__ == "__main__":
    main()
