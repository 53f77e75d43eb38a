"""A small random-initialised GPT-2 saved by transformers, and its reference log-probs.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers tokenizers h5py
    /tmp/ref/bin/python data/make_tiny_gpt2.py

Writes data/models/tiny-gpt2/ (config.json, model.safetensors, tokenizer.json: what
`save_pretrained` writes; ~1.4 MB) and data/gpt2-reference.h5. The tokenizer is a
byte-level BPE (GPT-2's scheme) trained on data/corpus.jsonl, so nothing is downloaded.
The model has 12 heads (tp 1, 2, 3 and 4 all divide them), a vocabulary that no tp
divides evenly, and transformers' own random initialisation (seeded), with biases and
layer-norm parameters moved off their initial 0 and 1 so that a bug in either shows.

gpt2-reference.h5 holds, for the first ROWS texts of the corpus (the first ones cut to a
few tokens, so that lengths 0, 1 and 2 are covered), the per-text sum over positions
1..L-1 of log p(token_i | tokens_<i) (`logprob`) and the token count (`num_tokens`),
computed by transformers one text at a time (no padding) in float32 and float64.
hpcinfer itself never needs PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "models" / "tiny-gpt2"
ROWS = 200
MAX_POSITIONS = 128
SHORT = ["", "a", "The cat"]  # rows 0-2: no token, one token, a couple


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (HERE / "corpus.jsonl").open()]


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1001,  # 7 x 11 x 13: no tp in 2..4 divides it
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def main() -> None:
    import tokenizers
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = corpus_texts()
    tok = train_tokenizer(texts)
    FOLDER.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=MAX_POSITIONS,
        n_embd=96,
        n_layer=2,
        n_head=12,
        initializer_range=0.2,  # GPT-2 uses 0.02: logits would be near uniform
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases start at 0 and norms at 1: move them, so both count
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(FOLDER, safe_serialization=True)
    fast.save_pretrained(FOLDER)

    rows = SHORT + texts[: ROWS - len(SHORT)]
    logprob = {"float32": [], "float64": []}
    num_tokens = []
    with torch.no_grad():
        for text in rows:
            ids = tok.encode(text).ids[:MAX_POSITIONS]
            num_tokens.append(len(ids))
            for dtype, torch_dtype in (("float32", torch.float32), ("float64", torch.float64)):
                if len(ids) < 2:
                    logprob[dtype].append(0.0)
                    continue
                logits = model.to(torch_dtype)(torch.tensor([ids])).logits[0, :-1]
                logp = torch.log_softmax(logits, dim=-1)
                logprob[dtype].append(float(logp[torch.arange(len(ids) - 1), ids[1:]].sum()))
    with h5py.File(HERE / "gpt2-reference.h5", "w") as f:
        f.create_dataset("text", data=rows, dtype=h5py.string_dtype())
        f.create_dataset("logprob", data=np.array(logprob["float32"], np.float64))
        f.create_dataset("logprob_float64", data=np.array(logprob["float64"], np.float64))
        f.create_dataset("num_tokens", data=np.array(num_tokens, np.int64))
        f.attrs["texts"] = f"{SHORT} then the first {ROWS - len(SHORT)} rows of data/corpus.jsonl"
        f.attrs["transformers"] = str(transformers.__version__)
        f.attrs["torch"] = str(torch.__version__)
        f.attrs["tokenizers"] = str(tokenizers.__version__)
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    print(f"{FOLDER}: {size / 1e6:.1f} MB; gpt2-reference.h5: {len(rows)} rows")


if __name__ == "__main__":
    main()
