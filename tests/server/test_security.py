"""Requests that once stopped the engine (issue: one small request must never kill or brick the daemon), each
against a daemon of its own, which must still answer and be healthy afterwards."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Daemon, start_daemon

HELLO = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def victim(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("victim"), smollm2_path)
    yield daemon
    assert daemon.terminate() == 0, daemon.log()


def _post_raw(daemon: Daemon, route: str, body: dict[str, object]) -> tuple[int, str]:
    # json.dumps writes a lone surrogate as the escape "\ud800", exactly what an attacker's client would send.
    with daemon.client() as client:
        response = client.post(route, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        return response.status_code, response.text


def _still_serving(daemon: Daemon) -> None:
    with daemon.client() as client:
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
        health = client.get("/health")
    assert health.status_code == 200, health.text
    assert daemon.proc.poll() is None


@pytest.mark.parametrize(("route", "body"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi \ud800"}], "max_tokens": 4}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi \ud800"}], "max_tokens": 4,
                              "stream": True}),
    ("/v1/completions", {"prompt": "Hi \udfff there", "max_tokens": 4}),
])
def test_a_lone_surrogate_is_a_400_and_the_engine_keeps_serving(victim: Daemon, route: str,
                                                                  body: dict[str, object]) -> None:
    status, text = _post_raw(victim, route, body)
    assert status == 400, text
    assert "not valid Unicode" in json.loads(text)["error"]["message"]
    _still_serving(victim)


def test_a_chat_template_that_raises_fails_only_that_request(smollm2_path: Path, tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, smollm2_path, extra={"chat_template": "{{ 1 // 0 }}"})
    try:
        with daemon.client() as client:
            chat = client.post("/v1/chat/completions", json=HELLO)
            assert chat.status_code == 400, chat.text
            assert "ZeroDivisionError" in chat.json()["error"]["message"]
            plain = client.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4})
            assert plain.status_code == 200, plain.text
            assert client.get("/health").status_code == 200
    finally:
        assert daemon.terminate() == 0, daemon.log()
