"""The Llama family's configuration: rope settings in both styles, GQA shard tables,
bad or unsupported configs and GGUF files as one-line errors, `inspect`, and a GGUF
model's identity. No forward passes beyond a few rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from safetensors.numpy import load_file, save_file

from hpcinfer.errors import JobError
from hpcinfer.io.gguf_file import GgufFile
from hpcinfer.models.llama_config import LlamaConfig
from hpcinfer.models.llama_gguf import gguf_name
from hpcinfer.models.rope import Rope, inverse_frequencies, rope_from_config
from hpcinfer.parallel.tensor import Solo
from tests.conftest import ROOT
from tests.decoders import FIXTURES, MODELS, load, reference_group

WHERE = Path("config.json")
LLAMA, QWEN2 = MODELS["tiny-llama"], MODELS["tiny-qwen2"]


def group_of(size: int, rank: int) -> Solo:
    """A stand-in TP group for loading one rank's shard in-process (never communicates)."""
    group = Solo()
    group.size, group.rank = size, rank
    return group


def copy_model(src: Path, tmp_path: Path, **config_changes) -> Path:
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        config.update(config_changes)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- rope -------------------------------------------------------------------------------


def test_both_config_styles_read_alike():
    old = {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    new = {"rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}}
    assert rope_from_config(old, 64, WHERE) == rope_from_config(new, 64, WHERE)
    plain = rope_from_config({"rope_scaling": None}, 64, WHERE)
    assert (plain.kind, plain.theta) == ("default", 10000.0)
    assert np.allclose(
        inverse_frequencies(rope_from_config(old, 64, WHERE)) * 2,
        5e5 ** -(np.arange(0, 64, 2) / 64),
    )


def test_llama3_frequencies_are_what_gguf_rope_freqs_say():
    """tiny-llama's llama3 rope (config.json) = plain / rope_freqs.weight (its GGUF)."""
    config = json.loads((LLAMA / "config.json").read_text())
    rope = rope_from_config(config, 16, WHERE)
    factors = GgufFile(MODELS["tiny-llama-f16-gguf"]).read("rope_freqs.weight")
    plain = Rope("default", rope.theta, 16, 256)
    np.testing.assert_allclose(
        inverse_frequencies(rope), inverse_frequencies(plain) / factors, rtol=1e-6
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"rope_scaling": {"type": "longrope", "factor": 2.0}},
            "rope type 'longrope' is not supported",
        ),
        ({"rope_parameters": {"rope_type": "linear"}}, "rope type 'linear' needs a factor"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 is not supported"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "per layer type"),
        ({"rope_scaling": "linear"}, "must be an object"),
        ({"rope_theta": "big"}, "invalid rope setting"),
    ],
)
def test_unsupported_rope_settings_are_errors(config, expected):
    with pytest.raises(JobError, match=expected):
        rope_from_config(config, 64, WHERE)


# --- tensor parallelism for GQA ------------------------------------------------------------


def smollm2_like(heads: int = 9, kv_heads: int = 3) -> LlamaConfig:
    config = {
        "model_type": "llama",
        "hidden_size": 64 * heads,
        "intermediate_size": 1536,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": 49152,
    }
    return LlamaConfig.from_json(config, WHERE)


