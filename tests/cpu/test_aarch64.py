"""aarch64 for real: the cross-built wheel runs the engine under qemu-user and answers as the x86 build does,
and the guard reads an ARM CPU's features from HWCAP (a Cortex-A72, as in a Raspberry Pi 4, lacks dot product).

The first run cross-compiles llama-cpp-python (about 6 minutes on 2 cores) and unpacks an arm64 sysroot; both are
cached under ~/.cache/clawd-edge, so later runs only pay for the emulated inference.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# A first run may cross-compile; scripts/test.sh does that before the tests, so normally the wheel is cached.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
QUESTION = "What is the capital of France? Answer in one sentence."

if platform.machine() != "x86_64":
    pytest.skip("emulates aarch64 on an x86 host; on an ARM board the whole suite runs natively",
                allow_module_level=True)
if shutil.which("qemu-aarch64-static") is None or shutil.which("aarch64-linux-gnu-g++") is None:
    pytest.skip("needs qemu-user-static and g++-aarch64-linux-gnu (make test installs them)",
                allow_module_level=True)


def qemu(*command: str, cpu: str | None = None, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    options = ["--cpu", cpu] if cpu else []
    return subprocess.run([str(REPO / "scripts" / "qemu-run.sh"), "aarch64", *options, "--", *command],
                          capture_output=True, text=True, timeout=timeout, check=False, env=os.environ.copy())


def test_the_aarch64_engine_answers_as_the_x86_engine(smollm2_path: Path) -> None:
    chat = ["chat", "--model", str(smollm2_path), "--max-tokens", "32", QUESTION]
    arm = qemu("clawd-edge", *chat)
    assert arm.returncode == 0, arm.stderr[-3000:]
    x86 = subprocess.run([sys.executable, "-m", "edge_runtime", *chat], capture_output=True, text=True,
                         timeout=300, check=True)
    assert "Paris" in x86.stdout
    assert arm.stdout == x86.stdout  # same greedy tokens, same text


def test_the_guard_reads_arm_features_from_hwcap() -> None:
    script = ("from edge_runtime.cpu import guard, profiles; from edge_runtime.cpu.build import BuildInfo, installed;"
              "from edge_runtime.cpu.features import read_cpu;"
              "cpu = read_cpu(); build = installed(); print(cpu.source, build.profile_name);"
              "print(profiles.best(cpu.arch, cpu.features).name);"
              "guard.check(build, cpu);"
              "guard.check(BuildInfo('test', profiles.by_name('armv8.2-a+dotprod'), {}), cpu)")
    a72 = qemu("python3", "-c", script, cpu="cortex-a72", timeout=300)
    assert a72.stdout.splitlines()[:2] == ["HWCAP armv8-a", "armv8-a"], a72.stdout + a72.stderr
    assert "CpuMismatch: llama.cpp was built with profile armv8.2-a+dotprod, which needs atomics, asimdrdm, " \
           "asimddp" in a72.stderr
    newest = qemu("python3", "-c", script, timeout=300)  # qemu's `max` CPU has every feature
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.splitlines()[1] == "armv8.2-a+dotprod"
