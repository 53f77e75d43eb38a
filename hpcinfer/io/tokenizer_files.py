"""Tokenizers the way model folders ship them, all built with the `tokenizers` library.

`load_tokenizer(source, max_length)` tries, in this order:

1. `tokenizer.json` (any model): used as saved. Whether BOS is added is what its
   post-processor does; like transformers 5, `add_bos_token` in tokenizer_config.json
   does not override a tokenizer.json.
2. `vocab.json` + `merges.txt` (GPT-2 style byte-level BPE): special tokens from
   tokenizer_config.json (`added_tokens_decoder`, `bos_token`, ...) and
   special_tokens_map.json, GPT-2's defaults (`<|endoftext|>` as bos/eos/unk when in the
   vocabulary), `add_prefix_space`, `add_bos_token`/`add_eos_token`.
3. `vocab.txt` (BERT WordPiece): `do_lower_case`, `strip_accents`,
   `tokenize_chinese_chars`, `do_basic_tokenize` from tokenizer_config.json; [CLS] ... [SEP].
4. A GGUF file's `tokenizer.ggml.*` metadata (pass a `GgufFile`): "gpt2" vocabularies
   (byte-level BPE from tokens + merges, split the way llama.cpp splits for the file's
   `tokenizer.ggml.pre`) and "llama" vocabularies (SentencePiece BPE with byte fallback,
   merges rebuilt from tokens + scores).

Each is checked against the reference implementation (transformers' slow Python
tokenizers for 2 and 3, sentencepiece and transformers' GGUF loader for 4) by
tests/test_tokenizer_files.py on the lines of data/fixtures/tokenizers/. Where the
references disagree with each other, this module follows the one named in the comments.

The result is a small frozen `TextTokenizer`: it truncates to `max_length` (special tokens
included), never pads, and says where it came from. None means the source has no
tokenizer at all (a job over token ids needs none); a tokenizer file that is there but
damaged is one JobError line naming it.

`encode_batch` runs on the `tokenizers` Rayon thread pool; its size is RAYON_NUM_THREADS
(or TOKENIZERS_PARALLELISM=false for one thread), which the runtime should set with the
other per-rank thread counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from hpcinfer.errors import JobError
from hpcinfer.io.gguf_file import GgufFile


@dataclass(frozen=True)
class TextTokenizer:
    """A ready tokenizer: texts in, token ids out, cut to `max_length`, never padded."""

    tokenizer: Tokenizer = field(repr=False, compare=False)
    source: Path  # the file it was built from
    kind: str  # "tokenizer.json", "bpe", "wordpiece", "gguf-gpt2", "gguf-llama"
    max_length: int
    vocab_size: int  # added tokens included: the largest id is vocab_size - 1
    bos_id: int | None
    eos_id: int | None
    adds_bos: bool  # encode_batch starts every text with bos_id
    chat_template: str | None = field(default=None, repr=False)
    prefix: str = ""  # put before every text (GPT2Tokenizer's add_prefix_space: " ")

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int64) of each text, special tokens added as the model expects."""
        texts = [self.prefix + t for t in texts] if self.prefix else list(texts)
        encodings = self.tokenizer.encode_batch(texts)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def load_tokenizer(source: str | Path | GgufFile, max_length: int) -> TextTokenizer | None:
    """The tokenizer of a model folder (or of a GGUF file's metadata), or None if it has
    none. See the module docstring for the order in which files are tried."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if isinstance(source, GgufFile):
        return _from_gguf(source, max_length)
    folder = Path(source)
    if (folder / "tokenizer.json").is_file():
        return _from_tokenizer_json(folder, max_length)
    if (folder / "vocab.json").is_file() or (folder / "merges.txt").is_file():
        return _from_vocab_merges(folder, max_length)
    if (folder / "vocab.txt").is_file():
        return _from_vocab_txt(folder, max_length)
    return None


# ---- shared pieces ----


def _finish(
    tok: Tokenizer,
    source: Path,
    kind: str,
    max_length: int,
    bos_id: int | None,
    eos_id: int | None,
    chat_template: str | None,
    prefix: str = "",
) -> TextTokenizer:
    """Probe whether BOS is added, then set truncation (specials included) and no padding."""
    tok.no_truncation()
    tok.no_padding()
    first = tok.encode(prefix).ids[:1]
    adds_bos = bos_id is not None and first == [bos_id]
    tok.enable_truncation(max_length=max_length)
    return TextTokenizer(
        tokenizer=tok,
        source=source,
        kind=kind,
        max_length=max_length,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        bos_id=bos_id,
        eos_id=eos_id,
        adds_bos=adds_bos,
        chat_template=chat_template,
        prefix=prefix,
    )


def _read_json(path: Path, required: bool = False) -> dict:
    """A JSON object from `path`; {} if absent and not required."""
    if not path.is_file():
        if required:
            raise JobError(f"{path}: not found")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JobError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise JobError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _configs(folder: Path) -> dict:
    """tokenizer_config.json, with special_tokens_map.json's entries where it has none."""
    config = _read_json(folder / "tokenizer_config.json")
    for key, value in _read_json(folder / "special_tokens_map.json").items():
        config.setdefault(key, value)
    return config