def test_kv_heads_follow_the_query_heads():
    cfg = smollm2_like()
    # tp 2: query heads 0-4 | 5-8; KV head 1 serves heads 3-5, so both ranks hold it
    assert [cfg.head_ranges(r, 2) for r in range(2)] == [
        (range(5), range(2)),
        (range(5, 9), range(1, 3)),
    ]
    # tp 3 divides the 3 KV heads: one each, nothing replicated
    assert [cfg.head_ranges(r, 3)[1] for r in range(3)] == [range(1), range(1, 2), range(2, 3)]
    for heads, kv in ((9, 3), (6, 2), (4, 2), (8, 1), (12, 4)):
        cfg, group = smollm2_like(heads, kv), heads // kv
        for tp in range(1, heads + 1):
            q_all = []
            for r in range(tp):
                q, k = cfg.head_ranges(r, tp)
                assert all(h // group in k for h in q) and len(k) <= len(q) // group + 2
                q_all += list(q)
            assert q_all == list(range(heads))


def test_shard_tables_split_and_replicate_as_documented():
    cfg = smollm2_like()
    table = cfg.shard_table(1, 2)
    k = table.layers[0]["self_attn.k_proj.weight"]
    assert k.rows == (slice(64, 192),)  # KV heads 1-2 of rank 1
    assert table.layers[0]["self_attn.q_proj.weight"].rows == (slice(320, 576),)
    assert table.layers[0]["self_attn.o_proj.weight"].cols == (slice(320, 576),)
    assert "lm_head.weight" not in cfg.shard_table(0, 1, head=True).top  # untied but no head
    assert cfg.misfit(9) is None and "larger than the 9 query heads" in cfg.misfit(10)


# --- bad or unsupported configs: one line ---------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"num_key_value_heads": 3},
            "num_attention_heads 4 is not a multiple of num_key_value_heads 3",
        ),
        ({"hidden_act": "swiglu"}, "hidden_act 'swiglu' is not supported"),
        ({"hidden_size": None}, "missing or invalid"),
        (
            {"intermediate_size": 100},
            r"gate_proj.weight has shape \(160, 64\), expected \(100, 64\)",
        ),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 2}}, "rope type 'longrope'"),
        (
            {"model_type": "mistral", "sliding_window": 0},
            "sliding_window must be a positive integer",
        ),
        (
            {
                "model_type": "qwen2",
                "sliding_window": 4,
                "use_sliding_window": True,
                "layer_types": ["x"],
            },
            "layer_types must list",
        ),
        ({"vocab_size": 1000}, "the tokenizer has 1001 tokens but the model embeds only 1000"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, changes, expected):
    folder = copy_model(LLAMA, tmp_path, **changes)
    with pytest.raises(JobError, match=expected) as e:
        load(folder)
    assert "\n" not in str(e.value)


def test_impossible_tp_names_the_constraint():
    with pytest.raises(
        JobError, match=r"run.tp = 5 cannot work: tp is larger than the 4 query heads"
    ):
        load(LLAMA, tp=group_of(5, 0))


def test_a_missing_head_cannot_score_but_can_embed(tmp_path):
    """A bare model (no "model." prefix, no lm_head: what embedding checkpoints ship)."""
    folder = copy_model(LLAMA, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    bare = {k.removeprefix("model."): v for k, v in tensors.items() if k != "lm_head.weight"}
    save_file(bare, folder / "model.safetensors")
    with pytest.raises(JobError, match=r"lm_head\.weight is missing: without its output head"):
        load(folder)
    ref = reference_group("tiny-llama")
    got = load(folder, task="embed").predict_items(ref["ids"][:6], 256)["embeddings"]
    np.testing.assert_allclose(got, ref["embed_last"][:6], rtol=1e-4, atol=1e-5)


def test_a_sharded_index_naming_a_missing_file_is_an_error(tmp_path):
    folder = copy_model(MODELS["tiny-llama-sharded"], tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(JobError, match=f"shard file {shard} .* is missing"):
        load(folder)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"pooling": "mean"}, "model.pooling = 'mean' does not apply to task 'score'"),
        ({"task": "predict"}, "model.task = 'predict' is not available for model_type 'llama'"),
    ],
)
def test_task_and_pooling_must_fit(kw, expected):
    with pytest.raises(JobError, match=expected):
        load(LLAMA, **kw)


def test_pooling_is_refused_where_the_family_pools_its_own_way():
    with pytest.raises(JobError, match=r"pooling = .mean. is not available for model_type .gpt2"):
        load(ROOT / "data" / "models" / "tiny-gpt2", task="score", pooling="mean")


# --- GGUF files -----------------------------------------------------------------------------


