"""The supported architectures as declarative entries: HF names, GGUF arch, tokenizer kind, tensor fixes, metadata."""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edge_runtime.errors import ConvertError

Hparams = Mapping[str, Any]
MetadataFn = Callable[["Model", gguf.GGUFWriter], None]
ExtraFn = Callable[["Model"], list[tuple[str, np.ndarray]]]


@dataclass(frozen=True)
class Arch:
    """How one HF architecture family becomes GGUF; the converter's only per-architecture knowledge."""

    name: str
    hf_names: tuple[str, ...]
    gguf_arch: gguf.MODEL_ARCH
    vocab: str  # "spm-or-bpe", "spm", "spm-phi3", "spm-gemma", "spm-or-bpe-gemma3"
    metadata: tuple[MetadataFn, ...]
    permute_qk: bool = False  # HF stores llama Q/K rotary halves split; llama.cpp wants them interleaved
    norm_plus_one: bool = False  # Gemma's RMSNorm scales by (1 + w)
    drop: tuple[str, ...] = ()
    trim_embeddings_to_vocab: bool = False
    extra_tensors: tuple[ExtraFn, ...] = field(default=())


@dataclass(frozen=True)
class Model:
    """A checkpoint's config with the rope settings normalised over transformers 4.x and 5.x layouts."""

    folder: Path
    arch: Arch
    hf_arch: str
    hparams: Mapping[str, Any]
    rope: Mapping[str, Any]  # global rope parameters: rope_theta, rope_type, factor, ...
    rope_local_theta: float | None

    def find(self, *keys: str, default: Any = None, required: bool = False) -> Any:
        for key in keys:
            if key in self.hparams and self.hparams[key] is not None:
                return self.hparams[key]
        if required:
            raise ConvertError(f"{self.folder / 'config.json'}: missing {' / '.join(keys)}")
        return default

    @property
    def block_count(self) -> int:
        return int(self.find("num_hidden_layers", "n_layers", "n_layer", "num_layers", required=True))

    @property
    def head_dim(self) -> int:
        head_dim = self.find("head_dim")
        if head_dim is None:
            head_dim = self.find("hidden_size", required=True) // self.find("num_attention_heads", required=True)
        return int(head_dim)


def _text_metadata(m: Model, w: gguf.GGUFWriter) -> None:
    """The keys every text model gets (same choices as llama.cpp's reference converter)."""
    w.add_block_count(m.block_count)
    if (n_ctx := m.find("max_position_embeddings", "n_ctx", "n_positions", "max_length")) is not None:
        w.add_context_length(int(n_ctx))
    if (n_embd := m.find("hidden_size", "n_embd", "dim")) is not None:
        w.add_embedding_length(int(n_embd))
    if (n_ff := m.find("intermediate_size", "n_inner", "hidden_dim")) is not None:
        w.add_feed_forward_length(int(n_ff))
    if (n_head := m.find("num_attention_heads", "n_head", "n_heads")) is not None:
        w.add_head_count(int(n_head))
    if (n_kv := m.find("num_key_value_heads", "n_kv_heads")) is not None:
        w.add_head_count_kv(int(n_kv))
    rope_type = m.rope.get("rope_type")
    factor = m.rope.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        w.add_rope_scaling_orig_ctx_len(int(m.rope["original_max_position_embeddings"]))
    elif rope_type in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    elif rope_type not in (None, "default", "llama3", "dynamic"):
        raise ConvertError(f"rope type {rope_type!r} is not supported")
    if (theta := m.rope.get("rope_theta")) is not None:
        w.add_rope_freq_base(float(theta))
    if m.rope_local_theta is not None:
        w.add_rope_freq_base_swa(float(m.rope_local_theta))
    if (eps := m.find("rms_norm_eps", "norm_eps")) is not None:
        w.add_layer_norm_rms_eps(float(eps))
    if (head_dim := m.hparams.get("head_dim")) is not None:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))


def _llama_metadata(m: Model, w: gguf.GGUFWriter) -> None:
    w.add_vocab_size(int(m.find("vocab_size", required=True)))
    w.add_rope_dimension_count(m.head_dim)


def _gemma_metadata(m: Model, w: gguf.GGUFWriter) -> None:
    w.add_context_length(int(m.find("max_position_embeddings", required=True)))
    w.add_embedding_length(int(m.find("hidden_size", required=True)))
    w.add_block_count(m.block_count)
    w.add_feed_forward_length(int(m.find("intermediate_size", required=True)))
    n_head = int(m.find("num_attention_heads", required=True))
    w.add_head_count(n_head)
    w.add_head_count_kv(int(m.find("num_key_value_heads", default=n_head)))
    w.add_layer_norm_rms_eps(float(m.find("rms_norm_eps", required=True)))
    w.add_key_length(m.head_dim)
    w.add_value_length(m.head_dim)


