"""A real Prometheus (Debian's /usr/bin/prometheus) scraping a real daemon, and light load for it.

Used by tests/ops/test_prometheus_live.py and scripts/dashboard_demo.py (the screenshot).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "clawd-edge.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"


def load_script(name: str) -> ModuleType:
    """A module of scripts/ (not a package) by file path."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rule_files() -> list[Path]:
    """Every deploy/prometheus/*.yml that is a Prometheus rule file (has `groups:`)."""
    found = []
    for path in sorted((REPO / "deploy" / "prometheus").glob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "groups" in data:
            found.append(path)
    return found


def grafana_regex(value: str) -> str:
    """One selected value of a multi-value variable as Grafana puts it into a Prometheus regex matcher."""
    return "".join("\\\\" + c if c in "\\$^*{}[]'+?.()|" else c for c in value)


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def wait_scrapes(self, count: int, timeout: float = 60.0) -> None:
        """Until the daemon's target has been scraped `count` times (samples of its up{} series), all targets up."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query('count_over_time(up{job="clawd-edge"}[10m])')
            if result and int(float(result[0]["value"][1])) >= count:
                targets = self.api("targets")["activeTargets"]
                assert all(t["health"] == "up" for t in targets), targets
                return
            assert time.monotonic() < deadline and self.proc.poll() is None, (result, self.log())
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(workdir: Path, target: str, port: int, api_key: str | None,
                     rules: list[Path] | None = None) -> Prometheus:
    """Prometheus on 127.0.0.1:`port` scraping `target` (host:port) every second, storage in `workdir`."""
    job: dict[str, Any] = {"job_name": "clawd-edge", "static_configs": [{"targets": [target]}]}
    if api_key:  # /metrics needs the key like every route but /health
        job["authorization"] = {"type": "Bearer", "credentials": api_key}
    config = {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
              "rule_files": [str(p) for p in rules or []], "scrape_configs": [job]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config_path}",
                                 f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                return prom
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            prom.stop()
            raise AssertionError(f"prometheus did not become ready:\n{prom.log()}")
        time.sleep(0.3)


SYSTEM = "You are a helpful kiosk assistant at a small museum. Answer in one short sentence."
QUESTIONS = ("Name a colour.", "What is two plus two?", "Say hello.", "Name a fruit.", "What day comes after Monday?")


def chat_body(question: str, max_tokens: int = 16, stream: bool = False) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": max_tokens, "stream": stream}


def one_round(client: httpx.Client, index: int) -> list[int]:
    """A chat, a streamed chat, a raw completion, a 400 and a 401: the statuses."""
    statuses = [client.post("/v1/chat/completions", json=chat_body(QUESTIONS[index % len(QUESTIONS)])).status_code]
    with client.stream("POST", "/v1/chat/completions",
                       json=chat_body(QUESTIONS[(index + 1) % len(QUESTIONS)], stream=True)) as stream:
        chunks = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert chunks[-1] == "data: [DONE]", chunks
        statuses.append(stream.status_code)
    statuses.append(client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 8}).status_code)
    statuses.append(client.post("/v1/chat/completions", json={"messages": "not a list"}).status_code)
    statuses.append(httpx.get(client.base_url.join("/metrics"), timeout=10).status_code)  # no key
    return statuses


def drive_load(base_url: str, headers: dict[str, str], seconds: float, clients: int = 2) -> list[int]:
    """`clients` threads doing rounds until `seconds` have passed (at least one round each)."""
    statuses: list[int] = []
    errors: list[Exception] = []
    stop_at = time.monotonic() + seconds

    def worker(offset: int) -> None:
        try:
            with httpx.Client(base_url=base_url, headers=headers, timeout=180) as client:
                index = offset
                while True:
                    statuses.extend(one_round(client, index))
                    index += clients
                    if time.monotonic() >= stop_at:
                        return
        except Exception as exc:  # noqa: BLE001 -- re-raised by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return statuses


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))
