"""Reads a PEFT LoRA adapter folder: validates adapter_config.json and pairs every lora_A with its lora_B."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge_runtime.errors import ConvertError

from .safetensors_io import TensorRef, read_header

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# PEFT prefixes every module path with its wrapper; llama.cpp's converter strips every occurrence of it.
# Each of these changes the adapter's math in a way a GGUF LoRA (W + alpha/rank * B@A) cannot carry; llama.cpp's
# converter writes them anyway and the result is silently wrong. Key in adapter_config.json -> why it is refused.
UNSUPPORTED = MappingProxyType({
    "use_dora": "DoRA adapters (use_dora) are not supported: llama.cpp has no magnitude vectors; merge the adapter "
                "into the base model instead",
    "use_rslora": "rank-stabilized LoRA (use_rslora, scale alpha/sqrt(r)) is not supported: llama.cpp scales by "
                  "alpha/r",
    "alpha_pattern": "per-module lora_alpha (alpha_pattern) is not supported: a GGUF LoRA has one alpha",
    "lora_bias": "LoRA bias terms (lora_bias) are not supported by llama.cpp",
    "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D layout) adapters are not supported",
})
_PEFT_PREFIX = "base_model.model."
_A_MARKERS = (".lora_A.weight", ".lora_embedding_A")
_B_MARKERS = (".lora_B.weight", ".lora_embedding_B")


@dataclass(frozen=True)
class LoraPair:
    """One adapted base weight: its HF name (as in the base checkpoint) and the two low-rank factors."""

    base_name: str
    a: TensorRef  # (rank, in_features); for an embedding (rank, vocab)
    b: TensorRef  # (out_features, rank); for an embedding (hidden, rank)

    @property
    def is_embedding(self) -> bool:
        return ".lora_embedding_" in self.a.name

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class Adapter:
    """A validated adapter: scaling alpha, the base model it names, and its factor pairs in file order."""

    folder: Path
    alpha: float
    base_model: str | None
    pairs: tuple[LoraPair, ...]


def _load_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{folder}: no {CONFIG_NAME} (not a PEFT adapter folder)") from None
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: unreadable adapter config: {exc}") from exc
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return config


def _check_config(path: Path, config: dict[str, Any]) -> float:
    """The lora_alpha to write; refuses what llama.cpp's alpha/rank scaling cannot express."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ConvertError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA; only LoRA adapters "
                           "can be converted to GGUF")
    for key, why in UNSUPPORTED.items():
        if config.get(key):
            raise ConvertError(f"{path}: {why}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ConvertError(f"{path}: lora_alpha is missing or not a number")
    return float(alpha)


def _weights(folder: Path) -> dict[str, TensorRef]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise ConvertError(f"{folder}: adapter_model.bin is a pickle that needs torch to read; re-save the "
                               "adapter with safe_serialization=True (adapter_model.safetensors)")
        raise ConvertError(f"{folder}: no {WEIGHTS_NAME}")
    return read_header(path)


def base_tensor_name(name: str) -> str:
    """The base checkpoint weight an adapter tensor belongs to (same rules as llama.cpp's converter)."""
    base = name.replace(_PEFT_PREFIX, "")
    for marker in (*_A_MARKERS, *_B_MARKERS):
        base = base.replace(marker, ".weight")
    return base.replace("language_model.", "")


def _refuse_extra(name: str) -> None:
    """A tensor that is neither factor: say what it is and why a GGUF LoRA cannot hold it."""
    if ".lora_magnitude_vector" in name:
        raise ConvertError(f"adapter tensor {name!r} is a DoRA magnitude vector; DoRA is not supported")
    if "_layernorm" in name or ".norm" in name:
        raise ConvertError(f"adapter tensor {name!r} is a full norm weight (mergekit-extract-lora); only "
                           "lora_A/lora_B pairs are supported")
    if "embed_tokens" in name or "lm_head" in name:
        raise ConvertError(f"adapter tensor {name!r} is a full embedding/output matrix (modules_to_save or "
                           "resized vocabulary); a GGUF LoRA cannot carry it, merge the adapter instead")
    raise ConvertError(f"adapter tensor {name!r} is not a lora_A or lora_B weight")


def _pair(weights: dict[str, TensorRef]) -> tuple[LoraPair, ...]:
    halves: dict[str, dict[str, TensorRef]] = {}
    for name, ref in weights.items():  # sorted by name, the order llama.cpp's converter reads them in
        side = "a" if any(m in name for m in _A_MARKERS) else "b" if any(m in name for m in _B_MARKERS) else None
        if side is None:
            if ".base_layer.weight" in name:
                continue  # PEFT may save the untouched base weight beside an embedding LoRA
            _refuse_extra(name)
            continue
        halves.setdefault(base_tensor_name(name), {})[side] = ref
    pairs: list[LoraPair] = []
    for base_name, sides in halves.items():
        if "a" not in sides or "b" not in sides:
            missing = "lora_A" if "a" not in sides else "lora_B"
            raise ConvertError(f"adapter has no {missing} for {base_name!r} (incomplete adapter file)")
        a, b = sides["a"], sides["b"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise ConvertError(f"adapter factors for {base_name!r} do not fit together: lora_A {list(a.shape)}, "
                               f"lora_B {list(b.shape)} (expected (r, in) and (out, r))")
        pairs.append(LoraPair(base_name, a, b))
    if not pairs:
        raise ConvertError("adapter has no lora_A/lora_B tensors")
    return tuple(pairs)


def load_adapter(folder: Path) -> Adapter:
    """Read and validate a PEFT adapter folder; any unsupported feature raises one ConvertError line."""
    if not folder.is_dir():
        raise ConvertError(f"{folder}: no such adapter folder")
    config = _load_config(folder)
    alpha = _check_config(folder / CONFIG_NAME, config)
    pairs = _pair(_weights(folder))
    base = config.get("base_model_name_or_path")
    return Adapter(folder, alpha, str(base) if base else None, pairs)
