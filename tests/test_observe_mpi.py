"""Seeing the run: live progress, the run report, inspect, and --dry-run."""

from __future__ import annotations

import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from hpcinfer.io.safetensors_file import SafetensorsFile
from hpcinfer.tools.report import load_run, report_data
from tests.conftest import DATA, ROOT, hpcinfer

pytestmark = pytest.mark.mpi

PROGRESS = re.compile(r"hpcinfer: ([\d,]+) / 1,797 rows \([\d.]+%\), ([\d,]+) rows/s, ETA \S+")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpcinfer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_progress_lines_at_the_interval_off_a_terminal(digits_job):
    job = digits_job(chunk_size=16)
    p = hpcinfer(
        "run",
        str(job),
        "--progress-interval",
        "0.25",
        n=2,
        env={"HPCINFER_FAULT": "kind=delay,seconds=0.03"},
    )
    assert p.returncode == 0, p.stderr
    lines = [m for m in map(PROGRESS.match, p.stderr.splitlines()) if m]
    # 113 chunks x 0.03 s over 2 ranks ~ 1.7 s of work: about 6 lines at 0.25 s.
    assert 3 <= len(lines) <= 12, p.stderr
    done = [int(m.group(1).replace(",", "")) for m in lines]
    assert done == sorted(done) and done[-1] <= 1797
    assert "\r" not in p.stderr  # no carriage-return spam in a log file


def test_quiet_turns_progress_off(digits_job):
    p = hpcinfer(
        "run",
        str(digits_job(chunk_size=16)),
        "--quiet",
        "--progress-interval",
        "0.05",
        n=2,
        env={"HPCINFER_FAULT": "kind=delay,seconds=0.01"},
    )
    assert p.returncode == 0
    assert not any(map(PROGRESS.match, p.stderr.splitlines()))


def test_warnings_are_said_once_not_once_per_rank(digits_job):
    p = hpcinfer("run", str(digits_job()), "--quiet", n=3, env={"HPCINFER_FAULT": "kind=warn"})
    assert p.returncode == 0
    assert p.stderr.count("injected warning") == 1


def test_report_of_a_known_run(tmp_path, digits_job):
    job = digits_job(chunk_size=64)  # 29 chunks: static blocks of 10, 10, 9
    p = hpcinfer("run", str(job), "--set", "run.balance='static'", "--quiet", n=3)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out" / "digits.h5"
    data = report_data(load_run(out))
    assert data["chunks_per_group"] == [10, 10, 9]
    assert data["stolen_per_group"] == [0, 0, 0] and data["resumed_chunks"] == 0
    assert data["rows_this_run"] == 1797
    assert 0 < data["efficiency"] <= 1
    r = cli("report", str(job))
    assert r.returncode == 0, r.stderr
    assert "chunks per DP group: 10 (0 stolen), 10 (0 stolen), 9 (0 stolen)" in r.stdout
    png = out.with_name("digits.h5.report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "efficiency" in r.stdout and "busy" in r.stdout


def test_report_marks_resumed_chunks(tmp_path, digits_job):
    job = digits_job(chunk_size=16)
    p = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=1,after=10,kind=exit"})
    assert p.returncode != 0
    assert hpcinfer("run", str(job), "--quiet", n=2).returncode == 0
    out = tmp_path / "out" / "digits.h5"
    data = report_data(load_run(out))
    with h5py.File(out, "r") as f:
        assert data["resumed_chunks"] == f.attrs["resumed_chunks"] > 0
    assert sum(data["chunks_per_group"]) + data["resumed_chunks"] == 113
    r = cli("report", str(out), "--png", str(tmp_path / "r.png"))
    assert r.returncode == 0 and "chunks from earlier runs" in r.stdout
    assert (tmp_path / "r.png").exists()


def test_report_without_a_finished_run_is_a_clear_error(digits_job):
    r = cli("report", str(digits_job()))
    assert r.returncode == 2 and "no output file" in r.stderr


def test_inspect_reads_only_the_header(monkeypatch, capsys):
    from hpcinfer.cli import main

    def no_reading(*a, **k):
        raise AssertionError("inspect read tensor data")

    monkeypatch.setattr(SafetensorsFile, "read", no_reading)
    assert (
        main(
            [
                "inspect",
                str(DATA / "models" / "digits-mlp"),
                "--ranks",
                "4",
                "--mem-per-rank",
                "0.0000125",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5,090" in out and "F32" in out  # parameters, stored dtype
    assert re.search(r"^\s+2\s+10\.0 KiB\s+1\s+1\s+40$", out, re.M)  # tp 2 per rank
    assert "recommended layout for 4 ranks" in out and "--tp 2" in out


def test_inspect_errors():
    r = cli("inspect", "nowhere")
    assert r.returncode == 2 and "model folder not found" in r.stderr


def test_dry_run_validates_and_prints_the_plan_without_computing(tmp_path, digits_job):
    job = digits_job(chunk_size=16)
    p = hpcinfer("run", str(job), "--dry-run", "--tp", "2", n=4)
    assert p.returncode == 0, p.stderr
    assert "is valid; nothing computed" in p.stdout
    assert "2 DP group(s) x tp 2" in p.stdout and "[57, 56] chunks" in p.stdout
    assert "a fresh run" in p.stdout
    assert not (tmp_path / "out").exists()
    bad = hpcinfer("run", str(job), "--dry-run", "--set", "input.dataset='nope'", n=2)
    assert bad.returncode == 2 and "dataset 'nope' not found" in bad.stderr
    np.testing.assert_equal(p.stdout.count("hpcinfer: dry run"), 1)  # rank 0 only


def test_a_warning_when_ranks_would_idle(tmp_path, digits_job):
    p = hpcinfer("run", str(digits_job(chunk_size=1797)), "--quiet", n=3)
    assert p.returncode == 0, p.stderr
    warnings = [s for s in p.stderr.splitlines() if s.startswith("hpcinfer: warning")]
    assert len(warnings) == 1, p.stderr  # rank 0 only
    assert "1 chunk(s) for 3 data-parallel groups: 2 group(s) (2 rank(s)) will idle" in warnings[0]


def test_progress_starts_early_and_its_pauses_grow():
    from hpcinfer.tools.progress import line_pauses

    pauses = line_pauses(30.0)
    assert [next(pauses) for _ in range(7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert next(line_pauses(0.5)) == 0.5


def test_a_usage_error_is_printed_once_not_once_per_rank():
    p = hpcinfer("run", "--no-such-option", "x.toml", n=3, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("usage:") == 1 and p.stderr.count("unrecognized arguments") == 1
    h = hpcinfer("run", "--help", n=3, timeout=60)
    assert h.returncode == 0 and h.stdout.count("usage:") == 1


def test_the_closing_line_counts_only_what_this_run_computed(tmp_path, digits_job):
    job = digits_job(chunk_size=16)
    killed = hpcinfer("run", str(job), n=2, env={"HPCINFER_FAULT": "rank=0,after=20,kind=exit"})
    assert killed.returncode != 0
    p = hpcinfer("run", str(job), "--quiet", n=2)
    assert p.returncode == 0, p.stderr
    resumed = int(re.search(r"resuming: \d+ of 113 chunks already done \(([\d,]+) of", p.stdout)
                  .group(1).replace(",", ""))  # fmt: skip
    line = next(s for s in p.stdout.splitlines() if s.startswith("hpcinfer: wrote"))
    assert f"1,797 rows, {resumed:,} of them by earlier runs; {1797 - resumed:,} rows in" in line
