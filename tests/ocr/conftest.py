"""Fixtures for OCR tests: signs rendered with Pillow (DejaVu Sans) and written into a real MJPG video."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice", "Platform 7: Express to Berlin")
FONT = "DejaVuSans.ttf"  # Debian: fonts-dejavu-core


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        pytest.fail(f"font {FONT} not found: install fonts-dejavu-core")


def render_sign(lines: Sequence[str], size: int, *, angle: float = 0.0, noise: float = 0.0, seed: int = 0,
                invert: bool = False, shade: float = 1.0, pad: int | None = None) -> np.ndarray:
    """Grayscale image of `lines`; rotated by `angle` degrees, Gaussian noise of std `noise`, and a
    left-to-right lighting falloff down to `shade` (1.0 = even light)."""
    from PIL import Image, ImageDraw

    font = _font(size)
    pad = size if pad is None else pad
    width = max(int(font.getbbox(line)[2]) for line in lines) + 2 * pad
    height = int(len(lines) * size * 1.5 + 2 * pad)
    ground, ink = (30, 235) if invert else (245, 20)
    image = Image.new("L", (width, height), ground)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * size * 1.5), line, font=font, fill=ink)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=ground)
    pixels = np.asarray(image).astype(np.float32)
    pixels *= np.linspace(shade, 1.0, pixels.shape[1], dtype=np.float32)[None, :]
    if noise:
        pixels += np.random.default_rng(seed).normal(0.0, noise, pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture()
def sign() -> Callable[..., np.ndarray]:
    return render_sign


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 5.0) -> Path:
    """A real MJPG AVI through OpenCV's writer (what a camera dump looks like to VideoCapture)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG video"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


def camera_scene(text_lines: Sequence[str], *, frames: int = 10, seed: int = 1) -> list[np.ndarray]:
    """A 640×480 colour view of a wall with a slightly tilted sign on it, fresh sensor noise in every frame."""
    import cv2

    rng = np.random.default_rng(seed)
    sign_image = render_sign(text_lines, 22, angle=2.0, pad=18)
    out: list[np.ndarray] = []
    for _ in range(frames):
        wall = np.full((480, 640, 3), (90, 110, 130), np.float32)
        h, w = sign_image.shape
        y, x = (480 - h) // 2, (640 - w) // 2
        wall[y:y + h, x:x + w] = cv2.cvtColor(sign_image, cv2.COLOR_GRAY2BGR)
        wall += rng.normal(0.0, 6.0, wall.shape).astype(np.float32)
        out.append(np.clip(wall, 0, 255).astype(np.uint8))
    return out


@pytest.fixture()
def sign_video(tmp_path: Path) -> Callable[..., Path]:
    def make(lines: Sequence[str] = SIGN, *, name: str = "sign.avi", frames: int = 10) -> Path:
        return write_video(tmp_path / name, camera_scene(lines, frames=frames))
    return make
