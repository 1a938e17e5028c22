"""PEFT LoRA -> GGUF: byte-for-byte what convert_lora_to_gguf.py writes, and llama.cpp reproduces peft's logits."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from convert import arch as arch_module
from convert.lora import LoraOptions, convert_lora
from convert.pipeline import ConvertOptions, convert
from edge_runtime.cli import cli
from edge_runtime.errors import ConvertError

ROOT = Path(__file__).resolve().parents[2]
BASES = ROOT / "tests" / "fixtures" / "convert"
ADAPTERS = ROOT / "tests" / "fixtures" / "lora"
# Relative, as scripts/make_lora_fixtures.py gave them to the reference: the paths reach the metadata.
REL_BASE = Path("tests/fixtures/convert")
REL_ADAPTER = Path("tests/fixtures/lora")
ARCHS = ("llama", "qwen2")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
TOLERANCE = 1e-3
Golden = Callable[[str], tuple[list[int], np.ndarray]]
Runner = Callable[[Path, list[int]], np.ndarray]
LoraRunner = Callable[[Path, list[int], Path, float], np.ndarray]


def _reference(name: str, outtype: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((ADAPTERS / name / "reference.json").read_text())["outtypes"][outtype]
    return record


def _record(path: Path) -> dict[str, Any]:
    """The same view of a GGUF that scripts/make_lora_fixtures.py recorded for the reference output."""
    reader = gguf.GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        value = field.contents()
        metadata[key] = value.item() if isinstance(value, np.generic) else value
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                "sha256": hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest()} for t in reader.tensors]
    return {"metadata": metadata, "tensors": tensors}


def _convert(name: str, outtype: str, out: Path, base: Path | str | None = None) -> Path:
    base_arg = str(REL_BASE / name) if base is None else str(base)
    convert_lora(LoraOptions(adapter=REL_ADAPTER / name, base=base_arg, outtype=outtype, output=out))
    return out


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("name", ARCHS)
def test_output_equals_reference_converter(name: str, outtype: str, tmp_path: Path) -> None:
    out = _convert(name, outtype, tmp_path / "ours.gguf")
    ref = _reference(name, outtype)
    ours = _record(out)
    assert ours["metadata"] == ref["metadata"]
    assert [t["name"] for t in ours["tensors"]] == [t["name"] for t in ref["tensors"]]
    for mine, theirs in zip(ours["tensors"], ref["tensors"], strict=True):
        assert mine == theirs, mine["name"]
    # Same keys, order, alignment and bytes: the files are identical, not just equivalent.
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref["file_sha256"]


def test_reference_covers_the_interesting_cases() -> None:
    """The fixtures exercise what differs between the paths: permuted q/k, embedding LoRA, Q8_0 fallback."""
    llama = {t["name"]: t for t in _reference("llama", "q8_0")["tensors"]}
    assert len(llama) == 2 * 7 * 2  # two layers, seven target modules, lora_a + lora_b
    assert llama["blk.0.attn_q.weight.lora_a"]["type"] == "Q8_0"
    assert llama["blk.0.attn_q.weight.lora_b"]["type"] == "F16"  # rows of rank 4 are not whole Q8_0 blocks
    qwen = {t["name"]: t for t in _reference("qwen2", "f32")["tensors"]}
    assert qwen["token_embd.weight.lora_a"]["shape"] == [4, 2112]  # A transposed to (vocab, r)
    assert _reference("llama", "f32")["metadata"]["adapter.lora.alpha"] == 8.0  # alpha != r: scaling matters


@pytest.mark.parametrize("name", ARCHS)
def test_llama_cpp_with_adapter_matches_peft_logits(name: str, tmp_path: Path, run_logits: Runner,
                                                    run_logits_with_lora: LoraRunner) -> None:
    base = tmp_path / "base.gguf"
    convert(ConvertOptions(src=str(BASES / name), qtype="f32", output=base, progress=False))
    adapter = _convert(name, "f32", tmp_path / "adapter.gguf")
    tokens = [int(t) for t in json.loads((ADAPTERS / name / "golden.json").read_text())["tokens"]]
    expected = np.load(ADAPTERS / name / "golden_logits.npy")
    got = run_logits_with_lora(base, tokens, adapter, 1.0)
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    assert diff <= TOLERANCE, f"{name}: max abs logit diff with the adapter {diff}"
    # Negative control: the base alone is far from the adapted goldens, so the check above measures the adapter.
    assert float(np.abs(run_logits(base, tokens) - expected).max()) > 100 * TOLERANCE


def test_missing_permutation_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       run_logits_with_lora: LoraRunner) -> None:
    """Sabotage: without the q/k rotary permutation of lora_b both the reference and the golden checks fail."""
    base = tmp_path / "base.gguf"
    convert(ConvertOptions(src=str(BASES / "llama"), qtype="f32", output=base, progress=False))
    broken = tuple(dataclasses.replace(a, permute_qk=False) if a.name == "llama" else a for a in arch_module.ARCHS)
    monkeypatch.setattr(arch_module, "ARCHS", broken)
    adapter = _convert("llama", "f32", tmp_path / "broken.gguf")
    ours = {t["name"]: t["sha256"] for t in _record(adapter)["tensors"]}
    ref = {t["name"]: t["sha256"] for t in _reference("llama", "f32")["tensors"]}
    differing = sorted(name for name in ref if ours[name] != ref[name])
    assert differing == [f"blk.{i}.{kind}.weight.lora_b" for i in (0, 1) for kind in ("attn_k", "attn_q")]
    tokens = [int(t) for t in json.loads((ADAPTERS / "llama" / "golden.json").read_text())["tokens"]]
    expected = np.load(ADAPTERS / "llama" / "golden_logits.npy")
    assert float(np.abs(run_logits_with_lora(base, tokens, adapter, 1.0) - expected).max()) > 100 * TOLERANCE


def test_config_only_base_is_enough(tmp_path: Path) -> None:
    """Like the reference, the base's config.json suffices (no shape check is possible then)."""
    base = tmp_path / "llama"
    base.mkdir()
    shutil.copy(BASES / "llama" / "config.json", base / "config.json")
    out = _convert("llama", "f16", tmp_path / "out.gguf", base=base)
    assert _record(out)["tensors"] == _reference("llama", "f16")["tensors"]


