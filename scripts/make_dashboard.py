"""Generate deploy/grafana/clawd-edge.json (Grafana, schemaVersion 39) from the panel table below.

Every PromQL query of the dashboard lives in ROWS; tests/ops/test_dashboard.py checks that the committed JSON is
this script's output and tests/ops/test_prometheus_live.py runs every query against a real Prometheus scraping a
real daemon. `python scripts/make_dashboard.py` rewrites the JSON; `--check` only compares.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "deploy" / "grafana" / "clawd-edge.json"
UID = "clawd-edge"
TITLE = "clawd-edge"
INSTANCE_QUERY = "label_values(clawd_edge_engine_state, instance)"  # exported by every daemon from its start
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str
    kind: str = "timeseries"  # or "stat"
    width: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def q(expr: str, legend: str) -> Query:
    return Query(expr.replace("SEL", SEL).replace("RATE", RATE), legend)


def quantiles(metric: str, by: str, legend: str) -> tuple[Query, ...]:
    rate = f"rate({metric}_bucket{{SEL}}[RATE])"
    return tuple(q(f"histogram_quantile({p}, sum by (le{by}) ({rate}))", f"p{int(p * 100)}{legend}")
                 for p in (0.5, 0.99))


ROWS: tuple[Row, ...] = (
    Row("Traffic", (
        Panel("Requests/s by route and status", "reqps",
              (q("sum by (route, status) (rate(clawd_edge_http_requests_total{SEL}[RATE]))", "{{route}} {{status}}"),),
              "Every HTTP request by route template and status code (all instances)."),
        Panel("Errors and rejections/s", "reqps",
              (q('sum by (status) (rate(clawd_edge_http_requests_total{SEL,status=~"[45].."}[RATE]))', "{{status}}"),
               q("sum(rate(clawd_edge_rejected_requests_total{SEL}[RATE]))", "rejected (queue full, 503)")),
              "4xx/5xx answers by status, and requests refused because every slot and the queue were full."),
        Panel("Generations/s by finish reason", "ops",
              (q("sum by (finish_reason) (rate(clawd_edge_generations_total{SEL}[RATE]))", "{{finish_reason}}"),
               q("sum(rate(clawd_edge_engine_requests_cancelled_total{SEL}[RATE]))", "cancelled (disconnects)")),
              "HTTP generations by finish reason; cancellations counted by the engine (all callers)."),
    )),
    Row("Latency", (
        Panel("Request duration p50 / p99 by route", "s",
              quantiles("clawd_edge_http_request_duration_seconds", ", route", " {{route}}"),
              "Request to last byte of the response (streams included), from the histogram buckets.", width=12),
        Panel("Time to first token p50 / p99", "s",
              quantiles("clawd_edge_time_to_first_token_seconds", "", ""),
              "Request to the first generated text (queueing and prompt evaluation included).", width=12),
    )),
    Row("Engine and KV cache", (
        Panel("Slots busy / total", "short",
              (q("clawd_edge_slots_active{SEL}", "busy {{instance}}"),
               q("clawd_edge_slots_capacity{SEL}", "total {{instance}}")),
              "Parallel slots generating right now vs configured."),
        Panel("Queue depth and in-flight requests", "short",
              (q("clawd_edge_queue_depth{SEL}", "queued {{instance}}"),
               q("clawd_edge_http_requests_in_flight{SEL}", "in flight {{instance}}")),
              "Requests waiting for a slot, and HTTP requests being served (streams included)."),
        Panel("KV cache cells", "short",
              (q("clawd_edge_kv_cache_used_cells{SEL}", "used {{instance}}"),
               q("clawd_edge_kv_cache_cached_cells{SEL}", "prefix cache {{instance}}"),
               q("clawd_edge_kv_cache_total_cells{SEL}", "total {{instance}}")),
              "KV cells in use, kept by idle slots as reclaimable prompt-prefix cache, and the total."),
        Panel("Tokens/s", "short",
              (q("sum(rate(clawd_edge_engine_completion_tokens_total{SEL}[RATE]))", "generated"),
               q("sum(rate(clawd_edge_engine_prompt_tokens_evaluated_total{SEL}[RATE]))", "prompt evaluated"),
               q("sum(clawd_edge_completion_tokens_per_second{SEL})", "generated (daemon's 30 s window)")),
              "Engine counters for all callers (HTTP and kiosk), and the daemon's own sliding-window gauge.",
              width=12),
        Panel("Prompt tokens: evaluated vs cached", "short",
              (q("sum(rate(clawd_edge_engine_prompt_tokens_evaluated_total{SEL}[RATE]))", "evaluated"),
               q("sum(rate(clawd_edge_engine_prompt_tokens_cached_total{SEL}[RATE]))", "reused from prefix cache")),
              "Prompt tokens per second run through llama_decode vs reused from the KV prefix cache.", width=12),
        Panel("Engine state", "none",
              (q("clawd_edge_engine_state{SEL} == 1", "{{instance}} {{state}}"),),
              "ready, unloaded (keep_alive; the next request reloads), loading or failed.", kind="stat", width=12),
        Panel("Version, build profile and model", "none",
              (q("clawd_edge_build_info{SEL}", "{{instance}} {{version}} {{profile}} {{model}} {{quant}}"),),
              "clawd-edge version, llama.cpp build profile, served model and quantization per instance.",
              kind="stat", width=12),
    )),
    Row("Memory", (
        Panel("Resident memory vs budget", "bytes",
              (q("clawd_edge_rss_bytes{SEL}", "RSS {{instance}}"),
               q("clawd_edge_peak_rss_bytes{SEL}", "peak RSS {{instance}}"),
               q("clawd_edge_memory_budget_bytes{SEL}", "budget {{instance}}")),
              "Resident and peak resident memory of the daemon (model mmap included) against the memory plan's "
              "budget (memory_budget, else the cgroup limit, else MemAvailable at start).", width=12),
        Panel("KV cache usage", "percentunit",
              (q("clawd_edge_kv_cache_usage_ratio{SEL}", "{{instance}}"),),
              "Fraction of KV cells in use.", width=12),
    )),
    Row("Kiosk", (
        Panel("Kiosk up", "none",
              (q("clawd_edge_kiosk_up{SEL}", "{{instance}}"),),
              "1 while the kiosk loop runs (needs `kiosk.enabled`; no data without a kiosk).", kind="stat"),
        Panel("Kiosk status", "none",
              (q("clawd_edge_kiosk_status{SEL} == 1", "{{instance}} {{status}}"),),
              "starting, running, failed (e.g. no microphone; the HTTP API keeps serving), finished or stopped.",
              kind="stat"),
        Panel("Kiosk turns and failures", "short",
              (q("sum by (instance) (increase(clawd_edge_kiosk_turns_total{SEL}[RATE]))", "turns {{instance}}"),
               q("sum by (instance) (increase(clawd_edge_kiosk_failures_total{SEL}[RATE]))",
                 "failures {{instance}}")),
              "Spoken or read questions handled, and kiosk loop failures (each is retried)."),
    )),
)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [{"datasource": DS, "expr": query.expr, "legendFormat": query.legend, "refId": chr(ord("A") + i)}
               for i, query in enumerate(panel.queries)]
    out: dict[str, Any] = {"id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
                           "datasource": DS, "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
                           "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []}, "targets": targets}
    if panel.kind == "stat":
        out["options"] = {"colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                          "textMode": "value_and_name",
                          "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    else:
        out["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "none"}}
    return out


def _templating() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
         "definition": INSTANCE_QUERY, "query": {"query": INSTANCE_QUERY, "refId": "instance"},
         "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0, "refresh": 2,
         "regex": "", "sort": 1, "options": []},
    ]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for row in ROWS:
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": UID, "title": TITLE, "id": None, "version": 1, "schemaVersion": 39, "editable": True,
        "tags": ["clawd-edge", "llama.cpp"], "timezone": "browser", "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False,
        "description": "clawd-edge daemons (`clawd-edge serve` /metrics): traffic, latency, engine and KV cache, "
                       "memory, kiosk. Generated by scripts/make_dashboard.py.",
        "annotations": {"list": []}, "links": [], "templating": {"list": _templating()}, "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def substitute(expr: str, instance: str = ".*", rate_interval: str = "1m") -> str:
    """A dashboard query as Prometheus itself takes it: Grafana's variables replaced."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", instance)


def panel_queries(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row title, panel) for every non-row panel of a dashboard JSON, in order."""
    out, row = [], ""
    for panel in board["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        else:
            out.append((row, panel))
    return out


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is not this output")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python scripts/make_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
