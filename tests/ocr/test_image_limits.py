"""Small files that decode into huge images are refused from the header; preprocessing stays within max_pixels."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime.config import Settings
from edge_runtime.errors import InvalidRequest
from edge_runtime.ocr.module import create
from edge_runtime.ocr.preprocess import prepare
from edge_runtime.ocr.reader import Reader, decode_image
from edge_runtime.ocr.settings import OcrSettings

REPO = Path(__file__).resolve().parents[2]
SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice")
# The two uploads from the report: a few kilobytes each, about 120 MB once decoded to BGR.
HUGE = [(6300, 6300), (65535, 610)]


def blank_png(width: int, height: int) -> bytes:
    """A white 1-bit grayscale PNG written by hand: deflate squeezes a blank row to almost nothing."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter byte "none", then the packed bits
    deflate = zlib.compressobj(9)
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# Runs in a fresh interpreter so ru_maxrss (the process's peak RSS) shows what this one image cost: OpenCV's
# buffers are invisible to tracemalloc. A small image goes through first, so that lazy imports and OpenCV's own
# start-up are not counted.
_MEASURE = """
import json, resource, sys
import cv2, numpy
from edge_runtime.ocr.preprocess import prepare
from edge_runtime.ocr.reader import decode_image
from edge_runtime.ocr.settings import OcrSettings
settings = OcrSettings()
small = cv2.imencode(".png", numpy.full((64, 64), 255, numpy.uint8))[1].tobytes()
prepare(decode_image(small, settings.max_pixels), settings)
with open(sys.argv[1], "rb") as handle:
    data = handle.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    prepare(decode_image(data, settings.max_pixels), settings)
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"error": error, "added_mib": added / 1024}))
"""


def _measure(path: Path) -> dict[str, Any]:
    """Decode and preprocess an image file with the default settings in a child process; its error and cost."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.mark.parametrize(("width", "height"), HUGE)
def test_tiny_png_of_huge_size_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(blank_png(width, height))
    assert path.stat().st_size < 12 * 1024
    result = _measure(path)
    assert result["error"] is not None and result["error"].startswith("InvalidRequest: ")
    assert f"{width}×{height}" in result["error"] and "modules.ocr.max_pixels" in result["error"]
    assert "\n" not in result["error"]
    # Decoding alone would add about 230 MiB (measured); reading the header costs a few pages.
    assert result["added_mib"] < 16, result


def test_largest_accepted_image_stays_under_300_mib(tmp_path: Path) -> None:
    """The default max_pixels is sized for a 2 GB board: decoding plus preprocessing the largest image it admits
    must stay under 300 MiB (measured 246 MiB for a blank one, up to 282 MiB for text or noise)."""
    width = 4096
    path = tmp_path / "largest.png"
    path.write_bytes(blank_png(width, OcrSettings().max_pixels // width))
    result = _measure(path)
    assert result["error"] is None, result
    assert result["added_mib"] < 300, result


def test_side_over_tesseracts_limit_is_refused() -> None:
    # 40000×100 passes the pixel limit, but Tesseract answers "Image too large" past 32767 pixels per side,
    # which used to come back as a 500.
    with pytest.raises(InvalidRequest, match=r"40000×100 pixels; at most 32766 pixels per side can be read$"):
        decode_image(blank_png(40000, 100), OcrSettings().max_pixels)


def test_image_past_pillows_own_ceiling_names_the_setting() -> None:
    # 400 million pixels: Pillow refuses to open it at all (DecompressionBombError), still a one-line 400.
    limit = OcrSettings().max_pixels
    with pytest.raises(InvalidRequest, match=rf"^the image has far more pixels than the limit of {limit} "
                                             r"\(modules\.ocr\.max_pixels\)$"):
        decode_image(blank_png(20000, 20000), limit)


def test_formats_opencv_might_read_differently_are_refused() -> None:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("L", (8, 8), 255).save(out, format="PPM")
    with pytest.raises(InvalidRequest, match=r"^the image is PPM, not PNG, JPEG, BMP, TIFF or WebP$"):
        decode_image(out.getvalue(), OcrSettings().max_pixels)


def _client() -> Any:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from edge_runtime.server.errors import install_handlers

    app = FastAPI()
    install_handlers(app)
    for router in create({}, Settings()).routers():  # the defaults, as a daemon runs them
        app.include_router(router)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(("width", "height"), [*HUGE, (40000, 100)])
def test_http_upload_of_huge_image_is_a_400(width: int, height: int) -> None:
    files = {"file": ("huge.png", blank_png(width, height), "image/png")}
    response = _client().post("/v1/ocr", files=files)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and f"{width}×{height}" in error["message"]


def test_cli_refuses_huge_image_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(blank_png(6300, 6300))
    from edge_runtime.cli import cli

    result = CliRunner().invoke(cli, ["ocr", str(path)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "6300×6300" in result.stderr and "modules.ocr.max_pixels" in result.stderr


def test_enlarging_stays_within_max_pixels(sign: Callable[..., np.ndarray]) -> None:
    image = sign(SIGN, 16)
    wanted = image.size * 16  # upscale 4 in both directions
    settings = OcrSettings(upscale=4.0, max_pixels=wanted // 4)
    prepared = prepare(image, settings)
    assert prepared.image.size <= settings.max_pixels
    assert 1.5 < prepared.scale < 2.5
    result = Reader(settings).read(image)
    assert result.text == "\n".join(SIGN)
    height, width = image.shape
    for word in result.words:  # boxes still come back in the input's pixels
        x, y, w, h = word.box
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height


def test_rotated_canvas_stays_within_max_pixels(sign: Callable[..., np.ndarray]) -> None:
    # Straightening a tilted image needs a larger canvas for the turned corners: within the budget, the image
    # is shrunk a little instead.
    image = sign(SIGN, 40, angle=8.0)
    settings = OcrSettings(upscale=1.0, max_pixels=image.size)
    prepared = prepare(image, settings)
    assert abs(prepared.skew_degrees - 8.0) < 1.0
    assert prepared.image.size <= settings.max_pixels and prepared.scale < 1.0
    assert Reader(settings).read(image).text == "\n".join(SIGN)


@pytest.mark.parametrize("skew", [0.0, 2.0, 15.0])
def test_canvas_never_exceeds_tesseracts_side_limit(skew: float) -> None:
    from edge_runtime.ocr.preprocess import MAX_SIDE, fit_canvas

    scale, out_w, out_h = fit_canvas(32766, 900, skew, 1.0, 10**9)
    assert out_w <= MAX_SIDE and out_h <= MAX_SIDE and scale <= 1.0
    scale, out_w, out_h = fit_canvas(1000, 1000, skew, 4.0, 2_000_000)
    assert out_w * out_h <= 2_000_000 and 1.0 < scale < 4.0
