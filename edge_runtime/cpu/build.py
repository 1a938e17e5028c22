"""The installed llama.cpp build: its profile, read from llama-cpp-python's package metadata without loading it."""
from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from typing import Any

from .profiles import Profile, by_label

DIST = "llama-cpp-python"
# scripts/build-wheel.sh writes this into the wheel's .dist-info; it travels with the wheel to a board.
BUILD_FILE = "clawd_build.json"


@dataclass(frozen=True)
class BuildInfo:
    """Which llama-cpp-python is installed and, when clawd-edge built it, for which profile."""

    version: str  # e.g. "0.3.36+clawd.x86.64.v3"
    profile: Profile | None  # None: not a clawd-edge build (e.g. pip's default -march=native build)
    details: dict[str, Any]  # the build record: cmake args, compiler, build host

    @property
    def profile_name(self) -> str:
        return self.profile.name if self.profile else "unknown"

    def describe(self) -> str:
        if self.profile is None:
            return f"llama-cpp-python {self.version}, not built by clawd-edge (profile unknown, maybe -march=native)"
        host = self.details.get("build_host_cpu")
        built = f", built on {host}" if host else ""
        return f"llama-cpp-python {self.version}, profile {self.profile.name}{built}"


def installed() -> BuildInfo | None:
    """The llama-cpp-python in this environment, or None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    version = dist.version
    _, _, label = version.partition("+")
    details: dict[str, Any] = {}
    text = dist.read_text(BUILD_FILE)
    if text:
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            details = loaded
    return BuildInfo(version=version, profile=by_label(label) if label else None, details=details)


def runtime_labels() -> dict[str, str]:
    """The build and the CPU as metric labels / a startup log line."""
    from .features import read_cpu

    build, cpu = installed(), read_cpu()
    return {"profile": build.profile_name if build else "none", "llama_cpp_python": build.version if build else "none",
            "arch": cpu.arch, "cpu": cpu.model}
