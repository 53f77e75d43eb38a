from pathlib import Path

import pytest

from hpcinfer.errors import JobError
from hpcinfer.job import load_job, parse_override
from tests.conftest import DIGITS_JOB, ROOT


def test_relative_paths_resolve_against_the_job_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    job = load_job(DIGITS_JOB)
    assert job.model.path == ROOT / "data" / "models" / "digits-mlp"
    assert job.input.path == ROOT / "data" / "digits.h5"
    assert job.run.chunk_size == 256


def test_overrides_win_and_their_paths_are_relative_to_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    job = load_job(DIGITS_JOB, ["run.batch_size=7", "output.path=o.h5", "run.backend=jax"])
    assert job.run.batch_size == 7
    assert job.run.backend == "jax"
    assert job.output.path == tmp_path / "o.h5"


def test_override_values_are_toml_else_strings():
    assert parse_override("run.batch_size=64") == ("run", "batch_size", 64)
    assert parse_override("input.dataset=x") == ("input", "dataset", "x")
    assert parse_override("input.dataset='1'") == ("input", "dataset", "1")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


GOOD = '[model]\npath = "m"\n[input]\npath = "i.h5"\n[output]\npath = "o.h5"\n'


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (GOOD + "[run]\nbatchsize = 3\n", [], "run.batchsize: unknown key"),
        (GOOD + "[runn]\n", [], "unknown section [runn]"),
        (GOOD + '[run]\nbatch_size = "big"\n', [], "run.batch_size must be an integer"),
        (GOOD + "[run]\nbatch_size = true\n", [], "run.batch_size must be an integer"),
        (GOOD + "[run]\nchunk_size = 0\n", [], "run.chunk_size must be >= 1"),
        (GOOD + '[run]\nbackend = "torch"\n', [], "run.backend must be one of"),
        (GOOD + '[run]\ndtype = "float16"\n', [], "run.dtype must be one of"),
        (GOOD + "[input]\n", [], "not valid TOML"),
        ('[model]\npath = "m"\n[output]\npath = "o.h5"\n', [], "missing required key input.path"),
        (GOOD, ["run.batch_size=x"], "--set run.batch_size must be an integer"),
        (GOOD, ["run.nope=1"], "--set run.nope: unknown key"),
        (GOOD, ["batch_size=1"], "expected section.key=value"),
    ],
)
def test_bad_job_files_name_the_file_and_key(tmp_path, text, overrides, expected):
    path = write(tmp_path, text)
    with pytest.raises(JobError) as e:
        load_job(path, overrides)
    message = str(e.value)
    assert expected in message
    assert "\n" not in message
    if not overrides:
        assert str(path) in message


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match="job file not found"):
        load_job(tmp_path / "nope.toml")
