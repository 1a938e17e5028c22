#!/usr/bin/env python3
"""Builds tests/fixtures/lora: tiny PEFT LoRA adapters on the convert fixtures, golden logits, reference records.

Needs torch + transformers + peft (fixture time only; the tests never import them) and llama.cpp's own
convert_lora_to_gguf.py (from the llama-cpp-python 0.3.36 sdist), which this script runs as the reference:
    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch==2.13.0 transformers peft safetensors numpy sentencepiece
    /tmp/torch-venv/bin/python scripts/make_lora_fixtures.py \
        --llama-cpp /tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp

Per adapter folder it writes adapter_config.json, adapter_model.safetensors and README.md (as PEFT saves them),
golden.json + golden_logits.npy (transformers + peft logits on the base fixture's golden tokens) and
reference.json: for every --outtype, each tensor's name, ggml type, shape and data sha256, every metadata
key/value, and the whole file's sha256, read from the GGUF that convert_lora_to_gguf.py wrote. The reference
GGUFs themselves are not kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASES = Path("tests") / "fixtures" / "convert"  # relative: it ends up in the adapter's README and metadata
OUT = ROOT / "tests" / "fixtures" / "lora"
SEED = 4321
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# llama: q/k need llama.cpp's rotary permutation, alpha != r so the scale matters, fp32 adapter as PEFT saves.
# qwen2: no permutation, a bf16 adapter, and an embedding LoRA (llama.cpp transposes its A).
SPECS: dict[str, dict[str, Any]] = {
    "llama": {"r": 4, "alpha": 8, "dtype": "float32",
              "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "qwen2": {"r": 4, "alpha": 6, "dtype": "bfloat16",
              "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "embed_tokens"]},
}


def _base_model(name: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(BASES / name), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    return model


def _tokens(name: str) -> list[int]:
    return [int(t) for t in json.loads((ROOT / BASES / name / "golden.json").read_text())["tokens"]]


def make_adapter(name: str, spec: dict[str, Any]) -> Path:
    """Random A and B (B is zero after PEFT's init, which would make the adapter a no-op), saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], target_modules=spec["targets"], lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(_base_model(name), config)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for pname, param in sorted(model.named_parameters()):
            if "lora_" in pname:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    # PEFT would also save the whole embedding matrix next to an embedding LoRA; the converter skips it anyway
    # and it would triple the fixture.
    model.save_pretrained(folder, save_embedding_layers=False)
    weights = folder / "adapter_model.safetensors"
    if spec["dtype"] != "float32":
        tensors = {k: v.to(getattr(torch, spec["dtype"])).contiguous() for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def make_golden(name: str, folder: Path) -> None:
    """Logits of the saved adapter (dtype rounding included) applied by peft, computed in float32."""
    import peft
    import torch
    import transformers
    from peft import PeftModel

    tokens = _tokens(name)
    model = PeftModel.from_pretrained(_base_model(name), folder, autocast_adapter_dtype=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
    base = np.load(ROOT / BASES / name / "golden_logits.npy")
    moved = float(np.abs(logits - base).max())
    assert moved > 0.1, f"{name}: the adapter barely changes the logits ({moved})"
    np.save(folder / "golden_logits.npy", logits.astype(np.float32))
    producer = f"transformers {transformers.__version__} + peft {peft.__version__}"
    (folder / "golden.json").write_text(json.dumps({"tokens": tokens, "producer": producer}) + "\n")
    print(f"{name}: logits {logits.shape}, max |adapter - base| {moved:.3f}")


def _value(field: Any) -> Any:
    value = field.contents()
    return value.item() if isinstance(value, np.generic) else value


def record(path: Path) -> dict[str, Any]:
    """What a GGUF holds, in file order: header/metadata key values and per-tensor name, type, shape, sha256."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    metadata = {key: _value(field) for key, field in reader.fields.items()}
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                "sha256": hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest()} for t in reader.tensors]
    return {"file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "file_size": path.stat().st_size,
            "metadata": metadata, "tensors": tensors}


def make_reference(name: str, folder: Path, llama_cpp: Path) -> None:
    script = llama_cpp / "convert_lora_to_gguf.py"
    records: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in OUTTYPES:
            out = Path(tmp) / f"{name}-{outtype}.gguf"
            # Relative paths from the repo root, exactly as the tests pass them to our converter.
            cmd = [sys.executable, str(script), "--base", str(BASES / name), "--outtype", outtype,
                   "--outfile", str(out), str(folder.relative_to(ROOT))]
            subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           stdout=subprocess.DEVNULL)
            records[outtype] = record(out)
    reference = {"producer": f"{script.relative_to(llama_cpp.parents[1])} (llama-cpp-python "
                             f"{llama_cpp.parents[1].name.rpartition('-')[2]})",
                 "command": "convert_lora_to_gguf.py --base tests/fixtures/convert/<arch> --outtype <type> "
                            "--outfile <out> tests/fixtures/lora/<arch>",
                 "outtypes": records}
    (folder / "reference.json").write_text(json.dumps(reference, indent=1, sort_keys=False) + "\n")
    counts = ", ".join(f"{outtype}: {len(rec['tensors'])} tensors" for outtype, rec in records.items())
    print(f"{name}: reference {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True,
                        help="llama.cpp source folder holding convert_lora_to_gguf.py and gguf-py")
    parser.add_argument("names", nargs="*", default=list(SPECS))
    args = parser.parse_args()
    llama_cpp = args.llama_cpp.resolve()
    # Read the reference files with the gguf-py that wrote them.
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    os.chdir(ROOT)
    for name in args.names:
        folder = make_adapter(name, SPECS[name])
        make_golden(name, folder)
        make_reference(name, folder, llama_cpp)


if __name__ == "__main__":
    main()