def _gemma2_metadata(m: Model, w: gguf.GGUFWriter) -> None:
    w.add_attn_logit_softcapping(float(m.find("attn_logit_softcapping", required=True)))
    w.add_final_logit_softcapping(float(m.find("final_logit_softcapping", required=True)))
    w.add_sliding_window(int(m.find("sliding_window", required=True)))


def _drop(w: gguf.GGUFWriter, *keys: str) -> None:
    """Forget keys an earlier metadata step set, so a later one can set them without duplicate warnings."""
    for key in keys:
        w.kv_data[0].pop(key.format(arch=w.arch), None)


def _gemma3_metadata(m: Model, w: gguf.GGUFWriter) -> None:
    k = gguf.Keys
    _drop(w, k.LLM.CONTEXT_LENGTH, k.Attention.HEAD_COUNT, k.Attention.LAYERNORM_RMS_EPS, k.Attention.KEY_LENGTH,
          k.Attention.VALUE_LENGTH, k.Rope.FREQ_BASE, k.Attention.HEAD_COUNT_KV)
    w.add_context_length(int(m.find("max_position_embeddings", default=131072)))
    w.add_head_count(int(m.find("num_attention_heads", default=8)))
    w.add_layer_norm_rms_eps(float(m.find("rms_norm_eps", default=1e-6)))
    w.add_key_length(int(m.find("head_dim", default=256)))
    w.add_value_length(int(m.find("head_dim", default=256)))
    w.add_rope_freq_base(float(m.rope.get("rope_theta", 1_000_000.0)))
    if m.hparams.get("attn_logit_softcapping") is not None:
        raise ConvertError("Gemma-3 checkpoints must not set attn_logit_softcapping")
    if final_cap := m.hparams.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(final_cap))
    if m.hparams.get("sliding_window_pattern") != 1:
        w.add_sliding_window(int(m.find("sliding_window", required=True)))
    w.add_head_count_kv(int(m.find("num_key_value_heads", default=4)))


def _phi3_rope_dims(m: Model) -> int:
    n_embd = int(m.find("hidden_size", "n_embd", required=True))
    n_head = int(m.find("num_attention_heads", "n_head", required=True))
    return int(float(m.rope.get("partial_rotary_factor", 1.0)) * n_embd) // n_head


def _phi3_metadata(m: Model, w: gguf.GGUFWriter) -> None:
    w.add_context_length(int(m.find("max_position_embeddings", "n_positions", required=True)))
    w.add_rope_scaling_orig_ctx_len(int(m.rope.get("original_max_position_embeddings",
                                                    m.find("max_position_embeddings", "n_positions"))))
    w.add_embedding_length(int(m.find("hidden_size", "n_embd", required=True)))
    w.add_feed_forward_length(int(m.find("intermediate_size", required=True)))
    w.add_block_count(m.block_count)
    w.add_head_count(int(m.find("num_attention_heads", "n_head", required=True)))
    w.add_head_count_kv(int(m.find("num_key_value_heads", "n_head_kv", required=True)))
    w.add_layer_norm_rms_eps(float(m.find("rms_norm_eps", required=True)))
    w.add_rope_dimension_count(_phi3_rope_dims(m))
    w.add_rope_freq_base(float(m.rope.get("rope_theta", 10000.0)))
    w.add_sliding_window(int(m.hparams.get("sliding_window") or 0))


