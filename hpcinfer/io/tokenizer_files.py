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
4. A GGUF file's `tokenizer.ggml.*` metadata (pass a `GgufFile`): built by
   `gguf_tokenizer`.

Each is checked against the reference implementation (transformers' slow Python
tokenizers for 2 and 3, sentencepiece and transformers' GGUF loader for 4) by
tests/test_tokenizer_files.py on the lines of data/fixtures/tokenizers/. Where the
references disagree with each other, this module follows the one named in the comments.

The result is a `TextTokenizer` (see `text_tokenizer`). None means the source has no
tokenizer at all (a job over token ids needs none); a tokenizer file that is there but
damaged is one JobError line naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import error_text
from hpcinfer.io.gguf_file import GgufFile
from hpcinfer.io.gguf_tokenizer import tokenizer_from_gguf
from hpcinfer.io.text_tokenizer import (
    TextTokenizer,
    add_specials,
    bos_eos_template,
    finish_tokenizer,
)


def load_tokenizer(source: str | Path | GgufFile, max_length: int) -> TextTokenizer | None:
    """The tokenizer of a model folder (or of a GGUF file's metadata), or None if it has
    none. See the module docstring for the order in which files are tried."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if isinstance(source, GgufFile):
        return tokenizer_from_gguf(source, max_length)
    folder = Path(source)
    if (folder / "tokenizer.json").is_file():
        return _from_tokenizer_json(folder, max_length)
    if (folder / "vocab.json").is_file() or (folder / "merges.txt").is_file():
        return _from_vocab_merges(folder, max_length)
    if (folder / "vocab.txt").is_file():
        return _from_vocab_txt(folder, max_length)
    return None


# ---- the folder's configs, shared by 1-3 ----


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


# ---- 1. tokenizer.json ----


def _from_tokenizer_json(folder: Path, max_length: int) -> TextTokenizer:
    path = folder / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 (the library raises bare Exception, serde's text)
        raise JobError(f"{path}: not a valid tokenizer.json ({error_text(e)})") from None
    config = _configs(folder)
    where = folder / "tokenizer_config.json"
    bos = _special_id(tok, config, "bos_token", where)
    eos = _special_id(tok, config, "eos_token", where)
    template = _chat_template(folder, config)
    return finish_tokenizer(tok, path, "tokenizer.json", max_length, bos, eos, template)


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
    except Exception as e:  # noqa: BLE001 (the library raises bare Exception)
        raise JobError(f"{merges_path}: does not fit vocab.json ({error_text(e)})") from None
    # GPT2Tokenizer puts one space before the whole text, even an empty one or one that
    # starts with a space or a special token: not what ByteLevel(add_prefix_space=True) or
    # a Prepend normalizer (per segment between special tokens, never on empty) do.
    prefix = " " if config.get("add_prefix_space", False) else ""
    tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    for key in ("unk_token", "bos_token", "eos_token"):
        if key not in config and GPT2_DEFAULT_SPECIAL in vocab:
            config[key] = GPT2_DEFAULT_SPECIAL
    add_specials(tok, _config_specials(config, config_path))
    bos = _special_id(tok, config, "bos_token", config_path)
    eos = _special_id(tok, config, "eos_token", config_path)
    add_bos, add_eos = bool(config.get("add_bos_token")), bool(config.get("add_eos_token"))
    tok.post_processor = bos_eos_template(tok, bos if add_bos else None, eos if add_eos else None)
    template = _chat_template(folder, config)
    return finish_tokenizer(tok, vocab_path, "bpe", max_length, bos, eos, template, prefix)


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
    tokens.extend(_added_token(value, where, "added_tokens_decoder") for _, value in ordered)
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
    add_specials(tok, _config_specials(config, config_path))
    cls, sep = tok.token_to_id(special["cls_token"]), tok.token_to_id(special["sep_token"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{special['cls_token']}:0 $A:0 {special['sep_token']}:0",
        special_tokens=[(special["cls_token"], cls), (special["sep_token"], sep)],
    )
    bos = _special_id(tok, config, "bos_token", config_path)
    eos = _special_id(tok, config, "eos_token", config_path)
    return finish_tokenizer(
        tok, path, "wordpiece", max_length, bos, eos, _chat_template(folder, config)
    )


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
