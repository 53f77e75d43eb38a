"""A llama.cpp GGUF file as a Llama-family model: its metadata as a config.json would say
it, and its tensors under Hugging Face's names, Q and K rows back in Hugging Face's order.

One table per architecture, as llama.cpp's converter (convert_hf_to_gguf.py) writes it:

    token_embd.weight           model.embed_tokens.weight
    output_norm.weight          model.norm.weight
    output.weight               lm_head.weight          (absent: tied to token_embd)
    rope_freqs.weight           rope_freqs.weight       (llama3 scaling: theta_i / it)
    blk.N.attn_norm             model.layers.N.input_layernorm
    blk.N.attn_q / _k / _v      model.layers.N.self_attn.q_proj / k_proj / v_proj
    blk.N.attn_output           model.layers.N.self_attn.o_proj
    blk.N.attn_q_norm / _k_norm model.layers.N.self_attn.q_norm / k_norm   (qwen3)
    blk.N.ffn_norm              model.layers.N.post_attention_layernorm
    blk.N.ffn_gate / _up / _down model.layers.N.mlp.gate_proj / up_proj / down_proj

For `llama` the converter permuted q_proj and k_proj rows so that llama.cpp rotates
adjacent pairs; `GgufWeights` undoes it (per head, so a TP rank's rows of whole heads
un-permute on their own). qwen2 and qwen3 rotate halves in llama.cpp too: stored as is.
Quantized tensors are dequantized as they are read, only the rows and columns a rank holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import contiguous
from hpcinfer.io.gguf_file import GgufFile, unpermute_rows
from hpcinfer.io.gguf_header import TensorInfo
from hpcinfer.io.gguf_quants import decoder

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # general.architecture values read here
PERMUTED_QK = ("llama",)  # architectures whose Q/K rows the converter permuted
TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "rope_freqs": "rope_freqs",
}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
ROPE_SCALINGS = ("none", "linear")  # {arch}.rope.scaling.type values read here


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor name, None for one with no place here."""
    stem, dot, kind = gguf_name.rpartition(".")
    if not dot or kind not in ("weight", "bias"):
        return None
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{kind}"
    return None


