"""Fixtures for the converter tests: the committed tiny checkpoints and a llama.cpp runner for GGUF files."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
ARCHS = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")


@pytest.fixture()
def fixture_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of one fixture folder, for tests that damage or change it."""

    def copy(name: str) -> Path:
        target = tmp_path / "src" / name
        shutil.copytree(FIXTURES / name, target)
        return target

    return copy


def _run_logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """All-position logits from real llama.cpp, F32 KV cache so only the model's own precision counts."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False,
                          n_threads=2, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                          flash_attn=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def _golden(name: str) -> tuple[list[int], np.ndarray]:
    tokens = json.loads((FIXTURES / name / "golden.json").read_text())["tokens"]
    return [int(t) for t in tokens], np.load(FIXTURES / name / "golden_logits.npy")


@pytest.fixture()
def run_logits() -> Callable[[Path, list[int]], np.ndarray]:
    return _run_logits


@pytest.fixture()
def golden() -> Callable[[str], tuple[list[int], np.ndarray]]:
    """(tokens, logits) that transformers produced for a fixture (see scripts/make_convert_fixtures.py)."""
    return _golden


def _run_logits_with_lora(gguf_path: Path, tokens: list[int], lora_path: Path, scale: float = 1.0) -> np.ndarray:
    """Like _run_logits, with a GGUF LoRA applied (llama_adapter_lora_init + llama_set_adapters_lora)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False,
                          n_threads=2, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                          flash_attn=False, lora_path=str(lora_path), lora_scale=scale)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture()
def run_logits_with_lora() -> Callable[[Path, list[int], Path, float], np.ndarray]:
    return _run_logits_with_lora
