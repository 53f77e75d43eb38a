"""sentence-transformers options beyond the fixtures' defaults, against sentence-transformers
(data/fixtures/encoder-extras.h5, data/make_encoder_extras.py), and the folder formats'
parsing: what each version writes, what a damaged file says.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hpcinfer.backends import get_backend
from hpcinfer.errors import JobError
from hpcinfer.models import load_model
from hpcinfer.models.embedder import pool
from hpcinfer.models.sentence_transformers import read_head
from tests.conftest import DATA, hpcinfer, write_job
from tests.test_encoders import FIXTURES, TEXTS, assert_matches, reference

EXTRAS = FIXTURES / "encoder-extras.h5"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [json.loads(line)["text"] for line in TEXTS.read_text("utf-8").splitlines()]


def extra_folder(name: str, root: Path) -> tuple[Path, np.ndarray]:
    """A variant's folder rebuilt as data/make_encoder_extras.py built it, and its reference."""
    folder = root / name
    with h5py.File(EXTRAS, "r") as f:
        group = f[name]
        shutil.copytree(FIXTURES / group.attrs["base"], folder)
        if "weights" in group:
            for stale in ("2_Dense", "3_Normalize"):
                shutil.rmtree(folder / stale, ignore_errors=True)
        for relative, text in json.loads(group.attrs["files"]).items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text)
        for module, tensors in group.get("weights", {}).items():
            arrays = {key: tensors[key][()] for key in tensors}
            save_file(arrays, str(folder / module / "model.safetensors"))
        return folder, group["embeddings"][()]


def load(folder: Path, backend: str = "numpy", **options):
    return load_model(folder, get_backend(backend, "float32"), "float32", **options)


def refused(folder: Path, expected: str, **options) -> str:
    """Loading fails with one line that contains `expected`."""
    with pytest.raises(JobError) as e:
        load(folder, **options)
    message = str(e.value)
    assert expected in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("name", ["prompt-excluded", "do-lower-case", "dense-chain"])
def test_option_matches_sentence_transformers(name, texts, tmp_path):
    folder, expected = extra_folder(name, tmp_path)
    model = load(folder)
    got = model.predict_items(texts, 512)["embeddings"]
    assert_matches(got, expected)
    if name == "prompt-excluded":
        assert model.cfg.prompt_skip == 3  # [CLS] query :


@pytest.mark.mpi
@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("prompt-excluded", "numpy"),
        ("dense-chain", "numpy"),
        pytest.param("prompt-excluded", "jax", marks=pytest.mark.slow),
        pytest.param("dense-chain", "jax", marks=pytest.mark.slow),
    ],
)
def test_options_under_tp(tmp_path, name, backend):
    """Prompt left out of pooling, and the Dense chain, at tp 2."""
    folder, expected = extra_folder(name, tmp_path)
    job = write_job(
        tmp_path / f"{name}.toml",
        model={"path": str(folder)},
        input={"path": str(TEXTS)},
        output={"path": str(tmp_path / f"{name}.h5")},
        run={"batch_size": 8, "chunk_size": 32, "backend": backend, "tp": 2},
    )
    p = hpcinfer("run", str(job), "--quiet", n=2, timeout=300)
    assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / f"{name}.h5", "r") as f:
        assert_matches(f["embeddings"][()], expected)


def test_pooling_leaves_out_the_first_tokens():
    from hpcinfer.backends import get_backend

    ops = get_backend("numpy", "float64")
    x = np.arange(1 * 6 * 2, dtype=np.float64).reshape(1, 6, 2)  # two sequences, one row
    segments = np.array([[0, 0, 0, 0, 1, 1]], np.int32)  # lengths 4 and 2, packed
    first, lengths = np.array([0, 4], np.int32), np.array([4, 2], np.int32)
    got = pool(
        x, segments, first, lengths, ("cls", "mean", "lasttoken"), 2,
        xp=np, segment_sum=ops.segment_sum, segment_max=ops.segment_max,
    )  # fmt: skip
    np.testing.assert_array_equal(got[0], [*x[0, 2], *x[0, 2:4].mean(0), *x[0, 3]])
    np.testing.assert_array_equal(got[1], [*x[0, 4], 0, 0, 0, 0])  # nothing left: ST's zeros


# --- what each version writes --------------------------------------------------------------


def copy(name: str, root: Path) -> Path:
    folder = root / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def test_a_plain_hugging_face_folder_mean_pools(tmp_path, texts):
    """No sentence-transformers files: mean pooling, the tokenizer's length (as ST does)."""
    folder = copy("st-prompts", tmp_path)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (folder / name).unlink()
    model = load(folder)
    assert model.cfg.max_length == 48 and model.prompt == ""
    assert_matches(
        model.predict_items(texts, 512)["embeddings"], reference("st-prompts-none")["embeddings"]
    )


