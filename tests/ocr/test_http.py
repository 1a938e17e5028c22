"""POST /v1/ocr and /v1/ocr/camera on a FastAPI app with the daemon's real error handlers, over real sockets."""
from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.ocr.module import OcrModule, create

SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice", "Platform 7: Express to Berlin")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(module: OcrModule) -> Iterator[str]:
    """uvicorn on a loopback port in a thread, the module's router on an app with the daemon's handlers."""
    import uvicorn
    from fastapi import FastAPI

    from edge_runtime.server.errors import install_handlers

    app = FastAPI()
    install_handlers(app)
    for router in module.routers():
        app.include_router(router)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        asyncio.run(module.stop())


@pytest.fixture()
def base_url(sign_video: Callable[..., Path]) -> Iterator[str]:
    video = sign_video()
    module = create({"camera": f"file:{video}", "max_upload_bytes": "200KiB", "max_pixels": 2_000_000},
                    Settings())
    asyncio.run(module.start())
    yield from _serve(module)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


def test_upload_returns_text_words_boxes_and_confidences(base_url: str,
                                                         sign: Callable[..., np.ndarray]) -> None:
    image = sign(SIGN, 24, angle=1.5, noise=6.0)
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("sign.png", _png(image), "image/png")},
                          timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "\n".join(SIGN)
    assert body["lang"] == "eng"
    assert [w["text"] for w in body["words"]] == " ".join(SIGN).split()
    for word in body["words"]:
        x, y, w, h = word["box"]
        assert 0 <= x < x + w <= image.shape[1] and 0 <= y < y + h <= image.shape[0]
        assert 0.0 <= word["conf"] <= 100.0


def test_jpeg_upload_with_language_and_psm(base_url: str, sign: Callable[..., np.ndarray]) -> None:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(sign(SIGN[:1], 32)).save(out, format="JPEG", quality=90)
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("s.jpg", out.getvalue(), "image/jpeg")},
                          data={"lang": "eng", "psm": "7"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == SIGN[0]


def test_camera_endpoint_reads_the_configured_camera(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/ocr/camera", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "\n".join(SIGN)


def test_non_image_upload_is_400(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("notes.png", b"hello, not a picture", "image/png")})
    error = _error(response, 400)
    assert error["param"] == "file" and "not an image" in error["message"]


def test_text_content_type_is_415(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert "not an image type" in _error(response, 415)["message"]


def test_empty_upload_is_400(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("empty.png", b"", "image/png")})
    assert "empty" in _error(response, 400)["message"]


def test_oversized_upload_is_413(base_url: str) -> None:
    big = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # noise: PNG cannot shrink it
    data = _png(big)
    assert len(data) > 200 * 1024
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("big.png", data, "image/png")})
    assert "max_upload_bytes" in _error(response, 413)["message"]


def test_too_many_pixels_is_400(base_url: str) -> None:
    # 3000×1000 white: a tiny PNG that would decode into more pixels than max_pixels allows.
    data = _png(np.full((1000, 3000), 255, np.uint8))
    assert len(data) < 200 * 1024
    response = httpx.post(f"{base_url}/v1/ocr", files={"file": ("wide.png", data, "image/png")})
    assert "more than the limit" in _error(response, 400)["message"]


def test_missing_file_field_is_400(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/ocr", data={"lang": "eng"})
    assert _error(response, 400)["param"] == "file"


def test_bad_and_uninstalled_languages_are_400(base_url: str, sign: Callable[..., np.ndarray]) -> None:
    files = {"file": ("s.png", _png(sign(SIGN[:1], 24)), "image/png")}
    bad = _error(httpx.post(f"{base_url}/v1/ocr", files=files, data={"lang": "../etc"}), 400)
    assert bad["param"] == "lang"
    missing = _error(httpx.post(f"{base_url}/v1/ocr", files=files, data={"lang": "xyz"}), 400)
    assert missing["param"] == "lang" and "tesseract-ocr-xyz" in missing["message"]
    psm = _error(httpx.post(f"{base_url}/v1/ocr", files=files, data={"psm": "0"}), 400)
    assert psm["param"] == "psm"


def test_camera_endpoint_without_camera_is_400() -> None:
    module = create({}, Settings())
    for url in _serve(module):
        assert "no camera configured" in _error(httpx.post(f"{url}/v1/ocr/camera"), 400)["message"]