def _token_content(value: Any, where: Path, key: str) -> str | None:
    """A special token as configs write it: a string, or {"content": ...}; None if unset."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise JobError(f"{where}: {key} must be a string or {{'content': string}}")
    return value


def _added_token(value: Any, where: Path, key: str, special: bool = True) -> AddedToken:
    """An AddedToken as tokenizer configs describe one (a string or a dict of flags)."""
    content = _token_content(value, where, key)
    flags = value if isinstance(value, dict) else {}
    is_special = bool(flags.get("special", special))
    return AddedToken(
        content,
        single_word=bool(flags.get("single_word", False)),
        lstrip=bool(flags.get("lstrip", False)),
        rstrip=bool(flags.get("rstrip", False)),
        # special tokens match the raw text, as in transformers' slow tokenizers (whose
        # configs may still say normalized: true, meaningless without a normalizer)
        normalized=not is_special and bool(flags.get("normalized", True)),
        special=is_special,
    )


def _chat_template(folder: Path, config: dict) -> str | None:
    """chat_template.jinja, else chat_template.json, else tokenizer_config.json's entry
    (a string, or a list of {name, template}: the one named "default", else the first)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(folder / "chat_template.json").get("chat_template")
    template = config.get("chat_template") if template is None else template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


def _special_id(tok: Tokenizer, config: dict, key: str, where: Path) -> int | None:
    content = _token_content(config.get(key), where, key)
    return None if content is None else tok.token_to_id(content)


def _add_specials(tok: Tokenizer, tokens: list[AddedToken]) -> None:
    """Add tokens (deduplicated, in order); one that would get a new id extends the
    vocabulary, as transformers does."""
    seen, unique = set(), []
    for t in tokens:
        if t.content not in seen:
            seen.add(t.content)
            unique.append(t)
    special = [t for t in unique if t.special]
    plain = [t for t in unique if not t.special]
    if plain:
        tok.add_tokens(plain)
    if special:
        tok.add_special_tokens(special)


# ---- 1. tokenizer.json ----


def _from_tokenizer_json(folder: Path, max_length: int) -> TextTokenizer:
    path = folder / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception with serde's message
        raise JobError(f"{path}: not a valid tokenizer.json ({_one_line(e)})") from None
    config = _configs(folder)
    where = folder / "tokenizer_config.json"
    bos = _special_id(tok, config, "bos_token", where)
    eos = _special_id(tok, config, "eos_token", where)
    template = _chat_template(folder, config)
    return _finish(tok, path, "tokenizer.json", max_length, bos, eos, template)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


# ---- 2. vocab.json + merges.txt (GPT-2 style byte-level BPE) ----

GPT2_DEFAULT_SPECIAL = "<|endoftext|>"  # GPT2Tokenizer's default unk/bos/eos


