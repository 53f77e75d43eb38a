"""Tiny encoder models in sentence-transformers folders of each format, and their references.

    /work/refvenv/bin/python data/make_encoder_fixtures.py     # from the repository root

(any venv with `pip install torch==2.13.0 transformers sentence-transformers h5py` works;
the committed files were made with torch 2.13.0+cpu, transformers 5.25.0,
sentence-transformers 6.3.0, tokenizers 0.23.3; the versions are also attributes of the
reference file.) Nothing is downloaded: every tokenizer was trained on data/corpus.jsonl
with the `tokenizers` library (a rerun reuses the committed vocabularies, because the
trainers are not deterministic; --retrain-tokenizers trains afresh, and then every file
changes) and every model is transformers' own random initialisation
(seeded), with initializer_range 0.2 instead of 0.02 and biases and layer-norm parameters
moved off 0 and 1, so that outputs are far from degenerate and a bug in any of them shows.

Writes into data/fixtures/ (see data/fixtures/README.md, "Encoder fixtures"):

- st-v2-mean/          tiny BERT in the sentence-transformers 2.x layout, written by hand
                       (current sentence-transformers only writes the new one): old module
                       type strings, boolean pooling flags, max_seq_length 48 in
                       sentence_bert_config.json, Normalize without a folder, old-style
                       tokenizer_config.json (model_max_length 512) and vocab.txt
- st-v6-cls/           the same BERT saved by sentence-transformers 6 with CLS pooling and
                       max length 40 (which 6.x keeps in tokenizer_config.json)
- st-dense-normalize/  mean pooling, Dense 32 -> 16 with tanh (2_Dense/), Normalize
- st-prompts/          mean pooling, prompts {"query": "query: ", "passage": "passage: "},
                       default_prompt_name "query"
- tiny-roberta/, tiny-xlm-roberta/, tiny-distilbert/: transformers models (byte-level
                       BPE, Unigram and cased WordPiece tokenizers) saved as
                       sentence-transformers folders with mean pooling, max length 48
- encoder-texts.jsonl  the texts: the first 40 of data/corpus.jsonl, then non-ASCII,
                       whitespace, empty and overlong lines
- encoder-reference.h5 one group per fixture and variant: `embeddings` (N, dim) float32
                       from SentenceTransformer(folder).encode, and `token_ids` (vlen int64,
                       the folder's tokenizer with truncation to its max length, special
                       tokens included); pooling modes max, mean, mean_sqrt_len_tokens,
                       weightedmean and lasttoken come from st-v6-cls with its
                       1_Pooling/config.json replaced by the group's `pooling_config`.

hpcinfer itself never needs PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
HIDDEN, HEADS, LAYERS, INTERMEDIATE = 32, 4, 2, 64
POSITIONS = 128  # tokens per text the models can take
MAX_SEQ = 48  # sentence-transformers' max_seq_length: long texts are truncated
V6_MAX_SEQ = 40  # st-v6-cls: a different value, so reading the wrong file shows
DENSE_OUT = 16
BATCH = 8
CORPUS_ROWS = 40
PROMPTS = {"query": "query: ", "passage": "passage: "}
POOLING_MODES = ("max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_FLAGS = {  # sentence-transformers 2.x to 5.x: one boolean per mode
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
BERT_FOLDERS = ("st-v2-mean", "st-v6-cls", "st-dense-normalize", "st-prompts")
OTHER_FOLDERS = ("tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert")

# After the corpus rows: what a tokenizer trained on English docstrings has not seen.
EXTRA_TEXTS = [
    "Café crème brûlée, naïve résumé à la française",
    "ÉCOLE NORMALE SUPÉRIEURE: Ångström, Øresund, Ærø",
    "Cafe\u0301 de\u0301ja\u0300 vu (combining accents, not precomposed)",
    "Die Straße ist groß, die Fußgänger müssen aufpassen.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",  # noqa: RUF001 (Greek Eta)
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Deploy finished 🚀🎉, all 128 ranks OK 👍🏽 (family: 👨‍👩‍👧)",
    "   leading and trailing whitespace\t  ",
    "",
    "a",
    # the overlong line is appended by fixture_texts(): corpus rows 100-119 joined
]


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (HERE / "corpus.jsonl").open()]


def fixture_texts() -> list[str]:
    corpus = corpus_texts()
    long_line = " ".join(corpus[100:120])
    return corpus[:CORPUS_ROWS] + EXTRA_TEXTS + [long_line]


# --- tokenizers, trained with the `tokenizers` library, wrapped by transformers ---------


def train_wordpiece(texts: list[str], vocab_size: int, lowercase: bool) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    return tok.get_vocab()


def train_byte_bpe(texts: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],  # RoBERTa's ids 0-4
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def train_unigram(texts: list[str], vocab_size: int) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # what XLMRobertaTokenizer builds
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],  # XLM-R's ids 0-3
        unk_token="<unk>",
    )
    tok.train_from_iterator(texts, trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    return [*vocab, ("<mask>", 0.0)]  # XLM-R keeps <mask> last


def vocabularies(corpus: list[str], retrain: bool) -> dict:
    """Each tokenizer's vocabulary: the committed one, unless asked to train afresh.

    The `tokenizers` trainers are not deterministic across processes (WordPiece breaks ties
    in hash-map order, Unigram's scores differ in the last bits), so retraining changes
    every fixture; reusing the committed vocabularies keeps a rerun bit-identical.
    """
    found = {
        name: json.loads((OUT / folder / "tokenizer.json").read_text())["model"]
        for name, folder in (
            ("bert", "st-v6-cls"),
            ("distilbert", "tiny-distilbert"),
            ("roberta", "tiny-roberta"),
            ("xlm-roberta", "tiny-xlm-roberta"),
        )
        if not retrain and (OUT / folder / "tokenizer.json").is_file()
    }
    if "bert" in found:
        bert = found["bert"]["vocab"]
    else:
        bert = train_wordpiece(corpus, 2000, lowercase=True)
    if "distilbert" in found:
        distilbert = found["distilbert"]["vocab"]
    else:
        distilbert = train_wordpiece(corpus, 1500, lowercase=False)  # cased, unlike the BERT
    if "roberta" in found:
        merges = [
            tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in found["roberta"]["merges"]
        ]
        roberta = (found["roberta"]["vocab"], merges)
    else:
        roberta = train_byte_bpe(corpus, 2000)
    if "xlm-roberta" in found:
        xlm_roberta = [(piece, float(score)) for piece, score in found["xlm-roberta"]["vocab"]]
    else:
        xlm_roberta = train_unigram(corpus, 2000)
    return {"bert": bert, "distilbert": distilbert, "roberta": roberta, "xlm-roberta": xlm_roberta}


# --- models -------------------------------------------------------------------------------


def perturb(model) -> None:
    """Biases start at 0 and norms at 1: move them, so that both count. Word embeddings x3:
    otherwise the position and type embeddings (same for every text) make all texts'
    embeddings alike (mean pairwise cosine 0.90 for the BERT's mean pooling, 0.81 with this)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith("word_embeddings.weight"):
                param.mul_(3.0)


def save_bert(folder: Path, vocab: dict[str, int]) -> None:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_hidden_layers=LAYERS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = BertModel(config).eval()  # with its pooler, as real checkpoints have
    perturb(model)
    model.save_pretrained(folder)
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(folder)


def save_roberta(folder: Path, kind: str, vocabulary) -> None:
    import torch
    from transformers import (
        RobertaConfig,
        RobertaModel,
        RobertaTokenizer,
        XLMRobertaConfig,
        XLMRobertaModel,
        XLMRobertaTokenizer,
    )

    if kind == "roberta":
        vocab, merges = vocabulary
        tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
        config_cls, model_cls, size, seed = RobertaConfig, RobertaModel, len(vocab), 1
    else:
        pieces = vocabulary
        tokenizer = XLMRobertaTokenizer(vocab=pieces)
        config_cls, model_cls, size, seed = XLMRobertaConfig, XLMRobertaModel, len(pieces), 2
    assert tokenizer.pad_token_id == 1, tokenizer.pad_token_id
    config = config_cls(
        vocab_size=size,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_hidden_layers=LAYERS,
        intermediate_size=INTERMEDIATE,
        # positions start at padding_idx + 1 = 2: 128 tokens need 130 rows (roberta-base:
        # 514 for 512 tokens)
        max_position_embeddings=POSITIONS + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    perturb(model)
    model.save_pretrained(folder)
    tokenizer.model_max_length = POSITIONS
    tokenizer.save_pretrained(folder)


def save_distilbert(folder: Path, vocab: dict[str, int]) -> None:
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    config = DistilBertConfig(
        vocab_size=len(vocab),
        dim=HIDDEN,
        n_heads=HEADS,
        n_layers=LAYERS,
        hidden_dim=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        initializer_range=0.2,
    )
    torch.manual_seed(3)
    model = DistilBertModel(config).eval()
    perturb(model)
    model.save_pretrained(folder)
    DistilBertTokenizer(vocab=vocab, do_lower_case=False).save_pretrained(folder)


# --- sentence-transformers folders ----------------------------------------------------------


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_st_v2(base: Path, folder: Path, vocab: dict[str, int]) -> None:
    """The 2.x layout, by hand, after all-MiniLM-L6-v2 (sentence-transformers 2.2.2's writer)."""
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(base / name, folder / name)
    specials = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "do_lower_case": True,
            **specials,
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "do_basic_tokenize": True,
            "never_split": None,
            "tokenizer_class": "BertTokenizer",
            "model_max_length": 512,  # above max_seq_length and the model's 128 positions
        },
    )
    write_json(folder / "special_tokens_map.json", specials)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)))
    write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",  # 2.x writes no file in it: the folder is absent
                "type": "sentence_transformers.models.Normalize",
            },
        ],
    )
    write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ, "do_lower_case": False}
    )
    # copied from all-MiniLM-L6-v2: what 2.0 wrote
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": "2.0.0",
                "transformers": "4.6.1",
                "pytorch": "1.8.1",
            }
        },
    )
    write_json(folder / "1_Pooling" / "config.json", legacy_pooling_config("mean", v2=True))


