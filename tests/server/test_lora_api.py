"""LoRA adapters over HTTP on the real daemon (tiny llama + its adapter): `lora`, `base+adapter`, /lora-adapters."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ..lora_models import TinyLora, convert_other_arch, convert_tiny
from .conftest import API_KEY, Daemon, free_port, start_daemon

PROMPT = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyLora:
    return convert_tiny(tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="module")
def lora_daemon(tiny: TinyLora, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    extra = {"parallel": 2, "max_sequence_length": 256,
             "adapters": [{"name": "tiny", "path": str(tiny.adapter)}, {"name": "half", "path": str(tiny.adapter),
                                                                          "scale": 0.5}]}
    running = start_daemon(tmp_path_factory.mktemp("lora-daemon"), tiny.base, extra=extra)
    yield running
    assert running.terminate() == 0, running.log()


def _complete(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"model": "tiny-llama-f32", "prompt": PROMPT, "max_tokens": 16, "temperature": 0, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _text(client: httpx.Client, **fields: Any) -> str:
    return str(_complete(client, **fields)["choices"][0]["text"])


def _error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert isinstance(message, str) and "\n" not in message
    return message


def test_lora_field_and_model_name_pick_the_adapter(lora_daemon: Daemon) -> None:
    with lora_daemon.client() as client:
        base = _text(client)
        by_id = _text(client, lora=[{"id": 0, "scale": 1.0}])
        assert by_id != base
        assert _text(client, lora=[{"name": "tiny"}]) == by_id  # the default scale, 1.0
        named = _complete(client, model="tiny-llama-f32+tiny")
        assert named["choices"][0]["text"] == by_id and named["model"] == "tiny-llama-f32+tiny"
        # "half" is the same file at 0.5 by default: as `tiny` at an explicit 0.5, and unlike either end.
        half = _text(client, model="anything+half")
        assert half == _text(client, lora=[{"id": 0, "scale": 0.5}]) and half not in (base, by_id)
        assert _text(client, lora=[{"id": 0, "scale": 0}]) == base  # scale 0 is no adapter
        chat = {"model": "tiny-llama-f32", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12,
                "temperature": 0}
        plain = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
        adapted = client.post("/v1/chat/completions", json={**chat, "lora": [{"id": 0}]})
        assert adapted.status_code == 200 and adapted.json()["choices"][0]["message"]["content"] != plain


def test_models_list_base_plus_adapter(lora_daemon: Daemon) -> None:
    with lora_daemon.client() as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids[:3] == ["tiny-llama-f32", "tiny-llama-f32+tiny", "tiny-llama-f32+half"]
        entry = client.get("/v1/models/tiny-llama-f32+half").json()
        assert entry["parent"] == "tiny-llama-f32" and entry["adapter"] == "half"


def test_lora_adapters_routes(lora_daemon: Daemon, tiny: TinyLora) -> None:
    with httpx.Client(base_url=lora_daemon.url) as anonymous:
        assert anonymous.get("/lora-adapters").status_code == 401
        assert anonymous.post("/lora-adapters", json=[{"id": 0, "scale": 0.5}]).status_code == 401
    with lora_daemon.client() as client:
        listed = client.get("/lora-adapters").json()
        assert listed == [{"id": 0, "name": "tiny", "path": str(tiny.adapter), "scale": 1.0},
                          {"id": 1, "name": "half", "path": str(tiny.adapter), "scale": 0.5}]
        base, full = _text(client), _text(client, model="x+tiny")
        try:
            response = client.post("/lora-adapters", json=[{"id": 0, "scale": 0.5}])
            assert response.status_code == 200 and response.json() == {"success": True}
            assert client.get("/lora-adapters").json()[0]["scale"] == 0.5
            assert _text(client, model="x+tiny") == _text(client, model="x+half") != full
            client.post("/lora-adapters", json=[{"name": "tiny", "scale": 0}])
            assert _text(client, model="x+tiny") == base
        finally:
            assert client.post("/lora-adapters", json=[{"id": 0, "scale": 1.0}]).status_code == 200
        assert _text(client, model="x+tiny") == full


@pytest.mark.parametrize(("fields", "expected"), [
    ({"lora": [{"id": 7}]}, "lora[0].id: no LoRA adapter with id 7; adapters: tiny, half"),
    ({"lora": [{"name": "pirate"}]}, "lora[0].name: no LoRA adapter named 'pirate'"),
    ({"lora": [{"id": 0, "name": "tiny"}]}, "lora[0]: give exactly one of id or name"),
    ({"lora": [{"scale": 1.0}]}, "lora[0]: give exactly one of id or name"),
    ({"lora": [{"id": 0, "scale": 99}]}, "lora[0].scale: 99.0 is not allowed; expected a number between -16 and 16"),
    ({"model": "tiny-llama-f32+pirate"}, "no LoRA adapter named 'pirate'; adapters: tiny, half"),
    ({"lora": [{"id": "0"}]}, "lora"),
    ({"lora": {"id": 0}}, "lora"),
])
def test_bad_adapter_requests_are_one_line_400s(lora_daemon: Daemon, fields: dict[str, Any], expected: str) -> None:
    with lora_daemon.client() as client:
        body = {"prompt": PROMPT, "max_tokens": 4, **fields}
        assert expected in _error(client.post("/v1/completions", json=body))
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}
        assert expected in _error(client.post("/v1/chat/completions", json=chat))


def test_bad_scale_updates_change_nothing(lora_daemon: Daemon) -> None:
    with lora_daemon.client() as client:
        before = client.get("/lora-adapters").json()
        assert "[1].scale: missing" in _error(client.post("/lora-adapters", json=[{"id": 0, "scale": 0.3},
                                                                                   {"id": 1}]))
        assert "no LoRA adapter with id 5" in _error(client.post("/lora-adapters", json=[{"id": 5, "scale": 1}]))
        _error(client.post("/lora-adapters", json={"id": 0, "scale": 1}))
        assert client.get("/lora-adapters").json() == before


def test_ollama_show_and_generate_with_adapter(lora_daemon: Daemon, tiny: TinyLora) -> None:
    with lora_daemon.client() as client:
        shown = client.post("/api/show", json={"model": "tiny-llama-f32"}).json()
        assert f"ADAPTER {tiny.adapter}\n" in shown["modelfile"]
        body = {"prompt": PROMPT, "raw": True, "stream": False, "options": {"temperature": 0, "num_predict": 12}}
        plain = client.post("/api/generate", json={**body, "model": "tiny-llama-f32"}).json()
        adapted = client.post("/api/generate", json={**body, "model": "tiny-llama-f32+tiny"}).json()
        assert adapted["model"] == "tiny-llama-f32+tiny" and adapted["response"] != plain["response"]
        refused = client.post("/api/generate", json={**body, "model": "tiny-llama-f32+pirate"})
        assert refused.status_code == 400 and "pirate" in refused.text


def _serve_error(tmp_path: Path, model: Path, adapters: Any) -> tuple[int, str]:
    """The exit status of `serve` with these adapters, and its one `error:` line (log lines may precede it)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"threads": 1, "parallel": 1, "max_sequence_length": 256,
                                      "adapters": adapters, "server": {"api_key": API_KEY}}))
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "--config", str(config), "serve", "--model",
                           str(model), "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return proc.returncode, errors[0]