def gguf_config(gguf: GgufFile) -> dict[str, Any]:
    """The config.json a Hugging Face folder of this model would hold (model_type from
    general.architecture); an architecture or rope scaling hpcinfer does not read is a
    JobError naming the file and the key."""
    arch = gguf.meta_str("general.architecture")
    if arch not in ARCHITECTURES:
        raise JobError(
            f"{gguf.path}: GGUF architecture {arch!r} (general.architecture) is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )

    def key(name: str) -> str:
        return f"{arch}.{name}"

    hidden = gguf.meta_int(key("embedding_length"))
    heads = gguf.meta_int(key("attention.head_count"))
    head_dim = gguf.meta_int(key("attention.key_length"), default=hidden // max(heads, 1))
    value_dim = gguf.meta_int(key("attention.value_length"), default=head_dim)
    if value_dim != head_dim:
        raise JobError(
            f"{gguf.path}: {key('attention.value_length')} {value_dim} differs from "
            f"{key('attention.key_length')} {head_dim}; not supported"
        )
    rotated = gguf.meta_int(key("rope.dimension_count"), default=head_dim)
    if rotated != head_dim:
        raise JobError(
            f"{gguf.path}: {key('rope.dimension_count')} {rotated} rotates part of a "
            f"{head_dim}-dimension head; partial rotation is not supported"
        )
    if "token_embd.weight" not in gguf:
        raise JobError(f"{gguf.path}: tensor 'token_embd.weight' not found")
    rope: dict[str, Any] = {"rope_type": "default"}
    scaling = gguf.meta_str(key("rope.scaling.type"), default="none")
    if scaling not in ROPE_SCALINGS:
        raise JobError(
            f"{gguf.path}: {key('rope.scaling.type')} {scaling!r} is not supported "
            f"(supported: {', '.join(ROPE_SCALINGS)}; llama3 scaling comes as rope_freqs.weight)"
        )
    if scaling == "linear":
        rope = {"rope_type": "linear", "factor": gguf.meta_float(key("rope.scaling.factor"))}
    rope["rope_theta"] = gguf.meta_float(key("rope.freq_base"), default=10000.0)
    return {
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": gguf.meta_int(key("feed_forward_length")),
        "num_hidden_layers": gguf.meta_int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": gguf.meta_int(key("attention.head_count_kv"), default=heads),
        "head_dim": head_dim,
        "rms_norm_eps": gguf.meta_float(key("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": gguf.meta_int(key("context_length"), default=2048),
        "vocab_size": gguf.info("token_embd.weight").shape[0],
        "tie_word_embeddings": "output.weight" not in gguf,
        "hidden_act": "silu",
        "rope_parameters": rope,
        # llama's and qwen3's attention_bias covers o_proj too (qwen2: q/k/v always)
        "attention_bias": "blk.0.attn_output.bias" in gguf
        or (arch == "qwen3" and "blk.0.attn_q.bias" in gguf),
        "mlp_bias": "blk.0.ffn_gate.bias" in gguf,
    }


class GgufWeights:
    """A GGUF file's tensors under Hugging Face names, with `SafetensorsFile`'s surface
    (`path`, `tensors`, `info`, `read`, `read_transposed`), so a shard table reads it."""

    def __init__(self, gguf: GgufFile, config: dict[str, Any]):
        self.file, self.path = gguf, gguf.path
        self.tensors: dict[str, TensorInfo] = {}
        self._names: dict[str, str] = {}
        for name, info in gguf.tensors.items():
            hf = hf_name(name)
            if hf is None:
                raise JobError(
                    f"{gguf.path}: tensor {name!r} has no place in a "
                    f"{config['model_type']} model; not supported"
                )
            decoder(gguf.path, name, info.dtype)  # an unsupported type: JobError, here
            self.tensors[hf], self._names[hf] = info, name
        self.head_dim = int(config["head_dim"])
        self._permuted = set()
        if config["model_type"] in PERMUTED_QK:
            for i in range(int(config["num_hidden_layers"])):
                for proj in ("q_proj", "k_proj"):
                    for kind in ("weight", "bias"):
                        self._permuted.add(f"model.layers.{i}.self_attn.{proj}.{kind}")

    @classmethod
    def open(cls, path: Path, config: dict[str, Any]) -> GgufWeights:
        return cls(GgufFile(path), config)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise JobError(f"{self.path}: tensor {name!r} not found (as GGUF {gguf_name(name)})")
        return self.tensors[name]

    def read(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: Any = "float32",
        check_finite: bool = False,
    ) -> np.ndarray:
        """Tensor `name`[rows, cols], dequantized; Q/K rows (whole heads) in HF order."""
        info = self.info(name)
        dtype = dtype or "float32"
        if name not in self._permuted:
            return self.file.read(self._names[name], rows, cols, dtype, check_finite)
        r0, r1 = contiguous(rows, info.shape[0], "row")
        if r0 % self.head_dim or r1 % self.head_dim:
            raise ValueError(f"{name}: rows {r0}:{r1} are not whole heads of {self.head_dim}")
        data = self.file.read(self._names[name], slice(r0, r1), cols, dtype, check_finite)
        return unpermute_rows(data, (r1 - r0) // self.head_dim) if r1 > r0 else data

    def read_transposed(
        self,
        name: str,
        rows: slice = slice(None),
        cols: slice = slice(None),
        dtype: Any = "float32",
        check_finite: bool = False,
    ) -> np.ndarray:
        if name not in self._permuted:
            return self.file.read_transposed(self._names[name], rows, cols, dtype, check_finite)
        return np.ascontiguousarray(self.read(name, rows, cols, dtype, check_finite).T)


def gguf_name(hf: str) -> str:
    """The GGUF name of a Hugging Face tensor name (for messages)."""
    for stem, mapped in TOP_NAMES.items():
        if hf.startswith(mapped + "."):
            return stem + hf[len(mapped) :]
    parts = hf.split(".")
    if hf.startswith("model.layers.") and len(parts) > 4:
        inner = ".".join(parts[3:-1])
        short = {v: k for k, v in LAYER_NAMES.items()}.get(inner, inner)
        return f"blk.{parts[2]}.{short}.{parts[-1]}"
    return hf