def legacy_pooling_config(mode: str, v2: bool = False) -> dict:
    """1_Pooling/config.json as 2.2.2 (four flags) or 2.3 to 5.x (six flags, include_prompt)."""
    flags = list(LEGACY_POOLING_FLAGS.items())[: 4 if v2 else 6]
    config = {"word_embedding_dimension": HIDDEN} | {key: m == mode for m, key in flags}
    return config if v2 else config | {"include_prompt": True}


def save_st(folder: Path, modules, **kwargs) -> None:
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(modules=modules, device="cpu", **kwargs).save(str(folder))


def st_transformer(base: Path, max_seq_length: int):
    from sentence_transformers.sentence_transformer.modules import Transformer

    return Transformer(str(base), max_seq_length=max_seq_length)


def pooling(mode: str):
    from sentence_transformers.sentence_transformer.modules import Pooling

    return Pooling(HIDDEN, pooling_mode=mode)


# --- references ---------------------------------------------------------------------------


def load(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def token_ids(model, folder: Path, texts: list[str], prompt: str) -> list[np.ndarray]:
    """The folder's tokenizer (as sentence-transformers loaded it), truncated, with specials.

    Checked against what sentence-transformers feeds the model and against the `tokenizers`
    library reading tokenizer.json alone (hpcinfer's way).
    """
    from tokenizers import Tokenizer

    max_len = model.max_seq_length
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.no_padding()
    raw.enable_truncation(max_len)
    out = []
    for text in texts:
        ids = model.tokenizer(prompt + text, truncation=True, max_length=max_len)["input_ids"]
        fed = model.preprocess([text], prompt=prompt or None)["input_ids"][0].tolist()
        assert ids == fed, (folder.name, text, ids, fed)
        assert raw.encode(prompt + text).ids == ids, (folder.name, text)
        out.append(np.array(ids, np.int64))
    return out


def encode(model, texts: list[str], **kwargs) -> np.ndarray:
    emb = model.encode(texts, batch_size=BATCH, convert_to_numpy=True, **kwargs)
    return np.asarray(emb, np.float32)


def check_roberta_positions(folder: Path, texts: list[str]) -> str:
    """Position ids start at padding_idx + 1; padding keeps padding_idx. Checked, not assumed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    pad = model.config.pad_token_id
    batch = tok(texts[:4], padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pos = model.embeddings.create_position_ids_from_input_ids(ids, pad)
    expected = torch.where(mask.bool(), torch.cumsum(mask, 1) + pad, torch.full_like(ids, pad))
    assert torch.equal(pos, expected), (pos, expected)
    one = tok(texts[1], return_tensors="pt")["input_ids"]
    n = one.shape[1]
    with torch.no_grad():
        default = model(one).last_hidden_state
        offset = model(one, position_ids=torch.arange(n)[None] + pad + 1).last_hidden_state
        zero = model(one, position_ids=torch.arange(n)[None]).last_hidden_state
    assert torch.equal(default, offset)
    assert (default - zero).abs().max() > 1e-2
    return (
        f"position_ids = padding_idx + 1 + i for the i-th non-pad token (padding_idx = {pad}); "
        "pad tokens get padding_idx; max_position_embeddings "
        f"{model.config.max_position_embeddings} = {POSITIONS} tokens + padding_idx + 1"
    )


def raw_mean_pooling(folder: Path, texts: list[str]) -> np.ndarray:
    """transformers alone: last_hidden_state averaged over the tokens, one text at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    rows = []
    with torch.no_grad():
        for text in texts:
            batch = tok(text, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
            hidden = model(**batch).last_hidden_state[0]
            rows.append(hidden.mean(0).numpy())
    return np.stack(rows).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--retrain-tokenizers",
        action="store_true",
        help="train every vocabulary afresh instead of reusing the committed ones",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(1)
    texts = fixture_texts()
    corpus = corpus_texts()
    OUT.mkdir(exist_ok=True)
    vocabs = vocabularies(corpus, args.retrain_tokenizers)
    for name in BERT_FOLDERS + OTHER_FOLDERS:
        shutil.rmtree(OUT / name, ignore_errors=True)
    with (OUT / "encoder-texts.jsonl").open("w") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")

    groups: dict[str, dict] = {}  # name -> {"embeddings", "token_ids", attrs...}

    def add(name: str, folder: str, model, prompt: str = "", encode_kwargs=None, **attrs):
        emb = encode(model, texts, **(encode_kwargs or {}))
        groups[name] = {
            "embeddings": emb,
            "token_ids": token_ids(model, OUT / folder, texts, prompt),
            "folder": folder,
            "max_seq_length": model.max_seq_length,
            "prompt": prompt,
            **attrs,
        }

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        vocab = vocabs["bert"]
        save_bert(tmp / "bert", vocab)

        # 1. BERT in each sentence-transformers format
        write_st_v2(tmp / "bert", OUT / "st-v2-mean", vocab)
        model = load(OUT / "st-v2-mean")
        assert model.max_seq_length == MAX_SEQ, model.max_seq_length
        add("st-v2-mean", "st-v2-mean", model, pooling="mean", normalize=True)
        # the hand-written 2.x files mean what they say: same as the modules built in 6.x
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize

        same = SentenceTransformer(
            modules=[st_transformer(tmp / "bert", MAX_SEQ), pooling("mean"), Normalize()],
            device="cpu",
        )
        np.testing.assert_allclose(
            encode(same, texts), groups["st-v2-mean"]["embeddings"], atol=1e-6
        )

        save_st(OUT / "st-v6-cls", [st_transformer(tmp / "bert", V6_MAX_SEQ), pooling("cls")])
        model = load(OUT / "st-v6-cls")
        assert model.max_seq_length == V6_MAX_SEQ
        add("st-v6-cls", "st-v6-cls", model, pooling="cls", normalize=False)

        for mode in POOLING_MODES:  # variants of st-v6-cls, in the new and the old format
            variant = tmp / f"pool-{mode}"
            shutil.copytree(OUT / "st-v6-cls", variant)
            new = {"embedding_dimension": HIDDEN, "pooling_mode": mode, "include_prompt": True}
            write_json(variant / "1_Pooling" / "config.json", new)
            model = load(variant)
            emb = encode(model, texts)
            write_json(variant / "1_Pooling" / "config.json", legacy_pooling_config(mode))
            np.testing.assert_array_equal(encode(load(variant), texts), emb)
            add(
                f"pooling-{mode}",
                "st-v6-cls",
                model,
                pooling=mode,
                normalize=False,
                pooling_config=json.dumps(new),
                pooling_config_legacy=json.dumps(legacy_pooling_config(mode)),
            )

        torch.manual_seed(4)
        dense = Dense(HIDDEN, DENSE_OUT, activation_function=torch.nn.Tanh())
        with torch.no_grad():
            dense.linear.weight.mul_(2.0)  # pooled values are ~0.3: keep tanh off its linear part
        save_st(
            OUT / "st-dense-normalize",
            [st_transformer(tmp / "bert", MAX_SEQ), pooling("mean"), dense, Normalize()],
        )
        model = load(OUT / "st-dense-normalize")
        add(
            "st-dense-normalize",
            "st-dense-normalize",
            model,
            pooling="mean",
            normalize=True,
            dense_out_features=DENSE_OUT,
            dense_activation="tanh",
        )

        save_st(
            OUT / "st-prompts",
            [st_transformer(tmp / "bert", MAX_SEQ), pooling("mean")],
            prompts=PROMPTS,
            default_prompt_name="query",
        )
        model = load(OUT / "st-prompts")
        for variant, prompt_name, encode_kwargs in (
            ("default", "query", {}),  # default_prompt_name applies
            ("passage", "passage", {"prompt_name": "passage"}),
            ("none", "", {"prompt": ""}),  # an explicit empty prompt overrides the default
        ):
            add(
                f"st-prompts-{variant}",
                "st-prompts",
                model,
                PROMPTS.get(prompt_name, ""),
                encode_kwargs,
                pooling="mean",
                normalize=False,
                prompt_name=prompt_name,
            )

        # 2. the other encoders, each as a sentence-transformers folder with mean pooling
        save_roberta(tmp / "roberta", "roberta", vocabs["roberta"])
        save_roberta(tmp / "xlm-roberta", "xlm-roberta", vocabs["xlm-roberta"])
        save_distilbert(tmp / "distilbert", vocabs["distilbert"])
        for name, base in (
            ("tiny-roberta", "roberta"),
            ("tiny-xlm-roberta", "xlm-roberta"),
            ("tiny-distilbert", "distilbert"),
        ):
            save_st(OUT / name, [st_transformer(tmp / base, MAX_SEQ), pooling("mean")])
            add(name, name, load(OUT / name), pooling="mean", normalize=False)
        positions = check_roberta_positions(OUT / "tiny-roberta", texts)
        groups["tiny-roberta"]["position_ids"] = positions
        raw = raw_mean_pooling(OUT / "tiny-roberta", texts)
        np.testing.assert_allclose(raw, groups["tiny-roberta"]["embeddings"], atol=1e-5)
        groups["tiny-roberta"]["raw_mean_pooling"] = raw

    for name, group in groups.items():
        emb = group["embeddings"]
        cos = emb @ emb.T / np.outer(*[np.linalg.norm(emb, axis=1)] * 2)
        off = cos[~np.eye(len(emb), dtype=bool)]
        print(f"{name:24s} {emb.shape} mean |x| {np.abs(emb).mean():.3f} cos {off.mean():.3f}")
        assert np.isfinite(emb).all() and off.mean() < 0.95, name

    with h5py.File(OUT / "encoder-reference.h5", "w") as f:
        f.attrs["texts"] = "data/fixtures/encoder-texts.jsonl, field text"
        f.attrs["num_texts"] = len(texts)
        f.attrs["batch_size"] = BATCH
        f.attrs["sentence_transformers"] = str(sentence_transformers.__version__)
        f.attrs["transformers"] = str(transformers.__version__)
        f.attrs["torch"] = str(torch.__version__)
        f.attrs["tokenizers"] = str(tokenizers.__version__)
        for name, group in groups.items():
            g = f.create_group(name)
            g.create_dataset("embeddings", data=group.pop("embeddings"))
            ids = group.pop("token_ids")
            d = g.create_dataset("token_ids", (len(ids),), dtype=h5py.vlen_dtype(np.int64))
            for i, row in enumerate(ids):
                d[i] = row
            if "raw_mean_pooling" in group:
                g.create_dataset("raw_mean_pooling", data=group.pop("raw_mean_pooling"))
            for key, value in group.items():
                g.attrs[key] = value

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {total / 1e6:.2f} MB in all, {len(groups)} reference groups")


if __name__ == "__main__":
    main()
