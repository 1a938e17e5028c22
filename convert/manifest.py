"""The JSON manifest written beside each converted GGUF: where it came from and the sha256 of everything."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FORMAT = "clawd-edge-convert-manifest/1"
SUFFIX = ".manifest.json"


def manifest_path(output: Path) -> Path:
    """model.gguf -> model.gguf.manifest.json (beside the output, found from the GGUF path alone)."""
    return output.with_name(output.name + SUFFIX)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def build(*, folder: Path, repo_id: str | None, revision: str | None, hf_architecture: str,
          gguf_architecture: str, inputs: Iterable[Path], output_name: str, output_size: int, output_sha256: str,
          quant_type: str, vocab_only: bool, tool_version: str, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "tool": "clawd-edge convert",
        "tool_version": tool_version,
        "library_versions": versions,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"repo_id": repo_id, "revision": revision, "path": str(folder),
                   "architecture": hf_architecture},
        "inputs": [{"file": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
                   for p in inputs],
        "output": {"file": output_name, "size": output_size, "sha256": output_sha256,
                   "quant_type": quant_type, "architecture": gguf_architecture, "vocab_only": vocab_only},
    }


def write(path: Path, manifest: dict[str, Any]) -> None:
    """Atomic like the model: a reader sees the old manifest or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
