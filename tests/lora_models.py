"""The tiny random llama fixture and its PEFT adapter, converted to GGUF with our converters (engine/server tests)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASE_SRC = ROOT / "tests" / "fixtures" / "convert" / "llama"
ADAPTER_SRC = ROOT / "tests" / "fixtures" / "lora" / "llama"
OTHER_ARCH_SRC = ROOT / "tests" / "fixtures" / "lora" / "qwen2"
OTHER_BASE_SRC = ROOT / "tests" / "fixtures" / "convert" / "qwen2"


@dataclass(frozen=True)
class TinyLora:
    """base: F32 GGUF of the tiny llama; adapter: its F32 GGUF LoRA; tokens/golden: transformers+peft logits of
    the adapted model at every position of `tokens` (tests/fixtures/lora/llama)."""

    base: Path
    adapter: Path
    tokens: list[int]
    golden: np.ndarray


def convert_tiny(folder: Path) -> TinyLora:
    from convert.lora import LoraOptions, convert_lora
    from convert.pipeline import ConvertOptions, convert

    base, adapter = folder / "tiny-llama-f32.gguf", folder / "tiny-lora-f32.gguf"
    convert(ConvertOptions(src=str(BASE_SRC), qtype="f32", output=base, progress=False))
    convert_lora(LoraOptions(adapter=ADAPTER_SRC, base=str(BASE_SRC), outtype="f32", output=adapter))
    tokens = [int(t) for t in json.loads((ADAPTER_SRC / "golden.json").read_text())["tokens"]]
    return TinyLora(base, adapter, tokens, np.load(ADAPTER_SRC / "golden_logits.npy"))


def convert_other_arch(folder: Path) -> Path:
    """A valid GGUF LoRA for another architecture (qwen2), to be refused on the llama base."""
    from convert.lora import LoraOptions, convert_lora

    out = folder / "qwen2-lora.gguf"
    convert_lora(LoraOptions(adapter=OTHER_ARCH_SRC, base=str(OTHER_BASE_SRC), outtype="f32", output=out))
    return out
