"""Camera sources (V4L2 device, index, video file, RTSP/HTTP stream) read one fresh frame on demand."""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, OcrError
from ..extras import optional_import
from .settings import OcrSettings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

CAMERA_FORMS = ("v4l2:/dev/videoN", "v4l2:N", "/dev/videoN", "N (device index)", "file:/path/video.avi",
                "rtsp://host/stream", "http(s)://host/stream")
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


@dataclass(frozen=True)
class CameraSource:
    """A parsed camera URI: `kind` is device, file or stream; `target` is what OpenCV opens."""

    kind: str
    target: str | int
    uri: str
    backend: str = "any"  # any, v4l2 or ffmpeg: the OpenCV capture API to ask for

    @property
    def live(self) -> bool:
        """Live sources buffer frames, so a fresh frame needs the buffer drained first."""
        return self.kind in ("device", "stream")


def parse_camera(uri: str, *, key: str = "modules.ocr.camera") -> CameraSource:
    """Turn a config/CLI camera string into a CameraSource; unknown forms are config errors listing the valid ones."""
    text = uri.strip()
    if text.startswith("v4l2:"):
        rest = text[len("v4l2:"):]
        if rest.isdigit():
            return CameraSource("device", int(rest), uri, "v4l2")
        if rest.startswith("/dev/"):
            return CameraSource("device", rest, uri, "v4l2")
    elif text.isdigit():
        return CameraSource("device", int(text), uri)
    elif text.startswith("/dev/"):
        return CameraSource("device", text, uri, "v4l2")
    elif text.startswith(_STREAM_SCHEMES):
        return CameraSource("stream", text, uri, "ffmpeg")
    elif text.startswith("file:"):
        path = text[len("file:"):]
        if path.startswith("//"):  # file:///abs/path
            path = path[2:]
        if path:
            return CameraSource("file", str(Path(path).expanduser()), uri)
    raise ConfigError(f"{uri!r} is not a camera; use one of: {', '.join(CAMERA_FORMS)}", key=key)


def import_cv2() -> Any:
    """OpenCV, imported only when a frame or an image is actually processed."""
    return optional_import("cv2", what="OpenCV (Python package opencv-python-headless)")


class Camera:
    """One camera; `grab()` opens it if needed, returns the newest frame (BGR) and releases it unless kept open.

    Video files stand in for live cameras: the frame returned is the one a camera started together with this
    object would show now (wall clock × fps, looping), so a kiosk driven by a file behaves like a real one.
    """

    def __init__(self, source: CameraSource, settings: OcrSettings) -> None:
        self.source = source
        self._settings = settings
        self._lock = threading.Lock()
        self._capture: Any = None
        self._started = time.monotonic()

    def grab(self) -> NDArray[np.uint8]:
        """Blocking: one frame as an H×W×3 uint8 array. Run it in a worker thread from async code."""
        with self._lock:
            capture = self._capture if self._capture is not None else self._open()
            try:
                frame = self._read(capture)
            except BaseException:
                self._release(capture)
                raise
            if self._settings.camera_keep_open:
                self._capture = capture
            else:
                self._release(capture)
            return frame

    def close(self) -> None:
        with self._lock:
            if self._capture is not None:
                self._release(self._capture)

    def _release(self, capture: Any) -> None:
        capture.release()
        if capture is self._capture:
            self._capture = None

    def _open(self) -> Any:
        cv2 = import_cv2()
        source, settings = self.source, self._settings
        if source.kind == "file" and not Path(str(source.target)).is_file():
            raise OcrError(f"camera file not found: {source.target}")
        if source.kind == "device" and isinstance(source.target, str) and not Path(source.target).exists():
            raise OcrError(f"camera device {source.target} does not exist (is the camera plugged in?)")
        timeout_ms = int(settings.camera_open_timeout * 1000)
        params: list[int] = []
        if source.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        api = {"v4l2": cv2.CAP_V4L2, "ffmpeg": cv2.CAP_FFMPEG}.get(source.backend, cv2.CAP_ANY)
        capture = cv2.VideoCapture(_device_index(source), api, params)
        if not capture.isOpened():
            capture.release()
            raise OcrError(f"cannot open camera {source.uri!r}{_open_hint(source)}")
        if source.live:
            # Ask the driver to keep one buffered frame; not every backend honours it, hence the drain in _read.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            if settings.camera_width:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, settings.camera_width)
            if settings.camera_height:
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.camera_height)
        return capture

    def _read(self, capture: Any) -> NDArray[np.uint8]:
        cv2 = import_cv2()
        if self.source.live:
            # Frames queued while nobody was looking are stale (and the first ones after opening are often dark
            # while auto-exposure settles): skip them without decoding.
            for _ in range(self._settings.camera_drain_frames):
                if not capture.grab():
                    break
        else:
            self._seek_file(cv2, capture)
        ok, frame = capture.read()
        if not ok and not self.source.live:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        if not ok or frame is None:
            raise OcrError(f"camera {self.source.uri!r} delivered no frame")
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame  # type: ignore[no-any-return]

    def _seek_file(self, cv2: Any, capture: Any) -> None:
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if fps <= 0 or count <= 0:
            return  # unknown timing: frames are simply read in order
        index = int((time.monotonic() - self._started) * fps) % count
        if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) != index:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)


def _device_index(source: CameraSource) -> str | int:
    """/dev/video2 (or a /dev/v4l/by-id link to it) as index 2: some OpenCV builds' V4L2 backend opens
    devices only by index."""
    if source.kind == "device" and isinstance(source.target, str):
        match = re.fullmatch(r"/dev/video(\d+)", os.path.realpath(source.target))
        if match:
            return int(match.group(1))
    return source.target


def _open_hint(source: CameraSource) -> str:
    if source.kind == "device":
        return ": check that the device exists and that this user is in the 'video' group"
    if source.kind == "stream":
        return ": check the URL and that the stream is reachable"
    return ": not a video OpenCV can decode"
