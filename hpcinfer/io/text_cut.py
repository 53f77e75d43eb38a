"""Texts cut before tokenizing, so one huge row costs a few MB, not gigabytes.

A tokenizer keeps only the first `max_length` tokens, but it builds every token of the text
first (~500 bytes each in `tokenizers`): a 300 MB line would cost gigabytes. So a text is
first cut to `cut_chars(tok)` = max_length x the vocabulary's longest token, plus a margin:
in ordinary text the first max_length tokens end well inside that.

Not in every text: runs of whitespace, characters a normalizer drops and unknown words
(WordPiece's [UNK] stands for a whole word of any length) cover characters that no
vocabulary entry accounts for. So a cut text is accepted only when its tokens prove the
cut changed nothing: the tokenizer had to truncate it (more than max_length tokens), and
the last token kept ends at least MARGIN_CHARS before the cut (the word at the cut cannot
reach back to it). Otherwise the cut widens (doubling, by WIDEN_STEP_CHARS at most: the
tokens of the text added are what costs memory), up to MAX_CUT_CHARS; a row still short
of proof there is tokenized from its first MAX_CUT_CHARS characters. Every row cut, and every
row the tokenizer truncated, is counted (the model's `rows_truncated`).

Readers cut too (`TextCut`): a row longer than the cut comes as a `TextPrefix`, which can
read more of its row when the proof needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hpcinfer.io.text_tokenizer import TextTokenizer

MARGIN_CHARS = 256  # past the last token kept: more than a WordPiece word (100) can span
MAX_CUT_CHARS = 1 << 20  # the most of one row ever tokenized
WIDEN_STEP_CHARS = 1 << 16  # a widened cut adds at most this much (~32 MB of tokens)
ENCODE_BATCH_CHARS = 1 << 18  # characters tokenized together (bounds the tokens in memory)


@dataclass(frozen=True)
class TextCut:
    """How much of each row a reader keeps: `chars` of a text, `ids` token ids."""

    chars: int
    ids: int


@dataclass(frozen=True)
class TextPrefix:
    """The start of a row's text that is longer than `text`; `more(n)` reads its first
    n characters again (a str when that is the whole text, else a TextPrefix)."""

    text: str
    more: Callable[[int], str | TextPrefix] = field(repr=False, compare=False)


@dataclass
class Encoded:
    """Token ids per text, and how many texts lost tokens (cut, or truncated)."""

    ids: list[np.ndarray]
    truncated: int


def prepend(prompt: str, text: str | TextPrefix) -> str | TextPrefix:
    """`prompt` + the text, cut or not (a model that puts a prompt before every text)."""
    if isinstance(text, str):
        return prompt + text
    return TextPrefix(
        prompt + text.text, lambda n: prepend(prompt, text.more(max(1, n - len(prompt))))
    )


@lru_cache(maxsize=16)
def longest_token_chars(tok: TextTokenizer) -> int:
    """The most characters of text one vocabulary entry stands for (WordPiece's "##"
    continuation mark is not text; a byte-level entry counts its bytes, at least its
    characters)."""
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    return max((len(t[2:]) if t.startswith("##") else len(t) for t in vocab), default=1)


def cut_chars(tok: TextTokenizer) -> int:
    """Characters a text is cut to before it is tokenized."""
    return min(MAX_CUT_CHARS, tok.max_length * max(1, longest_token_chars(tok)) + MARGIN_CHARS)


def encode_texts(tok: TextTokenizer, texts: Sequence[str | TextPrefix]) -> Encoded:
    """Token ids of each text, as `tok.encode_batch` would give for the whole text (see
    the module docstring for the one exception), tokenizing at most a few MB at a time."""
    limit = cut_chars(tok)
    given = [_start(t, limit) for t in texts]
    ids: list[np.ndarray] = []
    truncated = 0
    for batch in _batches(given):
        encodings = tok.tokenizer.encode_batch([tok.prefix + given[i][0] for i in batch])
        for i, first in zip(batch, encodings, strict=True):
            text, was_cut = given[i]
            e, short_of_proof = first, False
            if was_cut and not _proven(first, len(tok.prefix) + len(text)):
                e, short_of_proof = _widen(tok, texts[i], limit)
            ids.append(np.asarray(e.ids, dtype=np.int64))
            truncated += bool(e.overflowing) or short_of_proof
    return Encoded(ids, truncated)


def _start(text: str | TextPrefix, limit: int) -> tuple[str, bool]:
    """The text cut to `limit` characters, and whether that lost any."""
    if isinstance(text, TextPrefix):
        return text.text[:limit], True
    return (text[:limit], True) if len(text) > limit else (text, False)


def _batches(given: list[tuple[str, bool]]) -> list[list[int]]:
    """Consecutive indices whose texts add up to at most ENCODE_BATCH_CHARS (or one)."""
    batches, current, size = [], [], 0
    for i, (text, _) in enumerate(given):
        if current and size + len(text) > ENCODE_BATCH_CHARS:
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += len(text)
    return [*batches, current] if current else batches


def _proven(e, length: int) -> bool:
    """The cut text (`length` characters as tokenized) was truncated, and its last kept
    token ends MARGIN_CHARS before the cut: the whole text would keep the same tokens."""
    if not e.overflowing:
        return False
    marks = zip(e.offsets, e.special_tokens_mask, strict=True)
    kept = [end for (_, end), special in marks if not special]
    return not kept or max(kept) <= length - MARGIN_CHARS


def _widen(tok: TextTokenizer, text: str | TextPrefix, limit: int):
    """Tokenize more and more of one text until the cut is proven harmless (or the whole
    text is in); (encoding, True) if MAX_CUT_CHARS was reached without proof."""
    n = limit
    while True:
        n = min(2 * n, n + WIDEN_STEP_CHARS, MAX_CUT_CHARS)
        if isinstance(text, TextPrefix):
            longer = text.more(n)
            part, was_cut = _start(longer, n)
        else:
            part, was_cut = text[:n], len(text) > n
        e = tok.tokenizer.encode(tok.prefix + part)
        if not was_cut or _proven(e, len(tok.prefix) + len(part)):
            return e, False
        if n >= MAX_CUT_CHARS:
            return e, True
