"""A workspace of things a job reads, copied into a temporary folder so that a test can
break exactly one of them (tests/test_adversarial.py, tests/mpi/test_bad_input_mpi.py),
and the checks every bad input must pass: one line, exit 2, nothing written, nothing
changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcinfer.parallel.runtime import THREAD_VARS
from tests.conftest import DATA, write_job

CORPUS_LINES = 40
NAN = json.loads("NaN")
LONG = b'{"text": "' + b"word " * 300_000 + b'", "oops": }'  # 1.5 MB: streamed, then bad


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Workspace], list[str]]  # break one thing; the command line to run
    expect: str  # in the one line: the file and the key, line or tensor
    memory: int | None = None  # pretend this much memory is available


class Workspace:
    """Copies of tiny-gpt2, digits-mlp, digits.h5 and the corpus's first lines in `root`;
    job files written there; outputs go to root/out (which must never appear)."""

    def __init__(self, root: Path):
        self.root = root
        self.gpt2 = Path(shutil.copytree(DATA / "models" / "tiny-gpt2", root / "tiny-gpt2"))
        self.mlp = Path(shutil.copytree(DATA / "models" / "digits-mlp", root / "digits-mlp"))
        self.digits = Path(shutil.copy(DATA / "digits.h5", root / "digits.h5"))
        with (DATA / "corpus.jsonl").open("rb") as f:
            lines = [f.readline() for _ in range(CORPUS_LINES)]
        self.corpus = root / "corpus.jsonl"
        self.corpus.write_bytes(b"".join(lines))
        self.out = root / "out" / "result.h5"

    def job(self, model: str = "mlp", name: str = "job.toml", **inputs: object) -> Path:
        """A job over digits.h5 (mlp) or the corpus (gpt2); `inputs` override [input]."""
        if model == "mlp":
            section = {"path": str(self.digits), "dataset": "x"}
        else:
            section = {"path": str(self.corpus), "field": "text"}
        return write_job(
            self.root / name,
            model={"path": str(self.mlp if model == "mlp" else self.gpt2)},
            input={**section, **{k: str(v) for k, v in inputs.items()}},
            output={"path": str(self.out)},
            run={"backend": "numpy", "batch_size": 16, "chunk_size": 16},
        )

    def run(self, model: str = "mlp", *more: str, **inputs: object) -> list[str]:
        return ["run", str(self.job(model, **inputs)), "--quiet", *more]

    def lines(self, bad: bytes, at: int = 3, name: str = "bad.jsonl", **inputs) -> list[str]:
        """A gpt2 run over the corpus with line `at` (1-based) replaced by `bad`."""
        lines = self.corpus.read_bytes().splitlines(keepends=True)
        lines[at - 1] = bad + b"\n"
        path = self.root / name
        path.write_bytes(b"".join(lines))
        return self.run("gpt2", path=path, **inputs)

    def h5(self, name: str = "in.h5", **datasets: object) -> Path:
        path = self.root / name
        with h5py.File(path, "w") as f:
            for key, value in datasets.items():
                if callable(value):
                    value(f, key)
                else:
                    f[key] = value
        return path

    def snapshot(self) -> dict[str, str]:
        """Every file's content hash (symbolic links by their target)."""
        found = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_symlink():
                found[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        return found

    def leftovers(self) -> list[str]:
        """Anything a run may have made: the output folder, .partial or .lock files."""
        made = [str(p) for p in self.root.rglob("*") if p.name.endswith((".partial", ".lock"))]
        return made + ([str(self.root / "out")] if (self.root / "out").exists() else [])


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))  # NaN is written as JSON's NaN literal


