"""One real daemon with the OCR module and a kiosk whose microphone does not exist: per-route upload limits
(server.max_upload_bytes vs server.max_request_bytes) and a kiosk failure that is reported, never fatal."""
from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_runtime.config import from_mapping
from edge_runtime.errors import ConfigError

from .conftest import SERVER_MAX_TOKENS, Daemon, start_daemon

REQUEST_LIMIT = 65536  # conftest's server.max_request_bytes
UPLOAD_LIMIT = 1024 * 1024
BOUNDARY = "clawdtestboundary"


@pytest.fixture(scope="module")
def upload_daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """OCR routes, max_request_bytes 64 KiB (JSON), max_upload_bytes 1 MiB (multipart)."""
    workdir = tmp_path_factory.mktemp("uploads")
    extra: dict[str, Any] = {
        "modules": {"ocr": {"enabled": True},
                    "voice": {"input": "mic:no-such-microphone", "language": "en", "stt": "pocketsphinx"}},
        "kiosk": {"enabled": True},  # fails: no such microphone (tested below, same daemon to save a start)
        "server": {"max_tokens": SERVER_MAX_TOKENS, "max_request_bytes": REQUEST_LIMIT, "shutdown_timeout": 5,
                   "max_upload_bytes": UPLOAD_LIMIT},
    }
    running = start_daemon(workdir, smollm2_path, api_key=None, extra=extra)
    yield running
    assert running.terminate() == 0, running.log()


def _sign_bmp() -> bytes:
    """An uncompressed BMP (so it is larger than max_request_bytes) of a printed sign, as tests/ocr renders them."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("DejaVuSans.ttf", 48)  # Debian: fonts-dejavu-core
    image = Image.new("L", (int(font.getbbox("OPEN DAILY")[2]) + 96, 144), 245)
    ImageDraw.Draw(image).text((48, 48), "OPEN DAILY", font=font, fill=20)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="BMP")
    return out.getvalue()


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return dict(body["error"])


def _multipart(size: int) -> tuple[bytes, bytes]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bmp\"\r\n"
            "Content-Type: image/bmp\r\n\r\n").encode()
    return head + b"\0" * size, f"\r\n--{BOUNDARY}--\r\n".encode()


def test_an_upload_larger_than_max_request_bytes_reaches_the_ocr_route(upload_daemon: Daemon) -> None:
    image = _sign_bmp()
    assert REQUEST_LIMIT < len(image) < UPLOAD_LIMIT
    with upload_daemon.client() as client:
        response = client.post("/v1/ocr", files={"file": ("sign.bmp", image, "image/bmp")})
    assert response.status_code == 200, response.text
    assert "OPEN DAILY" in response.json()["text"]


def test_an_upload_over_max_upload_bytes_is_413_naming_the_setting(upload_daemon: Daemon) -> None:
    head, tail = _multipart(UPLOAD_LIMIT + 1000)
    with upload_daemon.client() as client:
        declared = client.post("/v1/ocr", content=head + tail,
                               headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        error = _error(declared, 413)
        assert error["code"] == "request_too_large" and "server.max_upload_bytes" in error["message"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while the body streams in
            yield head[:100]
            for start in range(100, len(head), 65536):
                yield head[start:start + 65536]
            yield tail

        streamed = client.post("/v1/ocr", content=chunked(),
                               headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        error = _error(streamed, 413)
        assert error["code"] == "request_too_large" and "server.max_upload_bytes" in error["message"]
        # JSON routes keep the small limit.
        json_error = _error(client.post("/v1/chat/completions", content=b"x" * (REQUEST_LIMIT + 1),
                                        headers={"Content-Type": "application/json"}), 413)
        assert "server.max_request_bytes" in json_error["message"]
        assert client.get("/health").status_code == 200


def test_an_over_limit_upload_is_refused_before_the_rest_of_it_is_sent(upload_daemon: Daemon) -> None:
    """The 413 comes while the client still holds most of a 64 MiB body: the daemon never waits for (or buffers)
    the whole upload."""
    host, port = upload_daemon.url.removeprefix("http://").split(":")
    head, _ = _multipart(UPLOAD_LIMIT + 200_000)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/ocr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
        for start in range(0, len(head), 65536):
            block = head[start:start + 65536]
            sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        # Nothing more is sent (a 64 MiB upload would go on): the answer must come anyway.
        sock.settimeout(20)
        reply = b""
        while b"\r\n\r\n" not in reply:
            block = sock.recv(4096)
            if not block:
                break
            reply += block
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_max_upload_bytes_is_validated() -> None:
    assert from_mapping({"server": {"max_upload_bytes": "50MiB"}}).server.max_upload_bytes == 50 * 1024 * 1024
    assert from_mapping({}).server.max_upload_bytes == 25 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"server\.max_upload_bytes"):
        from_mapping({"server": {"max_upload_bytes": "lots"}})


def test_a_kiosk_without_microphone_is_reported_and_http_keeps_serving(upload_daemon: Daemon) -> None:
    deadline = time.monotonic() + 60
    with upload_daemon.client() as client:
        while True:
            health = client.get("/health")
            assert health.status_code == 200, health.text  # the LLM API is healthy whatever the kiosk does
            kiosk = health.json()["kiosk"]
            if kiosk["status"] == "failed":
                break
            assert time.monotonic() < deadline, (kiosk, upload_daemon.log())
            time.sleep(0.2)
        assert "no-such-microphone" in kiosk["reason"] and kiosk["failures"] >= 1
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                           "max_tokens": 4})
        assert answer.status_code == 200, answer.text
    metrics = upload_daemon.metrics()
    assert metrics["clawd_edge_kiosk_up"] == 0
    assert metrics["clawd_edge_kiosk_failures_total"] >= 1
    assert metrics["clawd_edge_kiosk_status{status=failed}"] == 1
    assert "kiosk failed: input device 'no-such-microphone'" in upload_daemon.log()
