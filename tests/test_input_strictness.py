"""Input readers are strict and bounded: every bad row is a JobError naming file:line (and
the byte), found by validate() before any compute; long lines are streamed, never held
whole, and read exactly as short ones; a file that changes under the index is refused."""

from __future__ import annotations

import io
import json
import os

import h5py
import numpy as np
import pytest

import hpcinfer.io.text_input as text_input
from hpcinfer.errors import JobError
from hpcinfer.io import hdf5_input, json_scan
from hpcinfer.io.hdf5_input import open_hdf5
from hpcinfer.io.text_cut import TextCut, TextPrefix
from hpcinfer.io.text_input import TextRows

GOOD = [
    '{"text": "plain"}',
    '{"text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ tab\\t", "n": [1, 2.5, null]}',
    '{"x": {"deep": [[[]]]}, "text": "after a nested value"}',
    '{"text": "first", "text": "the last one counts"}',
    '  {"text": "日本語 🙂"}  \r',
    '{"text": ""}',
]


@pytest.fixture(params=["short", "long"])
def streamed(request, monkeypatch):
    """Every test twice: lines parsed whole, and every line streamed (json_scan)."""
    if request.param == "long":
        monkeypatch.setattr(text_input, "LONG_LINE_BYTES", 0)
        monkeypatch.setattr(json_scan, "BLOCK_BYTES", 7)
    monkeypatch.setattr(text_input, "READ_BLOCK_BYTES", 40)  # blocks of a few lines
    return request.param


def write(path, lines, end="\n"):
    path.write_bytes(
        b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + end.encode()
    )
    return path


def test_good_lines_read_the_same_streamed_or_whole(tmp_path, streamed):
    rows = TextRows(write(tmp_path / "t.jsonl", GOOD), "jsonl")
    rows.validate(range(rows.n_rows))
    expected = [json.loads(line)["text"] for line in GOOD]
    assert rows.read(0, rows.n_rows) == expected
    rows.set_cut(TextCut(chars=4, ids=3))
    got = rows.read(0, rows.n_rows)
    for g, e in zip(got, expected, strict=True):
        if len(e) <= 4:
            assert g == e
        else:
            assert isinstance(g, TextPrefix) and g.text == e[:4]
            longer = g.more(6)
            assert (longer.text if isinstance(longer, TextPrefix) else longer) == e[:6]
            assert g.more(len(e)) == e


def test_token_ids_are_cut_and_checked_to_fit_int64(tmp_path, streamed):
    lines = [
        '{"ids": [5, 0, 17, 3]}',
        '{"ids": []}',
        '{"ids": [9223372036854775807, -9223372036854775808]}',
    ]
    rows = TextRows(
        write(tmp_path / "ids.jsonl", [*lines, '{"ids": [1, 9223372036854775808]}']), "jsonl", "ids"
    )
    with pytest.raises(JobError, match=r"ids\.jsonl:4: .*9223372036854775808.* does not fit int64"):
        rows.validate(range(4))
    rows.set_cut(TextCut(chars=10, ids=2))
    assert rows.read(0, 3) == [[5, 0], [], [2**63 - 1, -(2**63)]]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"text": "ok \xff"}', r"bad\.jsonl:3: not valid UTF-8 \(byte 14\)"),
        (b'{"text": "caf\xc3"}', r"bad\.jsonl:3: not valid UTF-8 \(byte 14\)"),
        (b'{"text": "unterminated}', r"bad\.jsonl:3: not valid JSON: Unterminated string"),
        (b'{"text": "a"} extra', r"bad\.jsonl:3: not valid JSON: Extra data \(byte 15\)"),
        (b'{"text": "a\tb"}', r"bad\.jsonl:3: not valid JSON: Invalid control character"),
        (b'{"text": "\\x"}', r"bad\.jsonl:3: not valid JSON: Invalid \\escape"),
        (b"", r"bad\.jsonl:3: not valid JSON: Expecting value \(byte 1\)"),
        (b"[" * 100000 + b"]" * 100000, r"bad\.jsonl:3: "),  # nested past the stack: still one line
        (b'{"text": ' + b"1" * 5000 + b"}", r"bad\.jsonl:3: not valid JSON: "),
        (
            b'{"text": "\\ud800 lone"}',
            r"bad\.jsonl:3: field 'text' holds a lone surrogate \(\\ud800\)",
        ),
        (b'{"text": 3}', r"bad\.jsonl:3: field 'text' \(input.field\) must be a text .* got 3"),
        (b'{"body": "x"}', r"bad\.jsonl:3: field 'text' .* got nothing \(no such field\)"),
        (b'["text"]', r"bad\.jsonl:3: field 'text' .* got nothing"),
    ],
)
def test_the_first_bad_line_is_named(tmp_path, streamed, line, expected):
    path = write(tmp_path / "bad.jsonl", [GOOD[0], GOOD[1], line, b"{oops also bad"])
    rows = TextRows.__new__(TextRows)  # the constructor checks line 1 only: fine here
    rows.__init__(path, "jsonl")
    with pytest.raises(JobError, match=expected) as e:
        rows.validate(range(rows.n_rows))
    assert "\n" not in str(e.value)
    rows.validate(range(2))  # the lines before it are fine
    with pytest.raises(JobError, match=r"bad\.jsonl:3: "):
        rows.read(0, 4)


