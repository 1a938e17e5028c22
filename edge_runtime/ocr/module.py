"""The `ocr` kiosk module: one Tesseract reader and one camera, shared by the CLI, the HTTP route and the kiosk."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import DependencyMissing, EngineBusy, InvalidRequest, OcrError
from .camera import Camera, parse_camera
from .reader import OcrResult, Reader, decode_image
from .settings import OcrSettings, from_options

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

log = logging.getLogger(__name__)


class OcrModule:
    """Reads text from uploads, files and the configured camera; at most `max_concurrent` Tesseract runs."""

    name = "ocr"

    def __init__(self, options: OcrSettings) -> None:
        self.options = options
        self.reader = Reader(options)
        self._camera = Camera(parse_camera(options.camera), options) if options.camera else None
        self._cameras: dict[str, Camera] = {}
        self._slots = asyncio.Semaphore(options.max_concurrent)
        self._waiting = 0

    @property
    def camera(self) -> Camera | None:
        return self._camera

    def camera_for(self, uri: str | None) -> Camera:
        """The configured camera, or one opened from `uri` (kept for reuse so a file keeps its clock)."""
        if uri is None:
            if self._camera is None:
                raise OcrError("no camera configured: set modules.ocr.camera or pass a camera URI")
            return self._camera
        camera = self._cameras.get(uri)
        if camera is None:
            camera = self._cameras[uri] = Camera(parse_camera(uri, key="camera"), self.options)
        return camera

    def routers(self) -> Sequence[Any]:
        from .http import build_router

        return [build_router(self)]

    async def start(self) -> None:
        # Fail at startup, naming the package, rather than on the first request.
        await asyncio.to_thread(self.reader.check)
        log.info("ocr ready: lang=%s psm=%d camera=%s", self.options.lang, self.options.psm,
                 self.options.camera or "none")

    async def stop(self) -> None:
        for camera in (self._camera, *self._cameras.values()):
            if camera is not None:
                await asyncio.to_thread(camera.close)

    async def read_image(self, image: NDArray[Any], *, lang: str | None = None,
                         psm: int | None = None) -> OcrResult:
        """OCR one decoded image in a worker thread, queueing behind other reads."""
        if self._waiting >= self.options.max_concurrent + self.options.max_queue:
            raise EngineBusy(f"OCR busy: {self._waiting} images are being read or waiting "
                             "(modules.ocr.max_concurrent / max_queue); retry later")
        self._waiting += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(self.reader.read, image, lang=lang, psm=psm)
        finally:
            self._waiting -= 1

    async def read_bytes(self, data: bytes, *, lang: str | None = None, psm: int | None = None) -> OcrResult:
        """OCR an encoded image (an upload); bad bytes are an InvalidRequest naming `file`."""
        await self.check_lang(lang)
        image: NDArray[np.uint8] = await asyncio.to_thread(decode_image, data, self.options.max_pixels)
        return await self.read_image(image, lang=lang, psm=psm)

    async def check_lang(self, lang: str | None) -> None:
        """A language a client asked for that is not installed is the client's problem (400), not ours."""
        if lang is not None:
            try:
                await asyncio.to_thread(self.reader.check, lang)
            except DependencyMissing as exc:
                raise InvalidRequest(f"lang: {exc}", param="lang") from None

    async def grab(self, uri: str | None = None) -> NDArray[np.uint8]:
        """One fresh frame from the configured camera (or `uri`)."""
        camera = self.camera_for(uri)
        return await asyncio.to_thread(camera.grab)

    async def read_camera(self, uri: str | None = None, *, lang: str | None = None) -> OcrResult:
        """Grab a frame and read it: what the kiosk does when someone says "read this"."""
        return await self.read_image(await self.grab(uri), lang=lang)


def create(options: Mapping[str, Any], settings: Settings) -> OcrModule:
    """Module factory (edge_runtime.modules): validates `modules.ocr` options, builds the module."""
    del settings  # OCR needs nothing from the engine's settings
    return OcrModule(from_options(options))
