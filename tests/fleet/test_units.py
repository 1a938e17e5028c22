"""The fleet's systemd units verify clean and run the files the `clawd-edge fleet` commands write."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (apt-get install systemd)")


@needs_analyze
@pytest.mark.parametrize(("unit", "binary"), [("clawd-edge-keepalived.service", "/usr/sbin/keepalived"),
                                              ("clawd-edge-haproxy.service", "/usr/sbin/haproxy")])
def test_unit_verifies_clean(unit: str, binary: str) -> None:
    if not Path(binary).is_file():
        pytest.skip(f"{binary} is missing: systemd-analyze verify checks that ExecStart exists")
    result = subprocess.run(["systemd-analyze", "verify", str(UNITS / unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_units_use_the_written_configs() -> None:
    keepalived = (UNITS / "clawd-edge-keepalived.service").read_text()
    for part in ("--use-file /etc/clawd-edge/keepalived.conf", "--vrrp", "--dont-fork", "Conflicts=keepalived.service",
                 "RuntimeDirectory=clawd-edge-keepalived", "--pid /run/clawd-edge-keepalived/"):
        assert part in keepalived, part
    haproxy = (UNITS / "clawd-edge-haproxy.service").read_text()
    for part in ("CONFIG=/etc/clawd-edge/haproxy.cfg", "ExecStartPre=/usr/sbin/haproxy -f ${CONFIG} -c -q",
                 "Type=notify", "DynamicUser=yes", "CAP_NET_BIND_SERVICE"):
        assert part in haproxy, part
