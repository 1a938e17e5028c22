"""espeak-ng voices and `+variant` suffixes must be installed ones: espeak-ng opens the variant as a file path."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from edge_runtime.config import Settings
from edge_runtime.errors import AudioError
from edge_runtime.voice import tts as tts_module
from edge_runtime.voice.audio import decode_wav
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options
from edge_runtime.voice.tts import EspeakTTS, create_tts

TRAVERSAL = "en-us+../../../../etc/passwd"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """The voice router (English espeak-ng) on an app with the daemon's error handlers."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from edge_runtime.server.errors import install_handlers

    module = VoiceModule(parse_options({"language": "en", "input": "-"}), Settings())
    app = FastAPI()
    install_handlers(app)
    for router in module.routers():
        app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _speak(client: Any, voice: str) -> Any:
    return client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hello there.", "voice": voice})


@pytest.mark.parametrize("voice", [
    TRAVERSAL,
    "en-us+/etc/passwd",
    "en-us+F3",  # variant files are case-sensitive: espeak-ng would silently speak without the variant
    "en-us+no-such-variant",
    "en-us+f3+klatt",
    "en-us+",
    "en-us+" + "a" * 200,  # espeak-ng copies the variant name into a 40-byte buffer
])
def test_unknown_variants_are_refused(voice: str) -> None:
    assert not EspeakTTS().has_voice(voice)


@pytest.mark.parametrize("voice", ["en-us+f3", "en-us+klatt", "EN-US+f3", "en-us+13", "en-us+3", "ko"])
def test_installed_voices_and_variants_are_accepted(voice: str) -> None:
    assert EspeakTTS().has_voice(voice)


def test_configured_traversal_is_a_clear_error() -> None:
    with pytest.raises(AudioError, match=r"^espeak-ng has no voice 'en-us\+\.\./\.\./\.\./\.\./etc/passwd' "):
        create_tts("espeak", voice=TRAVERSAL, language="en")


def test_traversal_over_http_is_a_400(client: Any) -> None:
    response = _speak(client, TRAVERSAL)
    assert response.status_code == 400, (response.status_code, response.headers.get("content-type"))
    error = response.json()["error"]
    assert error["param"] == "voice" and TRAVERSAL in error["message"] and "\n" not in error["message"]


def test_real_variant_still_speaks_over_http(client: Any) -> None:
    plain, variant = _speak(client, "en-us"), _speak(client, "en-us+f3")
    assert plain.status_code == 200 and variant.status_code == 200, variant.text
    audio = decode_wav(variant.content, "response")
    assert audio.duration > 0.3
    assert variant.content != plain.content  # the variant was applied, not silently dropped


def test_lists_are_read_once_per_engine_and_its_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    base = EspeakTTS()
    assert base.has_voice("en-us+f3")
    copy = base.with_voice("en-us+f3", 200)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"espeak-ng listed again: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    assert tts_module.subprocess.run is refuse
    assert copy.has_voice("en-us+klatt") and not copy.has_voice(TRAVERSAL)