def _from_vocab_merges(folder: Path, max_length: int) -> TextTokenizer:
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise JobError(f"{path}: not found (a vocab.json + merges.txt tokenizer needs both)")
    vocab = _read_json(vocab_path, required=True)
    for token, index in vocab.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise JobError(
                f"{vocab_path}: token {token!r} has id {index!r}; "
                "vocab.json must map tokens to non-negative integers"
            )
    if not vocab:
        raise JobError(f"{vocab_path}: the vocabulary is empty")
    merges = _read_merges(merges_path)
    config_path = folder / "tokenizer_config.json"
    config = _configs(folder)
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    except Exception as e:
        raise JobError(f"{merges_path}: does not fit vocab.json ({_one_line(e)})") from None
    # GPT2Tokenizer puts one space before the whole text, even an empty one or one that
    # starts with a space or a special token: not what ByteLevel(add_prefix_space=True) or
    # a Prepend normalizer (per segment between special tokens, never on empty) do.
    prefix = " " if config.get("add_prefix_space", False) else ""
    tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    for key in ("unk_token", "bos_token", "eos_token"):
        if key not in config and GPT2_DEFAULT_SPECIAL in vocab:
            config[key] = GPT2_DEFAULT_SPECIAL
    _add_specials(tok, _config_specials(config, config_path))
    bos = _special_id(tok, config, "bos_token", config_path)
    eos = _special_id(tok, config, "eos_token", config_path)
    add_bos, add_eos = bool(config.get("add_bos_token")), bool(config.get("add_eos_token"))
    tok.post_processor = _template(tok, bos if add_bos else None, eos if add_eos else None)
    template = _chat_template(folder, config)
    return _finish(tok, vocab_path, "bpe", max_length, bos, eos, template, prefix)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt: one "left right" pair per line; "#version" lines and trailing blank
    lines skipped (as the tokenizers library reads it)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    merges = []
    for number, line in enumerate(lines, 1):
        if line.startswith("#version"):
            continue
        parts = line.rstrip("\r").split(" ")
        if len(parts) != 2 or not all(parts):
            raise JobError(f"{path}: line {number} is not a merge ('left right'): {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise JobError(f"{path}: no merges")
    return merges


def _config_specials(config: dict, where: Path) -> list[AddedToken]:
    """Added tokens a tokenizer_config.json declares: added_tokens_decoder (in id order),
    the named special tokens, additional_special_tokens."""
    tokens = []
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise JobError(f"{where}: added_tokens_decoder must be an object of id -> token")
    try:
        ordered = sorted(decoder.items(), key=lambda kv: int(kv[0]))
    except ValueError:
        raise JobError(f"{where}: added_tokens_decoder keys must be token ids") from None
    for _, value in ordered:
        tokens.append(_added_token(value, where, "added_tokens_decoder"))
    for key in ("unk_token", "bos_token", "eos_token", "pad_token", "sep_token", "cls_token"):
        if config.get(key) is not None:
            tokens.append(_added_token(config[key], where, key))
    if config.get("mask_token") is not None:
        tokens.append(_added_token(config["mask_token"], where, "mask_token"))
    extra = config.get("additional_special_tokens") or []
    if not isinstance(extra, list):
        raise JobError(f"{where}: additional_special_tokens must be a list")
    tokens += [_added_token(t, where, "additional_special_tokens") for t in extra]
    return tokens


def _template(tok: Tokenizer, bos: int | None, eos: int | None) -> processors.TemplateProcessing:
    """ "[bos] $A [eos]" with whichever of the two is given."""
    pieces, specials = ["$A"], {}
    for index, at_start in ((bos, True), (eos, False)):
        if index is None:
            continue
        content = tok.id_to_token(index)
        specials[content] = index
        pieces.insert(0, content) if at_start else pieces.append(content)
    return processors.TemplateProcessing(single=pieces, special_tokens=list(specials.items()))


# ---- 3. vocab.txt (BERT WordPiece) ----


def _from_vocab_txt(folder: Path, max_length: int) -> TextTokenizer:
    path = folder / "vocab.txt"
    config_path = folder / "tokenizer_config.json"
    config = _configs(folder)
    try:
        # universal newlines and "\n" stripped only, as BertTokenizer's load_vocab reads it
        with path.open(encoding="utf-8") as f:
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text ({e})") from None
    if not vocab:
        raise JobError(f"{path}: the vocabulary is empty")
    names = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    names |= {"cls_token": "[CLS]", "mask_token": "[MASK]"}
    special = {k: _token_content(config.get(k, v), config_path, k) for k, v in names.items()}
    for key in ("unk_token", "cls_token", "sep_token"):
        if special[key] not in vocab:
            raise JobError(f"{path}: the {key} {special[key]!r} is not in the vocabulary")
    tok = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token=special["unk_token"], max_input_chars_per_word=100)
    )
    lower = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    strip = lower if strip is None else bool(strip)
    if config.get("do_basic_tokenize", True):
        tok.normalizer = _bert_normalizer(
            lower, strip, bool(config.get("tokenize_chinese_chars", True))
        )
        tok.pre_tokenizer = pre.BertPreTokenizer()
    else:
        tok.pre_tokenizer = pre.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    _add_specials(tok, _config_specials(config, config_path))
    cls, sep = tok.token_to_id(special["cls_token"]), tok.token_to_id(special["sep_token"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{special['cls_token']}:0 $A:0 {special['sep_token']}:0",
        special_tokens=[(special["cls_token"], cls), (special["sep_token"], sep)],
    )
    bos = _special_id(tok, config, "bos_token", config_path)
    eos = _special_id(tok, config, "eos_token", config_path)
    return _finish(tok, path, "wordpiece", max_length, bos, eos, _chat_template(folder, config))


def _bert_normalizer(lower: bool, strip: bool, chinese: bool) -> normalizers.Normalizer:
    """BertTokenizer's BasicTokenizer as normalizers, in its order: clean the text and
    space out CJK, NFC, lowercase, strip accents: NFD, then drop nonspacing marks (Mn) only;
    the library's StripAccents also drops spacing marks (Mc: Devanagari vowel signs, ...)."""
    steps = [
        normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese, strip_accents=False, lowercase=False
        ),
        normalizers.NFC(),
    ]
    if lower:
        steps.append(normalizers.Lowercase())
    if strip:
        steps += [normalizers.NFD(), normalizers.Replace(Regex(r"\p{Mn}"), "")]
    return normalizers.Sequence(steps)


