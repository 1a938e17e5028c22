"""Camera sources: URI parsing, and a real MJPG video file opened through OpenCV as the camera."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.errors import ConfigError, OcrError
from edge_runtime.ocr.camera import Camera, parse_camera
from edge_runtime.ocr.reader import Reader
from edge_runtime.ocr.settings import OcrSettings

SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice", "Platform 7: Express to Berlin")


@pytest.mark.parametrize(("uri", "kind", "target", "backend"), [
    ("v4l2:/dev/video0", "device", "/dev/video0", "v4l2"),
    ("v4l2:2", "device", 2, "v4l2"),
    ("/dev/video1", "device", "/dev/video1", "v4l2"),
    ("0", "device", 0, "any"),
    ("file:/srv/sign.avi", "file", "/srv/sign.avi", "any"),
    ("file:///srv/sign.avi", "file", "/srv/sign.avi", "any"),
    ("rtsp://127.0.0.1:8554/cam", "stream", "rtsp://127.0.0.1:8554/cam", "ffmpeg"),
    ("http://127.0.0.1:8080/video.mjpg", "stream", "http://127.0.0.1:8080/video.mjpg", "ffmpeg"),
])
def test_camera_uris(uri: str, kind: str, target: str | int, backend: str) -> None:
    source = parse_camera(uri)
    assert (source.kind, source.target, source.backend) == (kind, target, backend)
    assert source.live == (kind != "file")


@pytest.mark.parametrize("uri", ["", "webcam", "v4l2:", "file:", "ftp://host/x", "/tmp/x.avi"])
def test_bad_camera_uri_is_a_config_error_listing_the_forms(uri: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_camera(uri)
    assert "modules.ocr.camera" in str(caught.value) and "file:/path/video.avi" in str(caught.value)


def test_video_file_as_camera_reads_the_sign(sign_video: Callable[..., Path]) -> None:
    video = sign_video()
    camera = Camera(parse_camera(f"file:{video}"), OcrSettings())
    frame = camera.grab()
    assert frame.shape == (480, 640, 3)
    result = Reader(OcrSettings()).read(frame)
    assert result.text == "\n".join(SIGN)
    assert result.skew_degrees == pytest.approx(2.0, abs=1.0)
    # Released after the grab (not kept open), and a second grab works the same way.
    assert camera._capture is None
    assert camera.grab().shape == (480, 640, 3)


def test_file_camera_follows_the_wall_clock_and_loops(sign_video: Callable[..., Path]) -> None:
    import cv2

    video = sign_video(frames=4)  # 4 frames at 5 fps: 0.8 s, then it starts over
    camera = Camera(parse_camera(f"file:{video}"), OcrSettings(camera_keep_open=True))
    try:
        camera.grab()
        first = camera._capture.get(cv2.CAP_PROP_POS_FRAMES)
        time.sleep(0.45)
        camera.grab()
        later = camera._capture.get(cv2.CAP_PROP_POS_FRAMES)
        assert camera._capture is not None  # kept open between grabs
        assert later != first  # time passed, so the "camera" shows a later frame (or has wrapped around)
        time.sleep(1.0)
        assert camera.grab().shape == (480, 640, 3)  # past the end: wraps instead of failing
    finally:
        camera.close()
    assert camera._capture is None


def test_missing_and_undecodable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(OcrError, match="camera file not found"):
        Camera(parse_camera(f"file:{tmp_path / 'nope.avi'}"), OcrSettings()).grab()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(OcrError, match=r"junk\.avi"):
        Camera(parse_camera(f"file:{junk}"), OcrSettings()).grab()


def test_absent_device_is_a_clear_error() -> None:
    # This machine has no camera; a device node that does not exist must be named, not crash.
    with pytest.raises(OcrError, match="/dev/video97 does not exist"):
        Camera(parse_camera("/dev/video97"), OcrSettings()).grab()