def write_gguf(
    path: Path, arch: str = "llama", meta: dict | None = None, types: dict | None = None
) -> Path:
    """tiny-llama's tensors as a GGUF under llama.cpp's names (F32, Q/K not permuted: these
    files only test what loading refuses), `meta` extra keys, `types` name -> raw ggml type."""
    tensors = load_file(LLAMA / "model.safetensors")
    config = json.loads((LLAMA / "config.json").read_text())
    w = GGUFWriter(path, arch)
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_feed_forward_length(160)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(config["max_position_embeddings"])
    for key, value in (meta or {}).items():
        w.add_string(key, value) if isinstance(value, str) else w.add_float32(key, value)
    for name, data in tensors.items():
        gname = gguf_name(name)
        if gname in (types or {}):
            qtype = GGMLQuantizationType[types[gname]]
            per_block, block_bytes = GGML_QUANT_SIZES[qtype]
            raw = np.zeros((data.shape[0], data.shape[1] // per_block * block_bytes), np.uint8)
            w.add_tensor(gname, raw, raw_dtype=qtype)
        else:
            w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_hand_made_gguf_loads_and_runs_on_token_ids(tmp_path):
    model = load(write_gguf(tmp_path / "m.gguf"))
    assert model.tokenizer is None and model.describe()["source"] == "gguf"
    assert model.predict_items([[1, 2, 3]], 1)["logprob"].shape == (1,)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"arch": "falcon"},
            "GGUF architecture 'falcon' \\(general.architecture\\) is not supported",
        ),
        (
            {"types": {"blk.0.ffn_up.weight": "IQ2_XXS"}},
            "tensor 'blk.0.ffn_up.weight' has type IQ2_XXS",
        ),
        (
            {"meta": {"llama.rope.scaling.type": "yarn"}},
            "llama.rope.scaling.type 'yarn' is not supported",
        ),
        ({"meta": {"llama.attention.key_length": 32.0}}, "holds float"),
    ],
)
def test_unsupported_gguf_files_are_one_line_errors(tmp_path, kw, expected):
    path = write_gguf(tmp_path / "bad.gguf", **kw)
    with pytest.raises(JobError, match=expected) as e:
        load(path)
    assert "\n" not in str(e.value)


def test_a_gguf_path_that_is_missing_or_not_gguf(tmp_path):
    with pytest.raises(JobError, match="GGUF file not found"):
        load(tmp_path / "none.gguf")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(JobError, match=r"a file, but not a \.gguf file"):
        load(tmp_path / "model.bin")


def test_gguf_identity_is_its_header_not_its_tensor_bytes(tmp_path):
    from hpcinfer.checkpoint.identity import model_identity

    path = write_gguf(tmp_path / "m.gguf")
    before = model_identity(path)["model weights"]
    assert before["format"] == "gguf" and before["files"][0]["size"] == path.stat().st_size
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a tensor byte
    path.write_bytes(bytes(raw))
    assert (
        model_identity(path)["model weights"]["files"][0]["header_sha256"]
        == before["files"][0]["header_sha256"]
    )
    other = write_gguf(tmp_path / "other.gguf", meta={"general.name": "x"})
    assert (
        model_identity(other)["model weights"]["files"][0]["header_sha256"]
        != before["files"][0]["header_sha256"]
    )


# --- inspect ---------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["tiny-qwen2", "tiny-llama-q8_0-gguf"])
def test_inspect_knows_the_family_and_agrees_with_what_loading_holds(capsys, group):
    from hpcinfer.cli import main
    from hpcinfer.io.file_checks import human_bytes

    path = MODELS[group]
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    heads = 6 if "qwen2" in group else 4
    assert f"valid tp     1-{heads}\n" in out
    assert f"8 does not fit: tp is larger than the {heads} query heads" in out
    for tp in (1, 2, 3, 4):
        held = max(load(path, tp=group_of(tp, r)).weight_bytes for r in range(tp))
        line = next(s for s in out.splitlines() if s.split()[:1] == [str(tp)])
        assert line.split()[1:3] == human_bytes(held).split(), (tp, line)


def test_inspect_reads_a_gguf_without_mpi4py():
    code = (
        "import sys\n"
        "sys.modules['mpi4py'] = None\n"
        "from hpcinfer.cli import main\n"
        f"sys.exit(main(['inspect', {str(FIXTURES / 'tiny-qwen2-bf16.gguf')!r}]))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert p.returncode == 0, p.stderr
    assert "qwen2 (gguf), 2 layers, hidden 96, 6 heads of 16 over 2 KV heads" in p.stdout
    assert "BF16" in p.stdout
