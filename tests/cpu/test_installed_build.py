"""The llama-cpp-python this suite runs on: built by scripts/build-wheel.sh for this CPU, RPC server included,
and llama.cpp's extra buffer types can be taken out of use one by one (how AMX is turned off)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.cli import doctor as doctor_cmd
from edge_runtime.cpu import guard, profiles
from edge_runtime.cpu.build import installed
from edge_runtime.cpu.features import read_cpu


def test_the_installed_build_is_a_profile_build_for_this_cpu() -> None:
    build = installed()
    assert build is not None and build.profile is not None, f"not a clawd-edge build: {build}"
    assert build.version == f"0.3.36+{build.profile.label}"
    assert build.details["profile"] == build.profile.name
    assert "-DGGML_NATIVE=OFF" in build.details["cmake_args"]
    guard.check(build, read_cpu())  # what every model load does first
    cpu = read_cpu()
    assert build.profile == profiles.best(cpu.arch, cpu.features), "make test builds the best profile here"


def test_the_wheel_carries_a_working_rpc_server() -> None:
    dist = importlib.metadata.distribution("llama-cpp-python")
    server = next(Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name == "ggml-rpc-server")
    assert os.access(server, os.X_OK)
    done = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert "--port" in done.stdout + done.stderr, done.stderr


_PROBE = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
from edge_runtime.engine.native import import_llama, library_dir
from edge_runtime.engine.bufts import drop_extra_buffer_types, extra_buffer_types
from edge_runtime.engine.selftest import one_token
lib_dir = library_dir(import_llama())
print("before:", extra_buffer_types(lib_dir))
if sys.argv[2] == "drop":
    print("dropped:", drop_extra_buffer_types(lib_dir, {"CPU_REPACK"}))
print("after:", extra_buffer_types(lib_dir))
print("token:", repr(one_token(sys.argv[1])))
"""


def _probe(model: Path, mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(model), mode], capture_output=True, text=True,
                          timeout=300, check=True)
    return done.stdout.splitlines()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="Q4_K weights are repacked by the x86 kernels")
def test_an_extra_buffer_type_can_be_taken_out_of_use(gemma3_path: Path) -> None:
    # Gemma-3's Q4_K weights are repacked on x86 (CPU_REPACK). Taking that type out is the same operation that
    # takes AMX out on a Sapphire Rapids CPU, whose AMX type this machine does not have.
    kept = _probe(gemma3_path, "keep")
    assert "before: ['CPU_REPACK']" in kept and "after: ['CPU_REPACK']" in kept
    assert any("CPU_REPACK model buffer size" in line for line in kept)
    dropped = _probe(gemma3_path, "drop")
    assert "dropped: ['CPU_REPACK']" in dropped and "after: []" in dropped
    assert not any("CPU_REPACK model buffer size" in line for line in dropped)
    assert [ln for ln in dropped if ln.startswith("token:")] == [ln for ln in kept if ln.startswith("token:")]


def test_doctor_reports_a_crashing_self_test_with_its_signal(smollm2_path: Path) -> None:
    # The child is a deterministic stand-in that dies as llama.cpp's AMX path does (SIGSEGV); the real child's
    # success is checked by test_doctor_runs_the_model below.
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    ok, line = doctor_cmd._self_test(smollm2_path, command=crash)
    assert not ok
    assert line.startswith(f"CRASHED with SIGSEGV (signal {int(signal.SIGSEGV)})")
    assert "scripts/bootstrap.sh" in line


def test_doctor_runs_the_model_and_shows_the_profile(smollm2_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_runtime", "doctor", "--model", str(smollm2_path)],
                          capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    build = installed()
    assert build is not None and build.profile is not None
    assert f"profile {build.profile.name}" in done.stdout
    assert "self-test       ok: one token ' Paris'" in done.stdout
    record = json.loads(importlib.metadata.distribution("llama-cpp-python").read_text("clawd_build.json") or "{}")
    assert record.get("arch") == read_cpu().arch
