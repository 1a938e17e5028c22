"""Bad input and failed writes: one clear ConvertError, and nothing left at (or beside) the output path."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.pipeline import ConvertOptions, convert
from edge_runtime.cli import cli
from edge_runtime.errors import ConvertError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
Copy = Callable[[str], Path]


def _fails(src: Path | str, out_dir: Path, match: str, qtype: str = "f16") -> None:
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(ConvertError, match=match):
        convert(ConvertOptions(src=str(src), qtype=qtype, output=out_dir / "out.gguf", progress=False))
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_corrupt_safetensors_header(fixture_copy: Copy, tmp_path: Path) -> None:
    folder = fixture_copy("llama")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32  # JSON header bytes become garbage
    weights.write_bytes(bytes(data))
    _fails(folder, tmp_path / "out", r"model\.safetensors: corrupt safetensors header")


def test_safetensors_header_length_beyond_file(fixture_copy: Copy, tmp_path: Path) -> None:
    folder = fixture_copy("qwen3")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0:8] = struct.pack("<Q", 10**12)
    weights.write_bytes(bytes(data))
    _fails(folder, tmp_path / "out", "corrupt safetensors header")


def test_truncated_safetensors_data(fixture_copy: Copy, tmp_path: Path) -> None:
    folder = fixture_copy("gemma")
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1000)
    _fails(folder, tmp_path / "out", "truncated or corrupt")


def test_missing_tokenizer(fixture_copy: Copy, tmp_path: Path) -> None:
    folder = fixture_copy("qwen2")
    (folder / "tokenizer.json").unlink()
    _fails(folder, tmp_path / "out", "no tokenizer")


def test_missing_shard(fixture_copy: Copy, tmp_path: Path) -> None:
    folder = fixture_copy("mistral")
    (folder / "model-00002-of-00003.safetensors").unlink()
    _fails(folder, tmp_path / "out", r"missing checkpoint shard\(s\).*model-00002-of-00003\.safetensors")


def test_unsupported_architecture_lists_supported_ones(tmp_path: Path) -> None:
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(ConvertError) as info:
        convert(ConvertOptions(src=str(bert), qtype="f16", output=tmp_path / "b.gguf", progress=False))
    message = str(info.value)
    assert "'BertModel' is not supported" in message
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert name in message
    assert not (tmp_path / "b.gguf").exists()


def test_cli_reports_one_error_line_and_exit_status(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.gguf")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("error: ")
    assert "not a Hugging Face repo id" in res.output
    bad_type = CliRunner().invoke(cli, ["convert", str(FIXTURES / "llama"), "-q", "q3_k"])
    assert bad_type.exit_code == 2 and "q4_k_m" in bad_type.output


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs: writes hit ENOSPC exactly as on a full SD card."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_leaves_nothing(tiny_disk: Path) -> None:
    out = tiny_disk / "llama.gguf"
    with pytest.raises(ConvertError, match="no space left on device"):
        convert(ConvertOptions(src=str(FIXTURES / "llama"), qtype="f32", output=out, progress=False))
    assert list(tiny_disk.iterdir()) == []


def _big_checkpoint(folder: Path) -> None:
    """A llama checkpoint with one 512 MiB tensor (a sparse file, so it costs no disk) to interrupt mid-write."""
    config = json.loads((FIXTURES / "llama" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((FIXTURES / "llama" / name).read_bytes())
    rows, cols = config["vocab_size"], 65536
    header = {"lm_head.weight": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, rows * cols * 4]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + rows * cols * 4)


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    _big_checkpoint(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "from edge_runtime.cli import main; main()", "convert",
                             str(src), "-q", "f16", "-o", str(out_dir / "big.gguf"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out_dir.glob(".big.gguf.*.part")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "conversion never started writing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the conversion finished before it could be interrupted"
    assert "Traceback" not in stderr or "KeyboardInterrupt" in stderr
    assert sorted(p.name for p in out_dir.iterdir()) == []
