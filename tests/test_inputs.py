"""Input readers: JSONL (texts or token ids), plain text, HDF5 numbers, strings and
variable-length token ids; each reads only the rows asked for, and a bad row is an error
that names the file and the row."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcinfer.errors import JobError
from hpcinfer.io.hdf5_input import Hdf5Items, Hdf5Rows, open_hdf5
from hpcinfer.io.text_input import TextRows


def test_text_readers(tmp_path, monkeypatch):
    monkeypatch.setattr("hpcinfer.io.record_index.INDEX_BLOCK_BYTES", 3)  # lines span blocks
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": "b c"}\n{"text": "d"}')  # no final newline
    rows = TextRows(jsonl, "jsonl")
    assert rows.items and rows.n_rows == 3 and rows.read(1, 3) == ["b c", "d"]
    txt = tmp_path / "t.txt"
    txt.write_text("one\ntwo\n\nfour\n")
    assert TextRows(txt, "text").read(0, 4) == ["one", "two", "", "four"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(JobError, match=r"bad\.jsonl:2: not valid JSON"):
        TextRows(tmp_path / "bad.jsonl", "jsonl").read(0, 2)
    with pytest.raises(JobError, match=r"t\.jsonl:1: field 'body' \(input.field\) .* got nothing"):
        TextRows(jsonl, "jsonl", "body")


def test_jsonl_token_ids(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"ids": [5, 0, 17]}\n{"ids": []}\n{"ids": [1, -2]}\n{"ids": [1, true]}\n')
    rows = TextRows(path, "jsonl", "ids")
    # -2 is read as given: the vocabulary's bounds are the model's to check (test_gpt2)
    assert rows.read(0, 3) == [[5, 0, 17], [], [1, -2]]
    with pytest.raises(JobError, match=r"ids\.jsonl:4: .*list of token ids"):
        rows.read(3, 4)


def test_hdf5_picks_the_reader_by_type(tmp_path):
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 3), np.float32)
        f.create_dataset("text", data=["héllo", "", "world"], dtype=h5py.string_dtype())
        ids = f.create_dataset("ids", (3,), dtype=h5py.vlen_dtype(np.int32))
        ids[0], ids[1], ids[2] = [3, 1, 4], [], [1, 5]
        bad = f.create_dataset("bad_ids", (1,), dtype=h5py.vlen_dtype(np.int64))
        bad[0] = [2, -7]
        f["words"] = np.array([b"ab", b"cd"], dtype="V2")  # opaque: neither numbers nor text
    rows = open_hdf5(path, "x")
    assert type(rows) is Hdf5Rows and not rows.items and rows.row_shape == (3,)
    texts = open_hdf5(path, "text")
    assert isinstance(texts, Hdf5Items) and texts.kind == "hdf5 texts"
    assert texts.read(0, 3) == ["héllo", "", "world"]
    ids = open_hdf5(path, "ids")
    assert ids.kind == "hdf5 token ids" and ids.n_rows == 3
    got = ids.read(1, 3)
    assert [list(t) for t in got] == [[], [1, 5]] and got[1].dtype == np.int64
    assert open_hdf5(path, "bad_ids").read(0, 1)[0].tolist() == [2, -7]  # the model refuses
    with pytest.raises(JobError, match="expected numbers, strings or variable-length"):
        open_hdf5(path, "words")
