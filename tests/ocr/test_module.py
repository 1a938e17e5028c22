"""The ocr module as a plugin: option validation, startup dependency check, queue limit, camera reads."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import modules
from edge_runtime.config import from_mapping
from edge_runtime.errors import ConfigError, DependencyMissing, EngineBusy, OcrError
from edge_runtime.ocr.module import OcrModule, create
from edge_runtime.ocr.settings import OcrSettings, from_options, to_options

SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice", "Platform 7: Express to Berlin")


def test_enabled_in_config_builds_the_builtin_module(sign_video: Callable[..., Path]) -> None:
    settings = from_mapping({"modules": {"ocr": {"camera": 0, "lang": "eng", "psm": 6, "upscale": "auto"}}})
    built = modules.enabled_modules(settings)
    assert [m.name for m in built] == ["ocr"]
    module = built[0]
    assert isinstance(module, OcrModule)
    assert module.options.camera == "0" and module.options.psm == 6 and module.options.upscale is None
    assert [r.routes[0].path for r in module.routers()] == ["/v1/ocr"]


@pytest.mark.parametrize(("options", "key"), [
    ({"psm": 0}, "modules.ocr.psm"),
    ({"lang": "eng; rm -rf /"}, "modules.ocr.lang"),
    ({"threshold": "sauvola"}, "modules.ocr.threshold"),
    ({"upscale": 9}, "modules.ocr.upscale"),
    ({"camera": "webcam"}, "modules.ocr.camera"),
    ({"max_upload_bytes": "lots"}, "modules.ocr.max_upload_bytes"),
    ({"deskew": "yes"}, "modules.ocr.deskew"),
    ({"colour": True}, "modules.ocr.colour"),
])
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create(options, from_mapping({}))
    assert key in str(caught.value)


def test_options_round_trip() -> None:
    settings = from_options({"camera": "file:/x.avi", "max_upload_bytes": "1MiB", "upscale": 2, "oem": 1})
    assert settings.max_upload_bytes == 1024 * 1024 and settings.upscale == 2.0
    assert from_options(to_options(settings)) == settings
    assert settings.replace(lang="deu", psm=None).lang == "deu"


def test_start_fails_clearly_without_tesseract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module = create({}, from_mapping({}))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyMissing, match="apt-get install tesseract-ocr"):
        asyncio.run(module.start())


def test_full_queue_is_busy_not_blocking(sign: Callable[..., np.ndarray]) -> None:
    module = OcrModule(OcrSettings(max_concurrent=1, max_queue=0))
    image = sign(SIGN, 24)

    async def two_at_once() -> str:
        first = asyncio.create_task(module.read_image(image))
        await asyncio.sleep(0)  # let the first take the only slot
        with pytest.raises(EngineBusy, match="max_queue"):
            await module.read_image(image)
        return (await first).text

    assert asyncio.run(two_at_once()) == "\n".join(SIGN)


def test_read_camera_from_configured_and_explicit_uri(sign_video: Callable[..., Path]) -> None:
    video = sign_video()
    module = create({"camera": f"file:{video}"}, from_mapping({}))
    other = create({}, from_mapping({}))

    async def run() -> tuple[str, str]:
        try:
            configured = await module.read_camera()
            explicit = await other.read_camera(f"file:{video}")
            with pytest.raises(OcrError, match="no camera configured"):
                await other.read_camera()
            return configured.text, explicit.text
        finally:
            await module.stop()
            await other.stop()

    assert asyncio.run(run()) == ("\n".join(SIGN), "\n".join(SIGN))
