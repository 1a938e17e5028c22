"""Quantized outputs through llama_model_quantize: right file type, loadable, close to the F32 logits."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.pipeline import ConvertOptions, convert

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
# llama_ftype values llama.cpp records in general.file_type.
FILE_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
Golden = Callable[[str], tuple[list[int], np.ndarray]]
Runner = Callable[[Path, list[int]], np.ndarray]


@pytest.mark.parametrize("qtype", sorted(FILE_TYPES))
def test_quantized_types(qtype: str, tmp_path: Path, golden: Golden, run_logits: Runner) -> None:
    out = tmp_path / f"qwen3-{qtype}.gguf"
    # qwen3 is a bf16 checkpoint: the intermediate is BF16, so the quantizer sees the weights unrounded.
    result = convert(ConvertOptions(src=str(FIXTURES / "qwen3"), qtype=qtype, output=out, progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".manifest.json"]
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == FILE_TYPES[qtype]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["output"]["quant_type"] == qtype and manifest["output"]["sha256"] == result.sha256
    tokens, expected = golden("qwen3")
    got = run_logits(out, tokens)
    correlation = float(np.corrcoef(got.ravel(), expected.ravel())[0, 1])
    assert correlation > (0.995 if qtype in ("q8_0", "q6_k") else 0.95), correlation


def test_q4_0_repacks_attention_weights_to_q4_0(tmp_path: Path) -> None:
    out = tmp_path / "mistral-q4_0.gguf"
    convert(ConvertOptions(src=str(FIXTURES / "mistral"), qtype="q4_0", output=out, progress=False))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_convert_then_models_add_uses_the_manifest(tmp_path: Path) -> None:
    """The workstation-to-device hand-off: convert, register with `models add`, the registry keeps the quant."""
    import json

    from click.testing import CliRunner

    from edge_runtime.cli import cli

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "convert" / "llama"
    out = tmp_path / "tiny-llama.gguf"
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    runner = CliRunner()
    converted = runner.invoke(cli, ["convert", str(fixture), "-q", "Q8_0", "-o", str(out), "--no-progress"], env=env)
    assert converted.exit_code == 0, converted.output + converted.stderr
    added = runner.invoke(cli, ["models", "add", str(out), "--name", "tiny"], env=env)
    assert added.exit_code == 0, added.output + added.stderr
    listed = {m["name"]: m for m in json.loads(runner.invoke(cli, ["models", "list", "--json"], env=env).output)}
    assert listed["tiny"]["quant"] == "q8_0" and listed["tiny"]["pulled"]
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF  # no longer what the manifest recorded
    out.write_bytes(bytes(data))
    changed = runner.invoke(cli, ["models", "add", str(out), "--name", "tiny2"], env=env)
    assert changed.exit_code == 1 and "differs from its conversion manifest" in changed.stderr