@pytest.mark.parametrize(("adapters", "expected"), [
    ("x.gguf", "adapters: 'x.gguf' is not allowed; expected a list of {name, path, scale}"),
    ([{"name": "a+b", "path": "x"}], "adapters[0].name: 'a+b' is not allowed"),
    ([{"name": "a", "path": "x", "rank": 8}], "adapters[0].rank: unknown key"),
    ([{"name": "a", "path": "x", "scale": "1"}], "adapters[0].scale: '1' is not allowed"),
    ([{"name": "a", "path": "x"}, {"name": "a", "path": "y"}], "adapters[1].name: 'a' is already the name"),
    ([{"name": "a", "path": "/nonexistent/a.gguf"}], "adapters[0].path: /nonexistent/a.gguf: no such file"),
])
def test_config_errors_name_the_key(tiny: TinyLora, tmp_path: Path, adapters: Any, expected: str) -> None:
    code, stderr = _serve_error(tmp_path, tiny.base, adapters)
    assert code == 2 and expected in stderr, stderr


def test_config_refuses_files_that_are_no_lora_for_the_model(tiny: TinyLora, tmp_path: Path) -> None:
    code, stderr = _serve_error(tmp_path, tiny.base, [{"name": "a", "path": str(tiny.base)}])
    assert code == 2 and "adapters[0].path: tiny-llama-f32.gguf is not a LoRA adapter (general.type 'model'" \
        in stderr, stderr
    other = convert_other_arch(tmp_path)
    code, stderr = _serve_error(tmp_path, tiny.base, [{"name": "a", "path": str(other)}])
    assert code == 2 and "is a LoRA for 'qwen2' but the model tiny-llama-f32.gguf is 'llama'" in stderr, stderr