# ---- 4. GGUF metadata ----

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> llama.cpp's regexes (src/llama-vocab.cpp), applied one after the
# other, each splitting the pieces of the one before; ignore_merges for the llama3 group.
GGUF_PRE_SPLITS: dict[str, tuple[list[str], bool]] = {
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"], False),
    "gpt-2": ([_GPT2_SPLIT], False),
    "gpt2": ([_GPT2_SPLIT], False),
    "llama-bpe": ([_LLAMA3_SPLIT], True),
    "llama3": ([_LLAMA3_SPLIT], True),
    "llama-v3": ([_LLAMA3_SPLIT], True),
    "smollm": ([r"\p{N}", _GPT2_SPLIT], False),
    "starcoder": ([r"\p{N}", _GPT2_SPLIT], False),
    "refact": ([r"\p{N}", _GPT2_SPLIT], False),
    "qwen2": ([_QWEN2_SPLIT], False),
}
# llama.cpp's token types
_CONTROL, _USER_DEFINED = 3, 4


def _from_gguf(gguf: GgufFile, max_length: int) -> TextTokenizer | None:
    model = gguf.meta_str("tokenizer.ggml.model", default=None)
    if model is None:
        return None
    if model == "gpt2":
        tok = _gguf_byte_level(gguf)
    elif model == "llama":
        tok = _gguf_sentencepiece(gguf)
    else:
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.model {model!r} is not supported "
            "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)"
        )
    n = tok.get_vocab_size(with_added_tokens=True)
    ids = {}
    for name in ("bos", "eos"):
        index = gguf.meta_int(f"tokenizer.ggml.{name}_token_id", default=None)
        if index is not None and not 0 <= index < n:
            raise JobError(
                f"{gguf.path}: tokenizer.ggml.{name}_token_id {index} is outside the "
                f"{n}-token vocabulary"
            )
        ids[name] = index
    # llama.cpp: BOS by default for SentencePiece and the llama3 split, else not
    pre_name = gguf.meta_str("tokenizer.ggml.pre", default="default")
    default_bos = model == "llama" or pre_name in ("llama-bpe", "llama3", "llama-v3")
    add_bos = gguf.meta_bool("tokenizer.ggml.add_bos_token", default=default_bos)
    add_eos = gguf.meta_bool("tokenizer.ggml.add_eos_token", default=False)
    bos = ids["bos"] if add_bos else None
    eos = ids["eos"] if add_eos else None
    tok.post_processor = _template(tok, bos, eos)
    template = gguf.meta_str("tokenizer.chat_template", default=None)
    return _finish(tok, gguf.path, f"gguf-{model}", max_length, ids["bos"], ids["eos"], template)


