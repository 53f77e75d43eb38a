"""Bad inputs, as users and adversaries make them: broken job files, inputs (HDF5, JSONL,
text; compressed streams, CSV/TSV, JSON arrays, Parquet, kept columns, output choices and
output paths that cannot be made: tests/adversarial_formats.py) and model folders
(tiny-gpt2 and digits-mlp, copied, then one thing broken), and
`report` / `inspect` on damaged files.

Every case must end the same way: exit code 2, exactly one line on stderr starting
`hpcinfer: error:` that names the file and key, line or tensor at fault, no traceback,
no output file and no .partial or .lock left, and every file it was given unchanged.
Cases run in this process (`hpcinfer.cli.main`, a one-rank run); tests/mpi/
test_bad_input_mpi.py runs some at 2 and 3 ranks.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from hpcinfer.cli import main
from tests.adversarial import (
    LONG,
    Case,
    Workspace,
    bad_h5,
    damaged,
    deep_json,
    h5_run,
    ids_lines,
    job_text,
    keep_thread_settings,
    loop,
    one_error_line,
    shrink,
    vds_missing_source,
    vlen,
    with_set,
)
from tests.adversarial_formats import FORMAT_CASES
from tests.adversarial_models import MODEL_CASES
from tests.conftest import DIGITS_JOB

CASES = [
    # ---- job files ----
    Case(
        "job-not-utf8",
        job_text(b'[model]\npath = "x"\n# caf\xe9\n'),
        "job.toml:3: not UTF-8 (byte 6)",
    ),
    Case("job-not-toml", job_text("[model\npath = 1\n"), "job.toml: not valid TOML"),
    Case("job-nested-deep", job_text("[run]\nx = " + "[" * 5000 + "]" * 5000), "nested too deeply"),
    Case("job-unknown-section", job_text("[modle]\npath = 'x'\n"), "unknown section [modle]"),
    Case("job-missing-key", job_text("[run]\nbatch_size = 4\n"), "missing required key model.path"),
    Case(
        "job-not-found",
        lambda ws: ["run", str(ws.root / "none.toml")],
        "none.toml: job file not found",
    ),
    Case(
        "job-loop",
        lambda ws: (os.symlink("j.toml", ws.root / "j.toml"), ["run", str(ws.root / "j.toml")])[1],
        "j.toml: job file: ",
    ),
    Case("set-unknown-key", with_set("run.colour=1"), "--set run.colour: unknown key"),
    Case(
        "set-wrong-type", with_set("run.batch_size='8'"), "--set run.batch_size must be an integer"
    ),
    Case("set-negative", with_set("run.batch_size=-1"), "run.batch_size must be >= 1"),
    Case("set-cupy", with_set("run.backend='cupy'"), "backend 'cupy'"),
    Case(
        "path-nul",
        with_set('input.path="in\\u0000.h5"'),
        "input.path: the path 'in\\x00.h5' contains a NUL byte",
    ),
    Case(
        "path-no-user",
        with_set("model.path='~nosuchuser_hpcinfer/m'"),
        "~nosuchuser_hpcinfer in '~nosuchuser_hpcinfer/m': no such user",
    ),
    Case("path-loop", loop, "/a/model runs into a loop of symbolic links"),
    Case("model-nowhere", with_set("model.path='nowhere'"), "model folder not found"),
    Case("output-is-folder", with_set("output.path='{root}'"), "is a folder"),
    Case("output-is-input", with_set("output.path='{ws.digits}'"), "is a file this job reads"),
    Case("tp-too-large", with_set("run.tp=3"), "run.tp = 3 does not divide the 1 rank(s)"),
    # ---- HDF5 inputs ----
    Case("h5-missing", with_set("input.path='nope.h5'"), "nope.h5: input file not found"),
    Case("h5-no-dataset", bad_h5("y"), "dataset 'y' not found"),
    Case("h5-group", bad_h5("g"), "'g' is a group, not a dataset"),
    Case("h5-strings-for-mlp", bad_h5("s"), "numeric rows (HDF5), but input.path"),
    Case("h5-opaque", bad_h5("v"), "bad.h5:v has dtype |V2; expected numbers, strings or"),
    Case("h5-row-shape", bad_h5("x"), "bad.h5:x rows have shape (63,) but the model"),
    Case(
        "h5-job-as-hdf5",
        with_set("input.path='{job}'", "input.format='hdf5'"),
        "job.toml: not an HDF5 file",
    ),
    Case(
        "h5-text-for-mlp",
        with_set("input.path='{job}'", "input.format='text'"),
        "reads numeric rows (HDF5), but input.path",
    ),
    Case(
        "h5-truncated",
        lambda ws: (shrink(ws.digits), ws.run("mlp"))[1],
        "digits.h5: HDF5 cannot open it",
    ),
    Case(
        "h5-random-bytes",
        lambda ws: ws.run(
            "mlp", path=(ws.root / "r.h5", (ws.root / "r.h5").write_bytes(os.urandom(4096)))[0]
        ),
        "r.h5: not an HDF5 file",
    ),
    Case(
        "h5-2d-strings",
        h5_run("gpt2", t=np.array([[b"a", b"b"]] * 3)),
        "in.h5:t is a 2-D dataset of texts",
    ),
    Case(
        "h5-not-utf8",
        h5_run("gpt2", t=np.array([b"fine", b"caf\xe9"])),
        "in.h5:t[1]: not valid UTF-8 (byte 4)",
    ),
    Case(
        "h5-ids-beyond-int64",
        h5_run("gpt2", t=vlen(np.uint64, [[1, 2], [2**64 - 1]])),
        "in.h5:t[1]: token id 18446744073709551615 does not fit int64",
    ),
    Case(
        "h5-ids-outside-vocab",
        h5_run("gpt2", t=vlen(np.int64, [[1, 2], [5000]])),
        "in.h5:t[1]: token id 5000 is outside the vocabulary",
    ),
    Case(
        "h5-batch-over-memory",
        lambda ws: ws.run("mlp"),
        "digits.h5:x: a batch of 16 rows of shape (64,) float32 needs",
        memory=1000,
    ),
    Case("h5-vds-missing-source", vds_missing_source, "vds.h5:x is a virtual dataset whose source"),
    # ---- JSONL and text inputs ----
    Case(
        "jsonl-not-json",
        lambda ws: ws.lines(b"{oops"),
        "bad.jsonl:3: not valid JSON: Expecting property name",
    ),
    Case(
        "jsonl-not-utf8",
        lambda ws: ws.lines(b'{"text": "caf\xe9"}', at=5),
        "bad.jsonl:5: not valid UTF-8 (byte 14)",
    ),
    Case(
        "jsonl-empty-line",
        lambda ws: ws.lines(b"", at=40),
        "bad.jsonl:40: not valid JSON: Expecting value",
    ),
    Case(
        "jsonl-nested-deep",
        lambda ws: ws.lines(deep_json(100_000)),
        "bad.jsonl:3: not valid JSON: nested too deeply",
    ),
    Case(
        "jsonl-huge-int",
        lambda ws: ws.lines(b'{"text": "a", "n": ' + b"9" * 5000 + b"}"),
        "bad.jsonl:3: not valid JSON",
    ),
    Case(
        "jsonl-lone-surrogate",
        lambda ws: ws.lines(b'{"text": "half \\ud83d of it"}'),
        "bad.jsonl:3: field 'text' holds a lone surrogate",
    ),
    Case(
        "jsonl-no-field",
        lambda ws: ws.lines(b'{"txet": "typo"}'),
        "bad.jsonl:3: field 'text' (input.field) must be a text or a list of token ids "
        "(integers); got nothing",
    ),
    Case(
        "jsonl-field-number",
        lambda ws: ws.lines(b'{"text": 42}'),
        "bad.jsonl:3: field 'text' (input.field) must be a text",
    ),
    Case(
        "jsonl-ids-beyond-int64",
        ids_lines(b'{"ids": [1, 99999999999999999999]}'),
        "bad.jsonl:3: token id 99999999999999999999 in field 'ids' does not fit int64",
    ),
    Case(
        "jsonl-ids-outside-vocab",
        ids_lines(b'{"ids": [1, 1001]}'),
        "bad.jsonl:3: token id 1001 is outside the vocabulary",
    ),
    Case(
        "jsonl-long-line-bad",
        lambda ws: ws.lines(LONG, at=7),
        "bad.jsonl:7: not valid JSON: Expecting value",
    ),
    Case(
        "text-not-utf8",
        lambda ws: ws.run(
            "gpt2", path=(ws.root / "t.txt", (ws.root / "t.txt").write_bytes(b"ok\nbad \xff\n"))[0]
        ),
        "t.txt:2: not valid UTF-8 (byte 5)",
    ),
    Case(
        "text-no-tokenizer",
        damaged(lambda ws: (ws.gpt2 / "tokenizer.json").unlink()),
        "corpus.jsonl:1: a text, but the model folder has no tokenizer",
    ),
    *MODEL_CASES,
    *FORMAT_CASES,
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, request):
    """A real hpcinfer output (the digits job, in this process), for report cases."""
    out = tmp_path_factory.mktemp("finished") / "done.h5"
    with pytest.MonkeyPatch.context() as mp:
        keep_thread_settings(mp)
        assert main(["run", str(DIGITS_JOB), "--quiet", "--set", f"output.path='{out}'"]) == 0
    return out


def test_enough_cases():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    case, tmp_path, capsys, monkeypatch, finished
):
    keep_thread_settings(monkeypatch)
    ws = Workspace(tmp_path)
    shutil.copy(finished, tmp_path / "done.h5")
    args = case.make(ws)
    if case.memory is not None:
        monkeypatch.setattr("hpcinfer.io.hdf5_input.available_memory_bytes", lambda: case.memory)
    before = ws.snapshot()
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    line = one_error_line(captured.err, captured.out)
    assert code == 2, line
    assert case.expect in line, line
    assert ws.leftovers() == []
    assert ws.snapshot() == before, "a file the run was given changed"