def test_cli_lora_f16(tmp_path: Path) -> None:
    out = tmp_path / "adapter.gguf"
    res = CliRunner().invoke(cli, ["convert", "--lora", str(REL_ADAPTER / "llama"), "--base",
                                   str(REL_BASE / "llama"), "-o", str(out), "-q", "F16"])
    assert res.exit_code == 0, res.output
    assert "LoRA f16, 28 tensors" in res.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == _reference("llama", "f16")["file_sha256"]


def test_cli_lora_defaults_to_f32_base_from_adapter_config_and_reference_name(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["convert", "--lora", str(REL_ADAPTER / "qwen2"), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "Qwen2-F32-LoRA.gguf"  # the reference's default file name
    assert hashlib.sha256(out.read_bytes()).hexdigest() == _reference("qwen2", "f32")["file_sha256"]


@pytest.mark.parametrize(("args", "message"), [
    (["convert", "--lora", "x", "-q", "q4_k_m"], "not a LoRA output type"),
    (["convert", "some/model", "--lora", "x"], "--lora takes no SRC"),
    (["convert", "some/model", "--base", "x"], "--base only applies with --lora"),
    (["convert"], "missing SRC"),
])
def test_cli_usage_errors(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2
    assert message in res.output


def test_cli_bad_adapter_is_one_error_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["convert", "--lora", str(tmp_path), "--base", str(BASES / "llama"),
                                   "-o", str(tmp_path / "out.gguf")])
    assert res.exit_code != 0
    assert res.output.strip().splitlines() == [f"error: {tmp_path}: no adapter_config.json (not a PEFT adapter "
                                               "folder)"]


# --- bad input: one ConvertError, nothing written ---------------------------------------------------------------

def _adapter_copy(tmp_path: Path, name: str = "llama") -> Path:
    target = tmp_path / "adapter" / name
    shutil.copytree(ADAPTERS / name, target)
    return target


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A minimal safetensors writer (F32 only), so the tests need no torch or safetensors package."""
    header: dict[str, Any] = {}
    offset = 0
    for name, array in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for array in tensors.values():
            handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


def _with_tensors(folder: Path, extra: dict[str, np.ndarray], drop: tuple[str, ...] = ()) -> None:
    from convert.safetensors_io import read_header

    path = folder / "adapter_model.safetensors"
    tensors = {name: ref.read() for name, ref in read_header(path).items() if name not in drop}
    _write_safetensors(path, {**tensors, **extra})


def _fails(tmp_path: Path, adapter: Path, match: str, base: Path | None = None) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(ConvertError, match=match) as info:
        convert_lora(LoraOptions(adapter=adapter, base=str(base or BASES / "llama"), output=out_dir / "x.gguf"))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_missing_adapter_config(tmp_path: Path) -> None:
    folder = _adapter_copy(tmp_path)
    (folder / "adapter_config.json").unlink()
    _fails(tmp_path, folder, r"no adapter_config\.json \(not a PEFT adapter folder\)")


def test_missing_adapter_weights(tmp_path: Path) -> None:
    folder = _adapter_copy(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    _fails(tmp_path, folder, r"no adapter_model\.safetensors")
    (folder / "adapter_model.bin").write_bytes(b"PK")
    _fails(tmp_path, folder, r"adapter_model\.bin is a pickle that needs torch")


def test_missing_adapter_folder(tmp_path: Path) -> None:
    _fails(tmp_path, tmp_path / "nope", "no such adapter folder")


@pytest.mark.parametrize(("changes", "match"), [
    ({"use_dora": True}, r"DoRA adapters \(use_dora\) are not supported"),
    ({"peft_type": "IA3"}, r"peft_type 'IA3' is not LORA"),
    ({"use_rslora": True}, r"use_rslora.*llama\.cpp scales by alpha/r"),
    ({"alpha_pattern": {"q_proj": 16}}, r"alpha_pattern"),
    ({"lora_alpha": None}, r"lora_alpha is missing"),
])
def test_unsupported_adapter_config(changes: dict[str, Any], match: str, tmp_path: Path) -> None:
    folder = _adapter_copy(tmp_path)
    _edit_config(folder, **changes)
    _fails(tmp_path, folder, match)


def test_adapter_on_a_base_of_another_size(tmp_path: Path) -> None:
    # The qwen2 adapter's embedding LoRA is for 2112 tokens; the llama base has 2048.
    _fails(tmp_path, ADAPTERS / "qwen2", r"does not fit the base model: model\.embed_tokens\.weight is "
                                         r"\[2048, 64\] in the base but \[2112, 64\]", base=BASES / "llama")


def test_adapter_on_a_base_of_another_architecture(tmp_path: Path) -> None:
    # Phi-3 fuses q/k/v into qkv_proj: there is no q_proj weight to adapt.
    _fails(tmp_path, ADAPTERS / "llama", r"which the base model \(Phi3ForCausalLM\) does not have",
           base=BASES / "phi3")


@pytest.mark.parametrize(("name", "match"), [
    ("base_model.model.model.layers.0.self_attn.rotary_emb.lora_A.weight", "unsupported target module"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "DoRA magnitude vector"),
    ("base_model.model.model.norm.weight", "full norm weight"),
    ("base_model.model.lm_head.weight", "full embedding/output matrix"),
    ("base_model.model.model.layers.0.self_attn.q_proj.scale", "not a lora_A or lora_B weight"),
])
def test_unsupported_adapter_tensor(name: str, match: str, tmp_path: Path) -> None:
    folder = _adapter_copy(tmp_path)
    extra = {name: np.ones((4, 64), np.float32)}
    if ".lora_A." in name:
        extra[name.replace(".lora_A.", ".lora_B.")] = np.ones((64, 4), np.float32)
    _with_tensors(folder, extra)
    # A config-only base, so the target is judged by llama.cpp's tensor names rather than the base's weights.
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(BASES / "llama" / "config.json", base / "config.json")
    _fails(tmp_path, folder, match, base=base)


def test_half_a_pair_and_mismatched_rank(tmp_path: Path) -> None:
    folder = _adapter_copy(tmp_path)
    b_name = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    _with_tensors(folder, {}, drop=(b_name,))
    _fails(tmp_path, folder, r"no lora_B for 'model\.layers\.1\.mlp\.up_proj\.weight'")
    _with_tensors(folder, {b_name: np.ones((128, 8), np.float32)})
    _fails(tmp_path, folder, r"do not fit together: lora_A \[4, 64\], lora_B \[128, 8\]")


def test_peft_base_layer_copy_is_skipped(tmp_path: Path) -> None:
    """PEFT saves the full embedding beside an embedding LoRA; the reference ignores it and so do we."""
    folder = _adapter_copy(tmp_path, "qwen2")
    _with_tensors(folder, {"base_model.model.model.embed_tokens.base_layer.weight": np.zeros((2112, 64),
                                                                                              np.float32)})
    out = tmp_path / "out.gguf"
    convert_lora(LoraOptions(adapter=folder, base=str(REL_BASE / "qwen2"), outtype="f16", output=out))
    assert _record(out)["tensors"] == _reference("qwen2", "f16")["tensors"]


def test_unknown_outtype(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="unknown LoRA output type 'q4_0'"):
        _convert("llama", "q4_0", tmp_path / "x.gguf")