def _llama3_rope_freqs(m: Model) -> list[tuple[str, np.ndarray]]:
    """Llama-3.x long-context rope scaling is a per-frequency factor tensor in GGUF."""
    if str(m.rope.get("rope_type", "")).lower() != "llama3":
        return []
    base = float(m.rope.get("rope_theta", 10000.0))
    dim = m.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(m.rope.get("factor", 8.0))
    low = float(m.rope.get("low_freq_factor", 1.0))
    high = float(m.rope.get("high_freq_factor", 4.0))
    old_ctx = float(m.rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors: list[float] = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", np.array(factors, dtype=np.float32))]


def _phi3_rope_factors(m: Model) -> list[tuple[str, np.ndarray]]:
    long_f, short_f = m.rope.get("long_factor"), m.rope.get("short_factor")
    if not long_f:
        return []
    if not short_f or len(long_f) != len(short_f) or len(long_f) != _phi3_rope_dims(m) / 2:
        raise ConvertError("Phi-3 rope long_factor/short_factor are missing or have the wrong length")
    return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", np.array(long_f, np.float32)),
            (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", np.array(short_f, np.float32))]


def _phi3_attn_factor(m: Model, w: gguf.GGUFWriter) -> None:
    if not m.rope.get("long_factor"):
        return
    max_pos = float(m.find("max_position_embeddings", "n_positions", required=True))
    orig = float(m.rope.get("original_max_position_embeddings", max_pos))
    scale = max_pos / orig
    kind = str(m.rope.get("rope_type", "")).lower()
    if kind in ("su", "longrope"):
        attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    elif kind == "yarn":
        attn = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise ConvertError(f"Phi-3 rope scaling type {kind!r} is not supported")
    w.add_rope_scaling_attn_factors(attn)


ARCHS: tuple[Arch, ...] = (
    Arch("llama", ("LlamaForCausalLM", "LLaMAForCausalLM"), gguf.MODEL_ARCH.LLAMA, "spm-or-bpe",
         (_text_metadata, _llama_metadata), permute_qk=True, extra_tensors=(_llama3_rope_freqs,)),
    Arch("mistral", ("MistralForCausalLM",), gguf.MODEL_ARCH.LLAMA, "spm-or-bpe",
         (_text_metadata, _llama_metadata), permute_qk=True, extra_tensors=(_llama3_rope_freqs,)),
    Arch("qwen2", ("Qwen2ForCausalLM",), gguf.MODEL_ARCH.QWEN2, "spm-or-bpe", (_text_metadata,)),
    Arch("qwen3", ("Qwen3ForCausalLM",), gguf.MODEL_ARCH.QWEN3, "spm-or-bpe", (_text_metadata,)),
    Arch("gemma", ("GemmaForCausalLM",), gguf.MODEL_ARCH.GEMMA, "spm-gemma", (_gemma_metadata,),
         norm_plus_one=True, drop=("lm_head.weight",)),
    Arch("gemma2", ("Gemma2ForCausalLM",), gguf.MODEL_ARCH.GEMMA2, "spm", (_gemma_metadata, _gemma2_metadata),
         norm_plus_one=True, drop=("lm_head.weight",)),
    Arch("gemma3", ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), gguf.MODEL_ARCH.GEMMA3,
         "spm-or-bpe-gemma3", (_text_metadata, _gemma3_metadata), norm_plus_one=True,
         trim_embeddings_to_vocab=True),
    Arch("phi3", ("Phi3ForCausalLM",), gguf.MODEL_ARCH.PHI3, "spm-phi3", (_phi3_metadata, _phi3_attn_factor),
         extra_tensors=(_phi3_rope_factors,)),
)


def supported_names() -> list[str]:
    return sorted(name for arch in ARCHS for name in arch.hf_names)


def load_model(folder: Path) -> Model:
    """Read config.json, pick the Arch entry, normalise rope settings; unsupported -> ConvertError."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConvertError(f"{folder}: no config.json (not a Hugging Face model folder)") from exc
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{config_file}: unreadable config: {exc}") from exc
    if not isinstance(config, dict):
        raise ConvertError(f"{config_file}: not a JSON object")
    names = config.get("architectures") or []
    hf_arch = names[0] if names else str(config.get("model_type", "?"))
    arch = next((a for a in ARCHS if hf_arch in a.hf_names), None)
    if arch is None:
        raise ConvertError(f"architecture {hf_arch!r} is not supported; supported: {', '.join(supported_names())}")
    hparams = dict(config)
    if isinstance(config.get("text_config"), dict):
        hparams.update(config["text_config"])
    rope_all = hparams.get("rope_parameters") or hparams.get("rope_scaling") or {}
    rope_all = dict(rope_all) if isinstance(rope_all, dict) else {}
    local_theta = hparams.get("rope_local_base_freq")
    if "full_attention" in rope_all or "sliding_attention" in rope_all:
        rope = dict(rope_all.get("full_attention") or {})
        local_theta = (rope_all.get("sliding_attention") or {}).get("rope_theta", local_theta)
    else:
        rope = rope_all
    # transformers 4.x keeps these at the top level; 5.x moves them into rope_parameters.
    if "rope_theta" not in rope and hparams.get("rope_theta") is not None:
        rope["rope_theta"] = hparams["rope_theta"]
    if "rope_type" not in rope and rope.get("type") is not None:
        rope["rope_type"] = rope["type"]
    for key in ("partial_rotary_factor", "original_max_position_embeddings"):
        if key not in rope and hparams.get(key) is not None:
            rope[key] = hparams[key]
    return Model(folder, arch, hf_arch, hparams, rope, local_theta)
