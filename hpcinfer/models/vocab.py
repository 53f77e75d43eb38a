"""Vocabulary-parallel embedding and log-softmax (Megatron's), shared by the decoders.

Under tensor parallelism over tp ranks, rank r holds the rows [v_r, v_{r+1}) of the token
embedding (and of the output head, its own or tied to the embedding):

    x = vocab_lookup(E_r, ids)          each rank fills the ids in its range, one all-reduce
    logp = token_logprobs(x, W_r, ids)  each rank computes only its slice of the logits,
                                        reduces it to a log-sum-exp and the target's logit;
                                        one all-gather of those two numbers per position

so the (B, L, V) logits never cross ranks, and the head's weights and compute are 1/tp.
Padded vocabularies (more embedding rows than tokenizer tokens, as Qwen2 ships) need
nothing special: the padded rows are rows of the head like any other, as in transformers.
"""

from __future__ import annotations

from typing import Any

from hpcinfer.parallel.tensor import Collectives, matmul, reduce_from_tp_region

LOGITS_BYTES = 256 * 2**20  # the head runs over as many rows as fit in this at a time
VOCAB_BLOCK = 8192  # ... and over this many vocabulary rows at a time


def vocab_lookup(table: Any, ids: Any, start: int, xp: Any, tp: Collectives) -> Any:
    """Rows `ids` of a vocabulary split over the group: each rank fills the ids in its
    range [start, start + len(table)), zeros elsewhere; one all-reduce completes them."""
    if tp.size == 1:
        return table[ids]
    local = ids - start
    inside = (local >= 0) & (local < table.shape[0])
    found = table[xp.where(inside, local, 0)] * inside[..., None].astype(table.dtype)
    return reduce_from_tp_region(found, tp)


def token_logprobs(x: Any, head: Any, ids: Any, start: int, xp: Any, tp: Collectives) -> Any:
    """log p(ids[:, i+1] | ..i) from final hidden states x (B, L, H), (B, L-1), with the
    vocabulary split over the group (`head`: this rank's rows [start, start + V_r)).

    The rank's slice is itself taken VOCAB_BLOCK rows at a time, its log-sum-exp kept
    running (max and rescaled sum, as flash attention does): a block of logits and of
    head rows stays in cache, and the logits of a large vocabulary never exist whole."""
    xs = x[:, :-1]
    local = ids[:, 1:] - start
    peak = total = target = None
    for first in range(0, head.shape[0], VOCAB_BLOCK):
        logits = matmul(xs, head[first : first + VOCAB_BLOCK].T)  # (B, L-1, n)
        top = logits.max(axis=-1)
        if peak is not None:
            top = xp.maximum(top, peak)
        part = xp.exp(logits - top[..., None]).sum(axis=-1)
        total = part if peak is None else total * xp.exp(peak - top) + part
        peak = top
        offset = local - first
        inside = (offset >= 0) & (offset < logits.shape[-1])
        where = xp.where(inside, offset, 0)[..., None]
        picked = xp.take_along_axis(logits, where, axis=-1)[..., 0] * inside.astype(logits.dtype)
        target = picked if target is None else target + picked  # on one block of one rank
    lse = peak + xp.log(total)  # this rank's slice
    if tp.size == 1:
        return target - lse
    parts = tp.all_gather_last(xp.stack([lse, target], axis=-1), (2,) * tp.size)  # (B, L-1, 2tp)
    lses, targets = parts[..., 0::2], parts[..., 1::2]
    top = lses.max(axis=-1)
    whole = top + xp.log(xp.exp(lses - top[..., None]).sum(axis=-1))  # over the whole vocab
    return targets.sum(axis=-1) - whole


def head_logprobs(
    x: Any, head: Any, ids: Any, start: int, xp: Any, tp: Collectives, logits_bytes: int
) -> Any:
    """`token_logprobs` a few rows at a time: the logits (rows, L-1, V_r) are the largest
    temporaries of a decoder, so at most `logits_bytes` of them exist at once."""
    batch, seq = ids.shape
    step = max(1, logits_bytes // max(1, seq * head.shape[0] * x.dtype.itemsize))
    parts = [
        token_logprobs(x[r : r + step], head, ids[r : r + step], start, xp, tp)
        for r in range(0, batch, step)
    ]
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)


def decoder_collectives(layers: int, hidden: int, tp: int) -> dict[str, int]:
    """A decoder's collectives per forward pass under TP (for `inspect`): two all-reduces
    a layer and one for the vocabulary-parallel embedding; one all-gather for the head."""
    if tp == 1:
        return {"all_reduce": 0, "all_gather": 0, "values_per_row": 0}
    reduces = 2 * layers + 1
    return {
        "all_reduce": reduces,
        "all_gather": 1,  # log-sum-exp and target logit of each position's vocab slice
        "values_per_row": reduces * hidden + 2 * tp,
    }
