"""The OCR module's options (`modules.ocr` in config.yaml), validated into a frozen dataclass."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import parse_size
from ..errors import ConfigError

THRESHOLDS = ("adaptive", "otsu", "none")
# Tesseract language codes: "eng", "chi_sim", "eng+kor"; anything else would reach a shell-free argv anyway,
# but a clear error beats Tesseract's.
_LANG_RE = re.compile(r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class OcrSettings:
    """How frames are captured, cleaned up and read; a field's name is its key under `modules.ocr`."""

    camera: str | None = None
    lang: str = "eng"
    psm: int = 3
    oem: int | None = None
    tessdata_dir: str | None = None
    threshold: str = "adaptive"
    deskew: bool = True
    max_skew: float = 15.0
    upscale: float | None = None  # None = auto: small images are enlarged so glyphs reach Tesseract's sweet spot
    denoise: bool = True
    min_confidence: float = 0.0
    timeout: float = 30.0
    max_upload_bytes: int = 10 * 1024 * 1024
    # Decoding and preprocessing take about 23 bytes per pixel at their peak (measured; README "Camera OCR"), so
    # 12.6 MP stays under 300 MiB on a 2 GB board and still admits a 12-MP photo (4032×3024, 4096×3072).
    max_pixels: int = 12_600_000
    max_concurrent: int = 1
    max_queue: int = 4
    camera_keep_open: bool = False
    camera_drain_frames: int = 5
    camera_width: int | None = None
    camera_height: int | None = None
    camera_open_timeout: float = 10.0

    def replace(self, **changes: Any) -> OcrSettings:
        """A copy with command-line overrides applied (None means: keep the configured value)."""
        values = {k: v for k, v in changes.items() if v is not None}
        return from_options({**to_options(self), **values}, source="command line") if values else self


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(key: str, value: object, allowed: str, source: str) -> ConfigError:
    return ConfigError(f"{value!r} is not allowed; expected {allowed}", key=f"modules.ocr.{key}", source=source)


def from_options(options: Mapping[str, Any], *, source: str = "config") -> OcrSettings:
    """Validate `modules.ocr` options; unknown keys are errors that list the allowed ones."""
    allowed = {f.name for f in dataclasses.fields(OcrSettings)}
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(f"unknown key; allowed keys are: {', '.join(sorted(allowed))}",
                              key=f"modules.ocr.{key}", source=source)
        values[key] = _validate(str(key), value, source)
    return OcrSettings(**values)


def _validate(key: str, value: Any, source: str) -> Any:
    nullable = {"camera", "oem", "tessdata_dir", "upscale", "camera_width", "camera_height"}
    if value is None and key in nullable:
        return None
    if key in ("camera", "tessdata_dir"):
        if isinstance(value, int) and not isinstance(value, bool) and key == "camera":
            value = str(value)  # `camera: 0` in YAML is an int; it means device index 0
        if not isinstance(value, str) or not value:
            raise _bad(key, value, "a non-empty string", source)
        return value
    if key == "lang":
        if not isinstance(value, str) or not _LANG_RE.match(value):
            raise _bad(key, value, "a Tesseract language code such as 'eng' or 'eng+kor'", source)
        return value
    if key == "psm":
        if not _is_int(value) or not 1 <= value <= 13:
            raise _bad(key, value, "a Tesseract page segmentation mode from 1 to 13", source)
        return value
    if key == "oem":
        if not _is_int(value) or not 0 <= value <= 3:
            raise _bad(key, value, "a Tesseract engine mode from 0 to 3", source)
        return value
    if key == "threshold":
        if value is False:
            return "none"
        if value not in THRESHOLDS:
            raise _bad(key, value, "one of " + ", ".join(THRESHOLDS), source)
        return value
    if key in ("deskew", "denoise", "camera_keep_open"):
        if not isinstance(value, bool):
            raise _bad(key, value, "true or false", source)
        return value
    if key == "upscale":
        if value == "auto":
            return None
        if not _is_number(value) or not 1.0 <= value <= 4.0:
            raise _bad(key, value, "'auto' or a factor from 1 to 4", source)
        return float(value)
    if key in ("max_upload_bytes",):
        return parse_size(value, f"modules.ocr.{key}")
    return _validate_number(key, value, source)


def _validate_number(key: str, value: Any, source: str) -> Any:
    ranges: dict[str, tuple[float, float, bool]] = {
        # key: (minimum, maximum, integer)
        "max_skew": (0.0, 45.0, False),
        "min_confidence": (0.0, 100.0, False),
        "timeout": (0.1, 3600.0, False),
        "camera_open_timeout": (0.1, 600.0, False),
        "max_pixels": (1.0, 1e9, True),
        "max_concurrent": (1.0, 64.0, True),
        "max_queue": (0.0, 10000.0, True),
        "camera_drain_frames": (0.0, 100.0, True),
        "camera_width": (16.0, 16384.0, True),
        "camera_height": (16.0, 16384.0, True),
    }
    low, high, integer = ranges[key]
    ok = (_is_int(value) if integer else _is_number(value)) and low <= value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        raise _bad(key, value, f"{kind} from {low:g} to {high:g}", source)
    return int(value) if integer else float(value)


def to_options(settings: OcrSettings) -> dict[str, Any]:
    """Plain options (the inverse of from_options), for `config show` and overrides."""
    out = dataclasses.asdict(settings)
    if out["upscale"] is None:
        out["upscale"] = "auto"
    return out
