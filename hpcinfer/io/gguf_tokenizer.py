"""A tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, built with `tokenizers`.

Two vocabularies: "gpt2" (byte-level BPE from tokens + merges, split the way llama.cpp
splits for the file's `tokenizer.ggml.pre`) and "llama" (SentencePiece BPE with byte
fallback, merges rebuilt from tokens + scores). Checked against sentencepiece and
transformers' GGUF loader by tests/test_tokenizer_files.py.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers as pre

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import error_text
from hpcinfer.io.gguf_file import GgufFile
from hpcinfer.io.text_tokenizer import (
    TextTokenizer,
    add_specials,
    bos_eos_template,
    finish_tokenizer,
)

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


def tokenizer_from_gguf(gguf: GgufFile, max_length: int) -> TextTokenizer | None:
    """The tokenizer a GGUF file's metadata describes, or None if it has none (no
    tokenizer.ggml.model)."""
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
    tok.post_processor = bos_eos_template(tok, bos, eos)
    template = gguf.meta_str("tokenizer.chat_template", default=None)
    return finish_tokenizer(
        tok, gguf.path, f"gguf-{model}", max_length, ids["bos"], ids["eos"], template
    )


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
        spelled = token if set(token) <= alphabet else "".join(spell[b] for b in token.encode())
        vocab.setdefault(spelled, index)
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
    except Exception as e:  # noqa: BLE001 (the library raises bare Exception)
        raise JobError(
            f"{gguf.path}: tokenizer.ggml.merges do not fit the tokens ({error_text(e)})"
        ) from None
    steps = [pre.Split(Regex(r), behavior="isolated") for r in splits]
    tok.pre_tokenizer = pre.Sequence(
        [*steps, pre.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) stay whole as special tokens; one not spelled in
    # the byte alphabet is a mislabel and is skipped (transformers does the same).
    add_specials(tok, _gguf_added(tokens, types, alphabet))
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
    add_specials(tok, _gguf_added(tokens, types, None))
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
