"""Bad inputs at several ranks (run under `mpiexec -n 2` and `-n 3` by tests/test_run_mpi.py):
every rank runs `hpcinfer.cli.main` in its own process, as a launch would; rank 0 prints
exactly one line, the others nothing; every rank exits with 2; nothing is written.

A bad JSONL line is found by the rank whose share of rows holds it, before any rank
computes, and the lowest bad line is the one named.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from hpcinfer.cli import main
from hpcinfer.errors import JobError
from tests.adversarial import Workspace, edit_config, keep_thread_settings, one_error_line
from tests.mpi.helpers import WORLD, collective


@pytest.fixture
def ws():
    """One workspace for all ranks (they share this file system), made by rank 0."""
    root = WORLD.bcast(tempfile.mkdtemp(prefix="hpcinfer-bad-") if WORLD.rank == 0 else None)
    made = Workspace(Path(root)) if WORLD.rank == 0 else None
    WORLD.Barrier()
    yield made or Workspace.__new__(Workspace)
    WORLD.Barrier()


def bad_lines(ws: Workspace, bad: dict[int, bytes]) -> list[str]:
    lines = ws.corpus.read_bytes().splitlines(keepends=True)
    for at, text in bad.items():
        lines[at - 1] = text + b"\n"
    (ws.root / "bad.jsonl").write_bytes(b"".join(lines))
    return ws.run("gpt2", path=ws.root / "bad.jsonl")


def vocab_outside(ws: Workspace) -> list[str]:
    path = ws.root / "ids.jsonl"
    path.write_bytes(b'{"ids": [1, 2]}\n' * 30 + b'{"ids": [1, 4000]}\n' + b'{"ids": [3]}\n' * 9)
    return ws.run("gpt2", path=path, field="ids")


def ids_then_names(ws: Workspace) -> list[str]:
    """Kept ids that are integers in the first half, texts in the second: at 2 and 3
    ranks no rank sees both kinds; the plan merges what they saw."""
    path = ws.root / "kept.jsonl"
    ids = [i if i < 20 else f"r{i}" for i in range(40)]
    path.write_text(
        "".join(json.dumps({"text": f"row {i}", "id": v}) + "\n" for i, v in enumerate(ids))
    )
    return [*ws.run("gpt2", path=path), "--set", "output.keep=['id']"]


def csv_bad_last(ws: Workspace) -> list[str]:
    path = ws.root / "bad.csv"
    rows = [f'{i},"text, {i}"' for i in range(40)]
    rows[36] = '36,a "quote" inside'
    path.write_text("id,text\n" + "\n".join(rows) + "\n")
    return ws.run("gpt2", path=path)


CASES = {
    "keep-types-differ-between-ranks": (
        ids_then_names,
        ("different types: an integer at /", "kept.jsonl:1 and a text at /", "kept.jsonl:21"),
    ),
    # line 38 is in the last rank's share at -n 2 and -n 3
    "csv-bad-record-last-rank": (csv_bad_last, "bad.csv:38: not valid CSV: a quote inside"),
    # line 35 is in the last rank's share at -n 2 and -n 3
    "jsonl-bad-line-last-rank": (
        lambda ws: bad_lines(ws, {35: b"{oops"}),
        "bad.jsonl:35: not valid JSON",
    ),
    # lines 20 and 35 on different ranks: the lowest is named
    "jsonl-lowest-bad-line": (
        lambda ws: bad_lines(ws, {35: b"{oops", 20: b'{"text": "caf\xe9"}'}),
        "bad.jsonl:20: not valid UTF-8 (byte 14)",
    ),
    "config-zero-heads": (
        lambda ws: (edit_config(ws.gpt2, n_head=0), ws.run("gpt2"))[1],
        "config.json: n_head must be a positive integer; got 0",
    ),
    "job-not-utf8": (
        lambda ws: (
            (ws.root / "j.toml").write_bytes(b"[run]\n\xff = 1\n"),
            ["run", str(ws.root / "j.toml")],
        )[1],
        "j.toml:2: not UTF-8 (byte 1)",
    ),
    "h5-truncated": (
        lambda ws: (ws.digits.write_bytes(ws.digits.read_bytes()[:9000]), ws.run("mlp"))[1],
        "digits.h5: HDF5 cannot open it",
    ),
    "ids-outside-vocab-mid-run": (
        vocab_outside,
        "ids.jsonl:31: token id 4000 is outside the vocabulary",
    ),
}


@pytest.mark.parametrize("name", CASES)
@collective
def test_bad_input_is_one_line_from_rank_0(name, ws, capsys, monkeypatch):
    keep_thread_settings(monkeypatch)
    make, expect = CASES[name]
    args = WORLD.bcast(make(ws) if WORLD.rank == 0 else None)
    before = WORLD.bcast(ws.snapshot() if WORLD.rank == 0 else None)
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    WORLD.Barrier()  # before any assertion: a rank that fails must not skip it
    assert code == 2, captured.err
    if WORLD.rank == 0:
        line = one_error_line(captured.err, captured.out)
        for part in (expect,) if isinstance(expect, str) else expect:
            assert part in line, line
        assert ws.leftovers() == [] and ws.snapshot() == before
    else:
        assert captured.err == "" and captured.out == "", f"rank {WORLD.rank} spoke"


@collective
def test_every_rank_checks_only_its_share(ws, monkeypatch):
    """validate() sees exactly split_range's rows: a bad line found by the rank that holds
    it alone (the message says which rank, unless all failed)."""
    from hpcinfer.io.text_input import TextRows
    from hpcinfer.parallel.partition import split_range

    if WORLD.rank == 0:
        bad_lines(ws, {35: b"{oops"})
    WORLD.Barrier()
    path = Path(WORLD.bcast(str(ws.root / "bad.jsonl") if WORLD.rank == 0 else None))
    rows = TextRows(path, "jsonl")
    mine = split_range(rows.n_rows, WORLD.rank, WORLD.size)
    failed = True
    try:
        rows.validate(mine)
        failed = False
    except JobError as e:
        assert "bad.jsonl:35:" in str(e)
    verdicts = WORLD.allgather(failed)
    assert verdicts == [34 in split_range(rows.n_rows, r, WORLD.size) for r in range(WORLD.size)]
    assert np.sum(verdicts) == 1