def test_plain_text_is_checked_utf8_with_the_byte(tmp_path, streamed):
    path = write(tmp_path / "t.txt", [b"fine", b"caf\xc3\xa9 ok", b"bad \xe9t\xc3\xa9", b"x"])
    rows = TextRows(path, "text")
    with pytest.raises(JobError, match=r"t\.txt:3: not valid UTF-8 \(byte 5\)"):
        rows.validate(range(4))
    assert rows.read(0, 2) == ["fine", "café ok"]


def test_plain_text_long_lines_keep_their_line_breaks_out(tmp_path, streamed):
    lines = ["a" * 10, "b" * 9 + "\r", "c\rd" + "e" * 8, ""]
    rows = TextRows(write(tmp_path / "t.txt", lines, end="\r\n"), "text")
    rows.validate(range(rows.n_rows))
    rows.set_cut(TextCut(chars=10, ids=1))
    got = rows.read(0, rows.n_rows)
    assert got[:2] == ["a" * 10, "b" * 9]  # exactly 10 characters (with "\r"): whole
    assert got[2].text == "c\rd" + "e" * 7 and got[2].more(100) == "c\rd" + "e" * 8
    assert got[3] == ""


def test_a_file_that_changes_under_its_index_is_refused(tmp_path):
    path = write(tmp_path / "t.jsonl", GOOD)
    rows = TextRows(path, "jsonl")
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(JobError, match=r"t\.jsonl: changed while this run reads it"):
        rows.read(0, rows.n_rows)
    path = write(tmp_path / "u.jsonl", GOOD)
    rows = TextRows(path, "jsonl")
    os.utime(path, ns=(0, 0))  # same size, rewritten in place
    with pytest.raises(JobError, match=r"u\.jsonl: changed while this run reads it"):
        rows.validate(range(rows.n_rows))


def test_the_scanner_reports_a_file_that_shrank_mid_line():
    line = b'{"text": "' + b"x" * 100 + b'"}'
    with pytest.raises(json_scan.LineError, match="the line ends early"):
        json_scan.scan_line(io.BytesIO(line[:50]), 0, len(line), "text", 5, 5)


# ---- HDF5 ----


@pytest.fixture
def h5(tmp_path):
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((40, 3), np.float32)
        f.create_dataset(
            "grid", data=np.array([["a", "b"], ["c", "d"]], dtype=object), dtype=h5py.string_dtype()
        )
        f.create_dataset("bytes", data=np.array([b"ok", b"caf\xc3\xa9", b"x\xffy"]))
        big = f.create_dataset("big_ids", (2,), dtype=h5py.vlen_dtype(np.uint64))
        big[0], big[1] = [1, 2], [2**63]
    return path


def test_hdf5_faults_are_one_line_naming_the_row(h5):
    with pytest.raises(JobError, match=r"in\.h5:grid is a 2-D dataset of texts \(shape \(2, 2\)\)"):
        open_hdf5(h5, "grid")
    texts = open_hdf5(h5, "bytes")
    assert texts.read(0, 2) == ["ok", "café"]  # fixed-length bytes are read as UTF-8
    with pytest.raises(JobError, match=r"in\.h5:bytes\[2\]: not valid UTF-8 \(byte 2\)"):
        texts.validate(range(3))
    ids = open_hdf5(h5, "big_ids")
    with pytest.raises(
        JobError, match=r"big_ids\[1\]: token id 9223372036854775808 does not fit int64"
    ):
        ids.validate(range(2))


def test_a_truncated_or_damaged_hdf5_file_is_one_line(h5, tmp_path):
    data = h5.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(JobError, match=r"cut\.h5: HDF5 cannot open it \(truncated or damaged\?\)"):
        open_hdf5(tmp_path / "cut.h5", "x")
    damaged = bytearray(data)
    damaged[100:2000] = b"\x00" * 1900  # the superblock survives, the object headers do not
    (tmp_path / "bad.h5").write_bytes(bytes(damaged))
    with pytest.raises(JobError, match=r"bad\.h5"):
        open_hdf5(tmp_path / "bad.h5", "x").read(0, 40)


def test_a_batch_larger_than_memory_is_refused_with_the_sizes(h5, monkeypatch):
    rows = open_hdf5(h5, "x")
    rows.check_batch(32, "float32")
    monkeypatch.setattr(hdf5_input, "available_memory_bytes", lambda: 1000)
    with pytest.raises(
        JobError,
        match=r"in\.h5:x: a batch of 32 rows of shape \(3,\) float32 needs 1.1 KiB .* only 1,000 B",
    ):
        rows.check_batch(32, "float64")


def test_a_string_body_ends_before_an_escape_cut_by_the_buffer():
    # Python 3.11.2's possessive repeats took the backslash of a cut escape as text
    from hpcinfer.io.json_scan import _BODY, _TEXT_BODY, RUN, body_end

    for pattern in (_BODY, _TEXT_BODY):
        assert body_end(pattern, rb"caf\u00e9 \u", 0) == 10
        assert body_end(pattern, rb"ab\u00e9 \n" * 3 * RUN + b'"', 0) == 33 * RUN
