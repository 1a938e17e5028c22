"""Debian's real Prometheus scraping a real daemon (SmolLM2): every query of the Grafana dashboard and of every
rule file in deploy/prometheus/ parses and (dashboard) returns data; the rules load and evaluate healthy.

The daemon keeps its API key (as in production), so Prometheus scrapes /metrics with a bearer token. Its kiosk is
enabled with a microphone that does not exist: the kiosk fails at start, which the daemon reports and survives, and
the kiosk series (`kiosk_up 0`, `kiosk_status{status="failed"} 1`, turns and failures counters) are exported as on a
real kiosk, so no kiosk panel is exempted from returning data. A kiosk that really listens needs a fake ALSA
microphone spinning a core (tests/server/test_kiosk_daemon.py); it would add nothing these queries check.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..server.conftest import Daemon, free_port, start_daemon
from .prom_stack import Prometheus, dashboard, drive_load, grafana_regex, load_script, rule_files, start_prometheus

pytestmark = pytest.mark.slow
RATE_INTERVAL = "5m"  # covers the whole test: every rate() sees the load


@pytest.fixture(scope="module")
def stack(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Prometheus]]:
    workdir = tmp_path_factory.mktemp("prom-live")
    extra: dict[str, Any] = {
        "modules": {"voice": {"input": "mic:no-such-microphone", "language": "en", "stt": "pocketsphinx"}},
        "kiosk": {"enabled": True},
    }
    daemon = start_daemon(workdir, smollm2_path, extra=extra)
    try:
        prom = start_prometheus(workdir, daemon.url.removeprefix("http://"), free_port(), daemon.api_key,
                                rule_files())
    except BaseException:
        daemon.kill()
        raise
    try:
        prom.wait_scrapes(2)
        statuses = drive_load(daemon.url, daemon.headers, seconds=0, clients=2)
        assert sorted(set(statuses)) == [200, 400, 401], statuses
        prom.wait_scrapes(6)  # the last requests are in at least one scrape after the load
        time.sleep(2)
        yield daemon, prom
    finally:
        prom.stop()
        code = daemon.terminate()
        assert code == 0, daemon.log()


def _instance(daemon: Daemon) -> str:
    return str(daemon.url).removeprefix("http://")


def test_instance_variable_lists_the_daemon(stack: tuple[Daemon, Prometheus]) -> None:
    daemon, prom = stack
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "instance")
    metric = variable["definition"].removeprefix("label_values(").split(",")[0]
    values = prom.api("label/instance/values", **{"match[]": metric})
    assert values == [_instance(daemon)], values


@pytest.mark.parametrize("instance", ["all", "one"])
def test_every_dashboard_query_parses_and_returns_data(stack: tuple[Daemon, Prometheus], instance: str) -> None:
    make = load_script("make_dashboard")
    daemon, prom = stack
    selected = ".*" if instance == "all" else grafana_regex(_instance(daemon))
    empty, checked = [], 0
    for row, panel in make.panel_queries(dashboard()):
        for target in panel["targets"]:
            expr = make.substitute(target["expr"], selected, RATE_INTERVAL)
            assert "$" not in expr, expr
            result = prom.query(expr)  # asserts status success
            checked += 1
            if not result:
                empty.append(f"{row} / {panel['title']}: {expr}")
    assert checked >= 25
    assert not empty, "queries without data:\n" + "\n".join(empty)


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules.extend(group.get("rules") or [])
    return rules


def test_every_rule_expression_parses(stack: tuple[Daemon, Prometheus]) -> None:
    _, prom = stack
    rules = _rules()
    if not rules:
        pytest.skip("no rule files with groups: in deploy/prometheus/ yet")
    for rule in rules:
        prom.query(str(rule["expr"]))  # asserts status success; an alert that does not fire has no data


def test_rules_load_and_evaluate_healthy(stack: tuple[Daemon, Prometheus]) -> None:
    _, prom = stack
    expected = {str(rule.get("alert") or rule.get("record")) for rule in _rules()}
    if not expected:
        pytest.skip("no rule files with groups: in deploy/prometheus/ yet")
    deadline = time.monotonic() + 30
    while True:
        loaded = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
        if all(rule["health"] != "unknown" for rule in loaded) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {rule["name"] for rule in loaded} == expected, (loaded, prom.log())
    unhealthy = [(rule["name"], rule["health"], rule.get("lastError")) for rule in loaded if rule["health"] != "ok"]
    assert not unhealthy, unhealthy
