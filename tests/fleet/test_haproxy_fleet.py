"""Three real daemons behind a real haproxy under steady streaming load: one is killed, then restarted."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import API_KEY, Daemon, start_daemon

from .fleet_helpers import BOARD_CONFIG, Haproxy, port_of, start_boards, start_haproxy
from .loadgen import Load, Outcome

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing (apt-get install haproxy)")]

CLIENTS = 8  # > 3 boards x 2 slots: every slot busy and a few requests waiting in HAProxy's queue
MAX_TOKENS = 32
# A killed board's open streams must end promptly at the client, not hang until a timeout.
CLEAN_FAILURE_SECONDS = 3.0


@pytest.fixture(scope="module")
def fleet(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Daemon], Haproxy, str]]:
    """Three boards and the balancer, shared by this module's tests (the kill test runs last)."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    boards = start_boards(tmp_path, smollm2_path, 3, api_key=API_KEY)
    balancer: Haproxy | None = None
    try:
        balancer, config = start_haproxy(tmp_path, boards, api_key=API_KEY)
        for name in balancer.server_status():
            balancer.wait_status(name, "UP", 10)
        yield boards, balancer, config
    finally:
        if balancer is not None:
            balancer.stop()
        for daemon in boards:
            daemon.kill()


def _get(base: str, path: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_balancer_routes_and_checks_the_key(fleet: tuple[list[Daemon], Haproxy, str]) -> None:
    _, balancer, config = fleet
    # Read from each board's /health (slots_total), one line per board.
    assert len(re.findall(r"^    server \S+ 127\.0\.0\.1:\d+ maxconn 2$", config, re.MULTILINE)) == 3
    status, body = _get(balancer.url, "/health")
    assert status == 200 and body["status"] == "ok"
    assert _get(balancer.url, "/v1/models")[0] == 401
    status, body = _get(balancer.url, "/v1/models", "wrong-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert _get(balancer.url, "/v1/models", API_KEY)[0] == 200
    # /api (the Ollama API) is forwarded to a board too, whatever that board answers.
    conn = http.client.HTTPConnection(balancer.url.removeprefix("http://"), timeout=10)
    conn.request("GET", "/api/tags", headers={"Authorization": f"Bearer {API_KEY}"})
    response = conn.getresponse()
    assert response.getheader("X-Clawd-Board") and b"on the balancer" not in response.read()
    conn.close()
    status, body = _get(balancer.url, "/metrics", API_KEY)
    assert status == 404 and body["error"]["code"] == "not_found"


def _retried(haproxy_log: str) -> int:
    """Requests HAProxy sent again (the retries field of its httplog lines: actconn/feconn/beconn/srvconn/retries,
    with a + when it went to another board)."""
    fields = re.findall(r" \d+/\d+/\d+/\d+/\+?(\d+) \d+/\d+ \"", haproxy_log)
    return sum(1 for count in fields if int(count) > 0)


def _summary(outcomes: list[Outcome], killed: str, kill_at: float, rejoined_at: float) -> dict[str, Any]:
    kinds = Counter(o.kind for o in outcomes)
    in_flight = [o for o in outcomes if o.board == killed and o.started < kill_at and o.ended >= kill_at]
    mid = [o for o in outcomes if o.kind == "failed_mid_stream"]
    streams = [o.last_chunk - o.first_chunk for o in outcomes
               if o.kind == "ok" and o.first_chunk is not None and o.last_chunk is not None]
    return {
        "requests": len(outcomes), **kinds,
        "during_outage": sum(1 for o in outcomes if kill_at <= o.started < rejoined_at),
        "in_flight_on_killed_board": len(in_flight),
        "mid_stream_failure_delay_s": [round(o.ended - kill_at, 2) for o in mid],
        "served_by": dict(Counter(o.board for o in outcomes if o.kind == "ok")),
        "killed_board_after_rejoin": sum(1 for o in outcomes if o.board == killed and o.started >= rejoined_at
                                         and o.kind == "ok"),
        "median_stream_spread_s": round(statistics.median(streams), 3) if streams else None,
    }


def test_kill_and_restart_a_board_under_load(fleet: tuple[list[Daemon], Haproxy, str], smollm2_path: Path) -> None:
    boards, balancer, _ = fleet
    workdir = boards[1].log_path.parent
    victim = boards[1]
    victim_name = f"127.0.0.1_{port_of(victim)}"
    load = Load(balancer.url, CLIENTS, MAX_TOKENS, api_key=API_KEY).start()
    try:
        time.sleep(3)
        # Kill it while it streams, so that the in-flight case is exercised every run: a busy slot may still be
        # evaluating its prompt (nothing sent yet, so HAProxy retries it elsewhere), hence wait for a stream that
        # has delivered a chunk through the balancer.
        deadline = time.monotonic() + 30
        while load.streaming_on(victim_name) < 1:
            assert time.monotonic() < deadline, "the victim board never streamed through the balancer"
            time.sleep(0.005)
        kill_at = time.monotonic()
        victim.kill()  # SIGKILL: no drain, streams cut mid-token
        down_after = balancer.wait_status(victim_name, "DOWN", 10)
        time.sleep(3)
        restart_at = time.monotonic()
        # Same workdir and port (the last --port wins), as systemd's Restart=on-failure would bring it back.
        boards[1] = start_daemon(workdir, smollm2_path, api_key=API_KEY, extra=BOARD_CONFIG,
                                 args=("--port", str(port_of(victim))))
        ready_at = time.monotonic()
        balancer.wait_status(victim_name, "UP", 15)
        rejoined_at = time.monotonic()
        time.sleep(5)
    finally:
        outcomes = load.stop()
    summary = _summary(outcomes, victim_name, kill_at, rejoined_at)
    stats = balancer.stats()
    summary.update({"max_streams_per_survivor": max(int(row["smax"]) for name, row in stats.items()
                                                    if name not in ("BACKEND", victim_name)),
                    "max_streams_on_rejoined_board": int(stats[victim_name]["smax"]),
                    "max_queued_at_balancer": int(stats["BACKEND"]["qmax"]),
                    "retried_by_haproxy": _retried(balancer.log()),
                    "marked_down_after_kill_s": round(down_after, 2),
                    "restart_to_ready_s": round(ready_at - restart_at, 2),
                    "ready_to_up_s": round(rejoined_at - ready_at, 2)})
    report = json.dumps(summary)
    print(f"\nFLEET_HAPROXY {report}")
    if path := os.environ.get("CLAWD_FLEET_REPORT"):
        with open(path, "a") as handle:
            handle.write(report + "\n")

    failures = [o for o in outcomes if o.kind != "ok"]
    # Requests that had not started streaming never fail: HAProxy retries them on another board.
    assert summary.get("failed_before_stream", 0) == 0, [o.error for o in failures]
    # Only streams the killed board was serving fail, at most its two slots, and they end at once.
    for outcome in failures:
        assert outcome.kind == "failed_mid_stream" and outcome.board == victim_name, outcome
        assert outcome.started < kill_at <= outcome.ended < kill_at + CLEAN_FAILURE_SECONDS, outcome
    assert 1 <= len(failures) == summary["in_flight_on_killed_board"] <= BOARD_CONFIG["parallel"], summary
    # "Out of slots": the boards that carried the outage never ran more requests than their slots; the rest
    # waited at the balancer. (Right after it rejoins, HAProxy 2.6 may hand the restarted board a few more
    # for a moment; its own queue, server.max_queue, takes them.)
    assert summary["max_streams_per_survivor"] <= BOARD_CONFIG["parallel"], summary
    assert summary["max_queued_at_balancer"] > 0, summary
    # The restarted board takes its share again, and every board served traffic.
    assert summary["killed_board_after_rejoin"] > 0, summary
    assert len(summary["served_by"]) == 3, summary
    # Streams arrive token by token through the balancer, not as one buffered block.
    assert summary["median_stream_spread_s"] and summary["median_stream_spread_s"] > 0.05, summary
    assert balancer.proc.poll() is None
