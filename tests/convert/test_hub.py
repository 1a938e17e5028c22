"""Repo ids go through huggingface_hub's real cache; HF_HUB_OFFLINE=1 keeps it local (no network in tests)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_with(repo_id: str, fixture: str, root: Path) -> Path:
    """The on-disk layout huggingface_hub writes: refs/main names the commit whose snapshot holds the files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(FIXTURES / fixture, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def _run(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-c", "from edge_runtime.cli import main; main()", "convert", *args,
                           "--no-progress"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_repo_id_from_offline_cache_records_repo_and_commit(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _cache_with("clawd-test/tiny-qwen3", "qwen3", cache)
    done = _run(["clawd-test/tiny-qwen3", "-q", "q8_0"], cache, tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "tiny-qwen3-q8_0.gguf"  # default name: repo name + type, in the working directory
    assert out.is_file()
    manifest = json.loads((tmp_path / "tiny-qwen3-q8_0.gguf.manifest.json").read_text())
    assert manifest["source"]["repo_id"] == "clawd-test/tiny-qwen3"
    assert manifest["source"]["revision"] == COMMIT
    assert {e["file"] for e in manifest["inputs"]} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_explicit_revision_and_missing_repo_offline(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _cache_with("clawd-test/tiny-gemma", "gemma", cache)
    ok = _run(["clawd-test/tiny-gemma", "--revision", COMMIT, "-q", "f16", "-o", "g.gguf"], cache, tmp_path)
    assert ok.returncode == 0, ok.stderr
    missing = _run(["clawd-test/not-cached", "-q", "f16", "-o", "m.gguf"], cache, tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: clawd-test/not-cached: not in the local")
    assert not (tmp_path / "m.gguf").exists()