def _gguf_tokens(gguf: GgufFile) -> tuple[list[str], list[int]]:
    tokens = gguf.meta_list("tokenizer.ggml.tokens")
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise JobError(f"{gguf.path}: tokenizer.ggml.tokens must be a non-empty list of strings")
    types = gguf.meta_list("tokenizer.ggml.token_type", default=[1] * len(tokens))
    if len(types) != len(tokens):
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.token_type has {len(types)} entries for "
            f"{len(tokens)} tokens"
        )
    return tokens, types


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level "alphabet")."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _gguf_byte_level(gguf: GgufFile) -> Tokenizer:
    """Byte-level BPE from tokens + merges; split as llama.cpp does for this `pre`."""
    tokens, types = _gguf_tokens(gguf)
    merges_raw = gguf.meta_list("tokenizer.ggml.merges", default=None)
    if merges_raw is None:
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.merges is missing (a gpt2 vocabulary needs it)"
        )
    pre_name = gguf.meta_str("tokenizer.ggml.pre", default="default")
    if pre_name not in GGUF_PRE_SPLITS:
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.pre {pre_name!r} is not supported "
            f"(supported: {', '.join(GGUF_PRE_SPLITS)})"
        )
    splits, ignore_merges = GGUF_PRE_SPLITS[pre_name]
    # Tokens are spelled in the byte alphabet; one that is not (a raw space, say) is
    # respelled from its UTF-8 bytes, as transformers does.
    spell = _bytes_to_unicode()
    alphabet = set(spell.values())
    vocab = {}
    for index, token in enumerate(tokens):
        if not set(token) <= alphabet:
            token = "".join(spell[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, index)
    merges = []
    for number, merge in enumerate(merges_raw):
        parts = merge.split(" ") if isinstance(merge, str) else []
        if len(parts) != 2:
            raise JobError(
                f"{gguf.path}: tokenizer.ggml.merges[{number}] is not a merge ('left right'): "
                f"{str(merge)[:60]!r}"
            )
        merges.append((parts[0], parts[1]))
    try:
        tok = Tokenizer(
            models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore_merges)
        )
    except Exception as e:
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.merges do not fit the tokens ({_one_line(e)})"
        ) from None
    steps = [pre.Split(Regex(r), behavior="isolated") for r in splits]
    tok.pre_tokenizer = pre.Sequence(
        [*steps, pre.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) stay whole as special tokens; one not spelled in
    # the byte alphabet is a mislabel and is skipped (transformers does the same).
    _add_specials(tok, _gguf_added(tokens, types, alphabet))
    return tok


def _gguf_added(tokens: list[str], types: list[int], alphabet: set[str] | None) -> list[AddedToken]:
    added = []
    for token, kind in zip(tokens, types, strict=True):
        if kind == _CONTROL and (alphabet is None or set(token) <= alphabet):
            added.append(AddedToken(token, normalized=False, special=True))
        elif kind == _USER_DEFINED:
            added.append(AddedToken(token, normalized=False, special=False))
    return added


def _gguf_sentencepiece(gguf: GgufFile) -> Tokenizer:
    """SentencePiece BPE (Llama 1/2, Mistral v1 vocabularies): merges rebuilt from the
    tokens' scores, "▁" for spaces, a "▁" prefix unless add_space_prefix is false, and
    <0xXX> byte tokens for characters the vocabulary lacks."""
    tokens, types = _gguf_tokens(gguf)
    scores = gguf.meta_list("tokenizer.ggml.scores", default=None)
    if scores is None or len(scores) != len(tokens):
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.scores must give one score per token "
            "(a llama vocabulary needs them)"
        )
    vocab = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    unk_id = gguf.meta_int("tokenizer.ggml.unknown_token_id", default=0)
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else None
    merges = _merges_from_scores(tokens, scores, vocab)
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    steps = []
    if gguf.meta_bool("tokenizer.ggml.add_space_prefix", default=True):
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    _add_specials(tok, _gguf_added(tokens, types, None))
    return tok


def _merges_from_scores(
    tokens: list[str], scores: list[float], vocab: dict[str, int]
) -> list[tuple[str, str]]:
    """Every (left, right) split of a token into two tokens, best merged score first:
    SentencePiece merges the adjacent pair whose result scores highest."""
    found = []
    for token, score in zip(tokens, scores, strict=True):
        if vocab.get(token) is None or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((-score, vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]
