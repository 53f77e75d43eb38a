"""The tokenizer a job uses, whatever files it was built from, and the finishing steps
every builder shares (added tokens, the BOS/EOS template, truncation without padding).

A `TextTokenizer` truncates to `max_length` (special tokens included), never pads, and
says where it came from. `encode_batch` runs on the `tokenizers` Rayon thread pool; its
size is RAYON_NUM_THREADS (or TOKENIZERS_PARALLELISM=false for one thread), which the
runtime should set with the other per-rank thread counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, processors


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


def finish_tokenizer(
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


def add_specials(tok: Tokenizer, tokens: list[AddedToken]) -> None:
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


def bos_eos_template(
    tok: Tokenizer, bos: int | None, eos: int | None
) -> processors.TemplateProcessing:
    """ "[bos] $A [eos]" with whichever of the two is given."""
    pieces, specials = ["$A"], {}
    for index, at_start in ((bos, True), (eos, False)):
        if index is None:
            continue
        content = tok.id_to_token(index)
        specials[content] = index
        pieces.insert(0, content) if at_start else pieces.append(content)
    return processors.TemplateProcessing(single=pieces, special_tokens=list(specials.items()))
