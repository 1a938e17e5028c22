"""The Grafana dashboard JSON is what scripts/make_dashboard.py generates, and is well-formed for provisioning."""
from __future__ import annotations

from .prom_stack import DASHBOARD, dashboard, load_script


def test_the_committed_dashboard_is_the_generator_output() -> None:
    make = load_script("make_dashboard")
    assert DASHBOARD.read_text(encoding="utf-8") == make.render(), "run: python scripts/make_dashboard.py"


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["uid"] == "clawd-edge" and board["schemaVersion"] == 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["multi"] and instance["includeAll"] and instance["definition"].startswith("label_values(")
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Engine and KV cache", "Memory", "Kiosk"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert 'instance=~"$instance"' in target["expr"], target
