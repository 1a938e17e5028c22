"""The shipped unit: `systemd-analyze verify` clean, security exposure <= 2.0, and the install script stages it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "clawd-edge.service"
RPC_UNIT = ROOT / "systemd" / "clawd-edge-rpc.service"
INSTALLED_EXEC = "/opt/clawd-edge/venv/bin/clawd-edge"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (apt-get install systemd)")


def _unit_with_real_binary(tmp_path: Path, unit: Path = UNIT) -> Path:
    # verify checks that ExecStart exists; on this machine the venv of install-service.sh does not, so the
    # copy points at the clawd-edge on PATH. Only that path changes; every other line is the shipped one.
    text = unit.read_text()
    assert f"ExecStart={INSTALLED_EXEC} " in text
    exe = shutil.which("clawd-edge")
    assert exe, "clawd-edge is not on PATH (pip install -e .)"
    copy = tmp_path / unit.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={exe}"))
    return copy


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, RPC_UNIT], ids=lambda u: u.name)
def test_systemd_analyze_verify_is_clean(tmp_path: Path, unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(_unit_with_real_binary(tmp_path, unit))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, RPC_UNIT], ids=lambda u: u.name)
def test_security_exposure_is_at_most_two(tmp_path: Path, unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(_unit_with_real_binary(tmp_path, unit))], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_has_the_required_directives() -> None:
    text = UNIT.read_text()
    for directive in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "MemoryMax=",
                      "MemoryHigh=", "DynamicUser=yes", "StateDirectory=clawd-edge", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n",
                      "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes",
                      "Environment=CLAWD_EDGE_CONFIG=/etc/clawd-edge/config.yaml", "LimitNOFILE=4096"):
        assert directive in text, directive


def test_install_script_stages_unit_and_a_valid_config(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-service.sh"), "--root", str(tmp_path),
                             "--no-venv"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc/systemd/system/clawd-edge.service").read_text() == UNIT.read_text()
    config = tmp_path / "etc/clawd-edge/config.yaml"
    check = subprocess.run(["clawd-edge", "config", "check", str(config)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    config.write_text("server: {port: 1}\n")
    again = subprocess.run(["bash", str(ROOT / "scripts" / "install-service.sh"), "--root", str(tmp_path),
                            "--no-venv"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "server: {port: 1}\n"  # an operator's config is never overwritten


@pytest.mark.slow
def test_install_script_installs_from_a_profile_wheel(tmp_path: Path) -> None:
    # What a Raspberry Pi install does with a cross-built wheel (`--wheel`), here with this machine's own wheel
    # from the wheelhouse scripts/bootstrap.sh filled: the service's venv gets exactly that build.
    from edge_runtime.cpu.build import installed

    build = installed()
    assert build is not None and build.profile is not None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    wheelhouse = Path(os.environ.get("CLAWD_EDGE_WHEELHOUSE") or cache / "clawd-edge" / "wheels")
    wheel = wheelhouse / f"llama_cpp_python-{build.version}-py3-none-linux_{build.profile.arch}.whl"
    assert wheel.is_file(), f"{wheel} missing: scripts/bootstrap.sh puts it there"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-service.sh"), "--root", str(tmp_path),
                             "--wheel", str(wheel)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    venv_python = tmp_path / "opt/clawd-edge/venv/bin/python"
    probe = subprocess.run([str(venv_python), "-c", "from edge_runtime.cpu.build import installed; "
                            "print(installed().describe())"], capture_output=True, text=True, timeout=60, check=True)
    assert f"llama-cpp-python {build.version}, profile {build.profile.name}" in probe.stdout