@pytest.mark.parametrize(
    ("sbert", "tokenizer_max", "expected"),
    [
        ({"max_seq_length": 20}, 40, 20),  # 2.x-5.x: sentence_bert_config.json wins
        ({"max_seq_length": 500}, 40, 128),  # never more than the position embeddings
        ({}, 40, 40),  # 6.x: the tokenizer's
        ({}, 1e30, 128),  # transformers' "no limit": the position embeddings
        ({}, None, 128),
    ],
)
def test_max_length(tmp_path, sbert, tokenizer_max, expected):
    folder = copy("st-v6-cls", tmp_path)
    write(folder / "sentence_bert_config.json", sbert)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("model_max_length")
    if tokenizer_max is not None:
        config["model_max_length"] = tokenizer_max
    write(folder / "tokenizer_config.json", config)
    assert load(folder).cfg.max_length == expected


def test_roberta_length_leaves_room_for_the_padding_offset(tmp_path):
    folder = copy("tiny-roberta", tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 512
    write(folder / "tokenizer_config.json", config)
    assert load(folder).cfg.max_length == 130 - 1 - 1


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("st-v6-cls", "bert."), ("tiny-roberta", "roberta."), ("tiny-distilbert", "distilbert.")],
)
def test_weight_names_with_the_model_prefix(tmp_path, texts, name, prefix):
    """Older saves keep the base model's prefix (bert.embeddings...); newer ones do not."""
    folder = copy(name, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({prefix + k: v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    model = load(folder)
    assert model.cfg.encoder.prefix == prefix
    assert_matches(model.predict_items(texts, 512)["embeddings"], reference(name)["embeddings"])


@pytest.mark.parametrize(
    ("prompt_name", "prompt"),
    [
        ("auto", "query: "),
        ("query", "query: "),
        ("passage", "passage: "),
        ("none", ""),
        ("document", ""),
    ],
)
def test_prompt_names(prompt_name, prompt):
    assert load(FIXTURES / "st-prompts", prompt_name=prompt_name).prompt == prompt


@pytest.mark.mpi
def test_prompt_name_job_key(tmp_path):
    """model.prompt_name reaches the model; a family without prompts refuses it."""
    few = tmp_path / "few.jsonl"
    few.write_text("".join(TEXTS.read_text("utf-8").splitlines(True)[:5]))
    out = tmp_path / "out.h5"
    job = write_job(
        tmp_path / "job.toml",
        model={"path": str(FIXTURES / "st-prompts"), "prompt_name": "passage"},
        input={"path": str(few)},
        output={"path": str(out)},
        run={"backend": "numpy"},
    )
    p = hpcinfer("run", str(job), "--quiet")
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["model"])["prompt"] == "passage: "
        expected = reference("st-prompts-passage")["embeddings"][:5]
        assert_matches(f["embeddings"][()], expected)
    gpt2 = DATA / "models" / "tiny-gpt2"
    p = hpcinfer("run", str(job), "--set", f"model.path='{gpt2}'", "--set", "output.path='g.h5'")
    assert p.returncode == 2
    assert "model.prompt_name = 'passage' is not available for model_type 'gpt2'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


# --- damaged files: one line naming the file and the key ------------------------------------

DAMAGED = [
    ("modules.json", "{", "modules.json: not valid JSON"),
    ("modules.json", {"a": 1}, "modules.json: expected a JSON list"),
    (
        "modules.json",
        [{"path": ""}],
        "modules.json: module 0 must be an object with a string 'type'",
    ),
    (
        "modules.json",
        [{"type": "x.Transformer", "path": ""}, {"type": "x.WordWeights", "path": "1"}],
        "modules.json: module 1 type 'x.WordWeights' is not supported",
    ),
    (
        "modules.json",
        [{"type": "x.Pooling", "path": "1_Pooling"}],
        "modules.json: expected Transformer, then Pooling",
    ),
    (
        "modules.json",
        [
            {"type": "x.Transformer", "path": "0_Transformer"},
            {"type": "x.Pooling", "path": "1_Pooling"},
        ],
        "the Transformer module lives in '0_Transformer'",
    ),
    (
        "1_Pooling/config.json",
        {"pooling_mode": "median"},
        "config.json: pooling_mode 'median' is not known",
    ),
    (
        "1_Pooling/config.json",
        {"pooling_mode": []},
        "config.json: pooling_mode must be a mode or a list",
    ),
    (
        "1_Pooling/config.json",
        {"pooling_mode_cls_token": "yes"},
        "config.json: pooling_mode_cls_token must be bool",
    ),
    (
        "1_Pooling/config.json",
        {"embedding_dimension": 64, "pooling_mode": "cls"},
        "config.json: embedding_dimension is 64 but the encoder's hidden size is 32",
    ),
    (
        "1_Pooling/config.json",
        {"pooling_mode": "cls", "include_prompt": 0},
        "include_prompt must be bool",
    ),
    (
        "sentence_bert_config.json",
        {"max_seq_length": "long"},
        "sentence_bert_config.json: max_seq_length must be int",
    ),
    ("sentence_bert_config.json", {"max_seq_length": 0}, "max_seq_length must be at least 1"),
    ("sentence_bert_config.json", [], "sentence_bert_config.json: expected a JSON dict"),
    (
        "tokenizer_config.json",
        {"model_max_length": "x"},
        "tokenizer_config.json: model_max_length must be",
    ),
    (
        "config_sentence_transformers.json",
        {"prompts": ["a"]},
        "prompts must be an object of name -> text",
    ),
    (
        "config_sentence_transformers.json",
        {"prompts": {"q": "q: "}, "default_prompt_name": "query"},
        "default_prompt_name 'query' is not one of the prompts (q)",
    ),
]


@pytest.mark.parametrize(("file", "content", "expected"), DAMAGED, ids=[d[2][:40] for d in DAMAGED])
def test_damaged_sentence_transformers_files(tmp_path, file, content, expected):
    folder = copy("st-v6-cls", tmp_path)
    write(folder / file, content)
    assert str(folder) in refused(folder, expected)


DENSE_DAMAGED = [
    ({"out_features": 16}, "2_Dense/config.json: in_features must be a positive integer"),
    (
        {"in_features": 32, "out_features": 16, "bias": "yes"},
        "2_Dense/config.json: bias must be bool",
    ),
    (
        {"in_features": 32, "out_features": 16, "activation_function": "my.Swish"},
        "activation_function 'my.Swish' is not supported",
    ),
    ({"in_features": 24, "out_features": 16}, "in_features 24 does not match the 32 values"),
]


@pytest.mark.parametrize(("config", "expected"), DENSE_DAMAGED)
def test_damaged_dense_configs(tmp_path, config, expected):
    folder = copy("st-dense-normalize", tmp_path)
    write(folder / "2_Dense" / "config.json", config)
    refused(folder, expected)


def test_dense_weights(tmp_path):
    folder = copy("st-dense-normalize", tmp_path)
    weights = folder / "2_Dense" / "model.safetensors"
    tensors = load_file(weights)
    save_file({"linear.weight": tensors["linear.weight"].T.copy()}, str(weights))
    refused(folder, "linear.weight has shape (32, 16), expected (16, 32)")
    weights.unlink()
    refused(folder, "2_Dense/model.safetensors: not found")
    (folder / "2_Dense" / "pytorch_model.bin").write_bytes(b"PK\x03\x04 a pickle")
    refused(folder, "pytorch_model.bin: a PyTorch pickle, which hpcinfer never loads")
    shutil.rmtree(folder / "2_Dense")
    refused(folder, "2_Dense/config.json: not found")


def test_normalize_needs_no_folder(tmp_path, texts):
    folder = copy("st-dense-normalize", tmp_path)
    shutil.rmtree(folder / "3_Normalize")
    got = load(folder).predict_items(texts[:4], 512)["embeddings"]
    assert_matches(got, reference("st-dense-normalize")["embeddings"][:4])


def test_unknown_prompt_name(tmp_path):
    message = refused(FIXTURES / "st-prompts", "no such prompt", prompt_name="questions")
    assert message.startswith("model.prompt_name = 'questions': ")
    assert "st-prompts/config_sentence_transformers.json" in message
    assert "(known: document, passage, query; or 'auto', 'none')" in message


def test_head_of_every_version():
    """What read_head makes of each fixture folder."""
    v2 = read_head(FIXTURES / "st-v2-mean", 32)
    assert (v2.pooling.modes, v2.normalize, v2.max_seq_length) == (("mean",), True, 48)
    v6 = read_head(FIXTURES / "st-v6-cls", 32)
    assert (v6.pooling.modes, v6.normalize, v6.max_seq_length) == (("cls",), False, None)
    dense = read_head(FIXTURES / "st-dense-normalize", 32)
    assert dense.describe() == "mean pooling -> Dense 32->16 tanh -> normalize"
    assert dense.dimension(32) == 16
    prompts = read_head(FIXTURES / "st-prompts", 32)
    assert prompts.default_prompt_name == "query"


CONFIG_DAMAGED = [
    ("tiny-distilbert", {"activation": "silu"}, "config.json: activation 'silu' is not supported"),
    ("tiny-distilbert", {"n_heads": 5}, "config.json: dim 32 is not a multiple of 5 heads"),
    ("tiny-distilbert", {"dim": None}, "config.json: missing or invalid"),
    ("tiny-roberta", {"pad_token_id": 129}, "config.json: pad_token_id 129 is not a valid"),
    ("tiny-roberta", {"vocab_size": 1000}, "the tokenizer has 2000 tokens but"),
    ("tiny-xlm-roberta", {"position_embedding_type": "rotary"}, "only absolute position"),
]


@pytest.mark.parametrize(("name", "changes", "expected"), CONFIG_DAMAGED)
def test_unsupported_encoder_configs(tmp_path, name, changes, expected):
    folder = copy(name, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    write(folder / "config.json", config)
    refused(folder, expected)


def test_tp_must_divide_the_heads():
    from hpcinfer.parallel.tensor import Solo

    class Three(Solo):
        size = 3

    with pytest.raises(JobError, match=r"run\.tp = 3 does not divide the 4 attention heads"):
        load_model(
            FIXTURES / "tiny-distilbert", get_backend("numpy", "float32"), "float32", Three()
        )
