"""Every supported architecture: converted F32 GGUF run in llama.cpp reproduces transformers' golden logits."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from convert import arch as arch_module
from convert.pipeline import ConvertOptions, convert
from edge_runtime.cli import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
ARCHS = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")

TOLERANCE = 1e-3
Golden = Callable[[str], tuple[list[int], np.ndarray]]
Runner = Callable[[Path, list[int]], np.ndarray]


@pytest.mark.parametrize("name", ARCHS)
def test_f32_gguf_matches_transformers_logits(name: str, tmp_path: Path, golden: Golden, run_logits: Runner) -> None:
    out = tmp_path / f"{name}.gguf"
    result = convert(ConvertOptions(src=str(FIXTURES / name), qtype="f32", output=out, progress=False))
    assert result.output == out.resolve()
    tokens, expected = golden(name)
    got = run_logits(out, tokens)
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    assert diff <= TOLERANCE, f"{name}: max abs logit diff {diff}"


def test_cli_converts_with_uppercase_type_and_writes_manifest(tmp_path: Path, golden: Golden,
                                                               run_logits: Runner) -> None:
    out = tmp_path / "llama-f32.gguf"
    res = CliRunner().invoke(cli, ["convert", str(FIXTURES / "llama"), "-q", "F32", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    manifest = json.loads((tmp_path / "llama-f32.gguf.manifest.json").read_text())
    assert manifest["output"]["quant_type"] == "f32"
    assert manifest["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["output"]["size"] == out.stat().st_size
    files = {entry["file"] for entry in manifest["inputs"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert manifest["source"]["repo_id"] is None and manifest["source"]["architecture"] == "LlamaForCausalLM"
    tokens, expected = golden("llama")
    assert float(np.abs(run_logits(out, tokens) - expected).max()) <= TOLERANCE


@pytest.mark.parametrize(("name", "field", "value"), [("llama", "permute_qk", False),
                                                       ("gemma", "norm_plus_one", False)])
def test_golden_check_catches_a_broken_fix(name: str, field: str, value: bool, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, golden: Golden,
                                           run_logits: Runner) -> None:
    """Negative control: without the Q/K permutation or Gemma's norm+1 the logits are far off."""
    def sabotage(entry: arch_module.Arch) -> arch_module.Arch:
        if entry.name != name:
            return entry
        if field == "permute_qk":
            return dataclasses.replace(entry, permute_qk=value)
        return dataclasses.replace(entry, norm_plus_one=value)

    broken = tuple(sabotage(a) for a in arch_module.ARCHS)
    monkeypatch.setattr(arch_module, "ARCHS", broken)
    out = tmp_path / "broken.gguf"
    convert(ConvertOptions(src=str(FIXTURES / name), qtype="f32", output=out, progress=False))
    tokens, expected = golden(name)
    assert float(np.abs(run_logits(out, tokens) - expected).max()) > 100 * TOLERANCE


def _tensor_bytes(path: Path, name: str) -> tuple[str, bytes]:
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == name)
    return tensor.tensor_type.name, bytes(tensor.data.tobytes())


def _safetensors_bytes(folder: Path, name: str) -> bytes:
    from convert.safetensors_io import index_checkpoint

    ref = index_checkpoint(folder)[0][name]
    with open(ref.file, "rb") as handle:
        handle.seek(ref.offset)
        return handle.read(ref.nbytes)


@pytest.mark.parametrize(("name", "qtype", "expected_type"), [("llama3", "bf16", "BF16"), ("qwen2", "f16", "F16")])
def test_same_precision_output_copies_weights_bit_exact(name: str, qtype: str, expected_type: str,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "same.gguf"
    convert(ConvertOptions(src=str(FIXTURES / name), qtype=qtype, output=out, progress=False))
    kind, data = _tensor_bytes(out, "blk.0.ffn_down.weight")
    assert kind == expected_type
    assert data == _safetensors_bytes(FIXTURES / name, "model.layers.0.mlp.down_proj.weight")
    norm_kind, _ = _tensor_bytes(out, "blk.0.attn_norm.weight")
    assert norm_kind == "F32"  # norms stay F32 whatever the file type


def test_llama3_rope_scaling_becomes_rope_freqs_and_v4_config_is_read(tmp_path: Path) -> None:
    out = tmp_path / "l3.gguf"
    convert(ConvertOptions(src=str(FIXTURES / "llama3"), qtype="f32", output=out, progress=False))
    reader = gguf.GGUFReader(out)
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    values = np.asarray(freqs.data)
    assert values.shape == (8,) and values[0] == 1.0 and values[-1] == 8.0
    assert reader.fields["llama.rope.freq_base"].contents() == 500000.0
    assert "rope_parameters" not in json.loads((FIXTURES / "llama3" / "config.json").read_text())
