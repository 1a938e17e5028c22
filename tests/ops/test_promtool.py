"""Prometheus' own checker on what we ship: the alert rules and their unit tests (deploy/prometheus/), and the
real daemon's /metrics (kiosk, voice and OCR enabled) after a few requests, through `promtool check metrics`."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Daemon, start_daemon

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "clawd-edge-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "clawd-edge-alerts.test.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_a_passing_unit_test() -> None:
    import yaml

    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule.get("for") and rule["labels"].get("severity") in {"warning", "critical"}, rule
            assert {"summary", "description"} <= set(rule["annotations"]), rule
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fired: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            if check["exp_alerts"]:
                fired.add(check["alertname"])
                # and a board that must not fire: every expected alert is board-a's, other boards are inputs
                assert {alert["exp_labels"]["instance"] for alert in check["exp_alerts"]} == {"board-a"}
                assert any('instance="board-b"' in series["series"] for series in case["input_series"]), case
    assert fired == alerts, alerts - fired
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def loaded_daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The daemon with every module this machine can run: OCR, voice (pocketsphinx; no microphone here, so the
    kiosk starts, fails and is exported as down) and the kiosk; then a few requests of each kind."""
    extra: dict[str, Any] = {
        "modules": {"ocr": {"enabled": True},
                    "voice": {"enabled": True, "input": "mic:no-such-microphone", "language": "en",
                              "stt": "pocketsphinx"}},
        "kiosk": {"enabled": True},
    }
    running = start_daemon(tmp_path_factory.mktemp("promtool"), smollm2_path, extra=extra)
    try:
        with running.client() as client:
            for stream in (False, True):
                reply = client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": stream})
                assert reply.status_code == 200, reply.text
            reply = client.post("/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 4})
            assert reply.status_code == 200, reply.text
            assert client.post("/v1/embeddings", json={"input": ["hello", "world"]}).status_code == 200
            assert client.get("/v1/models").status_code == 200
            assert client.get("/v1/models/no-such-model").status_code == 404
            assert client.post("/v1/chat/completions", json={"messages": "not a list"}).status_code == 400
        yield running
    finally:
        assert running.terminate() == 0, running.log()


def test_daemon_metrics_pass_promtool_check_metrics(loaded_daemon: Daemon) -> None:
    with loaded_daemon.client() as client:
        text = client.get("/metrics").text
    for name in ("clawd_edge_time_to_first_token_seconds_bucket", "clawd_edge_http_request_duration_seconds_bucket",
                 "clawd_edge_kiosk_up", "clawd_edge_embedding_seconds_bucket", "process_start_time_seconds",
                 "clawd_edge_memory_budget_bytes", "clawd_edge_slots_capacity"):
        assert f"\n{name}" in text, name  # what the alert rules and the lint below rely on is really there
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)


def test_build_info_names_the_served_model(loaded_daemon: Daemon) -> None:
    import llama_cpp

    from edge_runtime import __version__
    from edge_runtime.cpu.build import installed

    metrics = loaded_daemon.metrics()
    info = [key for key, value in metrics.items() if key.startswith("clawd_edge_build_info{") and value == 1]
    assert len(info) == 1, info
    build = installed()
    assert build is not None
    for label in (f"model={loaded_daemon.model}", "quant=Q4_1", f"version={__version__}",
                  f"llama_cpp={llama_cpp.__version__}", f"profile={build.profile_name}"):
        assert label in info[0].removeprefix("clawd_edge_build_info{").removesuffix("}").split(","), (label, info)
    assert metrics["clawd_edge_memory_budget_bytes"] > 256 * 2**20
