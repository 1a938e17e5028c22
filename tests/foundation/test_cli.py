"""The CLI as users meet it: help, exit codes, import hygiene, and a real subprocess answering a question."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from edge_runtime.cli import cli

QUESTION = "What is the capital of France? Answer in one sentence."


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("chat", "models", "config", "doctor"):
        assert f"  {name}" in result.output


def test_unknown_command_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("threads: 0\n")
    result = CliRunner().invoke(cli, ["--config", str(bad), "models", "list"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {bad}: threads: 0 is not allowed; expected an integer >= 1 and <= 256"


def test_env_config_fallback_is_used(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 77\n")
    result = CliRunner().invoke(cli, ["config", "show"], env={"CLAWD_EDGE_CONFIG": str(cfg)})
    assert "batch_size: 77" in result.output


def test_device_imports_stay_light() -> None:
    """`import edge_runtime` (and the CLI root) never pulls the converter or heavy libraries."""
    code = (
        "import sys, pkgutil, importlib, edge_runtime, edge_runtime.cli, edge_runtime.config, "
        "edge_runtime.store, edge_runtime.registry, edge_runtime.gguf_file\n"
        "bad = [m for m in ('convert', 'llama_cpp', 'fastapi', 'vosk', 'cv2', 'torch', 'safetensors') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
        "for info in pkgutil.walk_packages(edge_runtime.__path__, 'edge_runtime.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "assert 'convert' not in sys.modules, 'edge_runtime imports the converter'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_subprocess_chat_answers_paris(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "chat", "--temperature", "0", "--max-tokens", "48", QUESTION],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_subprocess_user_error_has_no_traceback(tmp_path: Path) -> None:
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "chat", "--model", str(not_model), "hi"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_doctor_reports_components_and_the_plan(tmp_path: Path, smollm2_path: Path) -> None:
    runner = CliRunner()
    env = {"XDG_DATA_HOME": str(tmp_path)}
    result = runner.invoke(cli, ["doctor", "--model", str(smollm2_path)], env=env)
    assert result.exit_code == 0, result.output
    for label in ("llama.cpp", "tesseract", "espeak-ng", "audio devices", "memory", "memory plan"):
        assert f"\n{label} " in "\n" + result.output
    assert "weights 94 MiB" in result.output
    missing = runner.invoke(cli, ["doctor"], env=env)
    assert "not pulled yet; run `clawd-edge models pull smollm2-135m-instruct-q4_1`" in missing.output
    tight = tmp_path / "tight.yaml"
    tight.write_text("memory_budget: 64MiB\n")
    refused = runner.invoke(cli, ["--config", str(tight), "doctor", "--model", str(smollm2_path)], env=env)
    assert refused.exit_code == 1 and "DOES NOT FIT" in refused.output