def poke(folder: Path, tensor: str, value: float) -> None:
    """Overwrite the first element of an F32 tensor of model.safetensors."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin = 8 + n + json.loads(data[8 : 8 + n])[tensor]["data_offsets"][0]
    data[begin : begin + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def vlen(dtype: object, rows: list) -> object:
    """A variable-length dataset maker for Workspace.h5."""

    def make(f: h5py.File, key: str) -> None:
        d = f.create_dataset(key, (len(rows),), dtype=h5py.vlen_dtype(dtype))
        for i, row in enumerate(rows):
            d[i] = np.asarray(row, dtype)

    return make


def keep_thread_settings(monkeypatch) -> None:
    """A run in this process sets thread variables and may pin cores: undo it after."""
    monkeypatch.setenv("HPCINFER_BIND", "0")
    for var in THREAD_VARS:
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)


def one_error_line(err: str, out: str) -> str:
    """The single line a bad input must print; anything else fails the caller."""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("hpcinfer: error: "), lines[0]
    assert "Traceback" not in err + out, (err, out)
    # stdout holds at most the run's settings line (a bad row met mid-run comes after it)
    assert all(line.startswith("hpcinfer: ") for line in out.splitlines()), out
    assert "error" not in out, out
    return lines[0]


# ---- ways to break one thing (tests/test_adversarial.py's cases) ----


def job_text(text: bytes | str) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        path = ws.root / "job.toml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["run", str(path)]

    return make


def with_set(*overrides: str, model: str = "mlp") -> Callable[[Workspace], list[str]]:
    """A good job with `--set` overrides ({root}: the workspace folder)."""

    def make(ws: Workspace) -> list[str]:
        args = ws.run(model)
        for o in overrides:
            args += ["--set", o.format(root=ws.root, job=ws.root / "job.toml", ws=ws)]
        return args

    return make


def loop(ws: Workspace) -> list[str]:
    os.symlink(ws.root / "b", ws.root / "a")
    os.symlink(ws.root / "a", ws.root / "b")
    return ws.run("mlp", "--set", f"model.path='{ws.root / 'a' / 'model'}'")


def bad_h5(dataset: str) -> Callable[[Workspace], list[str]]:
    """The mlp job on `dataset` of the HDF5 file of test_run_mpi's old bad-input cases."""

    def make(ws: Workspace) -> list[str]:
        path = ws.h5(
            "bad.h5",
            x=np.zeros((10, 63), np.float32),
            s=np.array([b"a", b"b"]),
            v=np.array([b"ab"], dtype="V2"),
            g=lambda f, key: f.create_group(key),
        )
        return ws.run("mlp", path=path, dataset=dataset)

    return make


def h5_run(model: str, **datasets) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        return ws.run(model, path=ws.h5(**datasets), dataset=next(iter(datasets)))

    return make


def damaged(fn: Callable[[Workspace], None], *args: str) -> Callable[[Workspace], list[str]]:
    """Break the workspace with `fn`, then run the gpt2 job (or `args`)."""

    def make(ws: Workspace) -> list[str]:
        fn(ws)
        return [a.format(ws=ws) for a in args] if args else ws.run("gpt2")

    return make


def shrink(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def header_garbage(ws: Workspace) -> None:
    path = ws.gpt2 / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"{not json!!!"
    path.write_bytes(bytes(data))


def vds_missing_source(ws: Workspace) -> list[str]:
    src = ws.h5("src.h5", x=np.ones((10, 64), np.float32))
    layout = h5py.VirtualLayout(shape=(10, 64), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(src), "x", shape=(10, 64))
    with h5py.File(ws.root / "vds.h5", "w") as f:
        f.create_virtual_dataset("x", layout)
    src.unlink()
    return ws.run("mlp", path=ws.root / "vds.h5")


def ids_lines(bad: bytes) -> Callable[[Workspace], list[str]]:
    """A gpt2 run over token-id lines, the third one `bad`."""

    def make(ws: Workspace) -> list[str]:
        path = ws.root / "bad.jsonl"
        path.write_bytes(b'{"ids": [5, 6, 7]}\n' * 2 + bad + b"\n" + b'{"ids": [1]}\n' * 20)
        return ws.run("gpt2", path=path, field="ids")

    return make


def deep_json(n: int) -> bytes:
    return b'{"text": ' + b"[" * n + b"]" * n + b"}"


def h5_del_attr(path, key: str) -> None:
    with h5py.File(path, "a") as f:
        del f.attrs[key]


def h5_set_attr(path, key: str, value: str) -> None:
    with h5py.File(path, "a") as f:
        f.attrs[key] = value
