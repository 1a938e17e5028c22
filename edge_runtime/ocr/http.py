"""HTTP routes of the OCR module: POST /v1/ocr (image upload) and POST /v1/ocr/camera (a fresh camera frame)."""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at definition time, and
# fastapi is imported inside build_router() so that importing this package stays light.
import re
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InvalidRequest
from ..uploads import read_limited

if TYPE_CHECKING:
    from .module import OcrModule

_LANG_RE = re.compile(r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")





def _check_params(lang: Optional[str], psm: Optional[int]) -> None:  # noqa: UP045 - see the module comment
    if lang is not None and not _LANG_RE.match(lang):
        raise InvalidRequest(f"lang: {lang!r} is not a Tesseract language code such as 'eng' or 'eng+kor'",
                             param="lang")
    if psm is not None and not 1 <= psm <= 13:
        raise InvalidRequest(f"psm: {psm} is not a page segmentation mode from 1 to 13", param="psm")


def build_router(module: "OcrModule") -> Any:
    """The APIRouter the daemon mounts while the ocr module is enabled.

    Errors are raised, not rendered: InvalidRequest (400), HTTPException 413/415, EngineBusy (503),
    DependencyMissing / OcrError (500) become OpenAI-style bodies in the app's handlers
    (edge_runtime.server.errors.install_handlers).
    """
    from fastapi import APIRouter, File, Form, UploadFile
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    router = APIRouter(tags=["ocr"])

    @router.post("/v1/ocr")
    async def ocr(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's dependency-declaration idiom
        lang: Optional[str] = Form(None),  # noqa: UP045 - evaluated by FastAPI at runtime on 3.10
        psm: Optional[int] = Form(None),  # noqa: UP045
    ) -> JSONResponse:
        """Image to text. Multipart `file` (PNG, JPEG, BMP, TIFF, WebP); optional `lang` and `psm`."""
        _check_params(lang, psm)
        declared = (file.content_type or "").split(";")[0].strip().lower()
        if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
            raise HTTPException(415, f"file: {declared} is not an image type (send image/png, image/jpeg, ...)")
        data = await read_limited(file, module.options.max_upload_bytes, "image", "modules.ocr.max_upload_bytes")
        result = await module.read_bytes(data, lang=lang, psm=psm)
        return JSONResponse(result.to_dict())

    @router.post("/v1/ocr/camera")
    async def ocr_camera(lang: Optional[str] = None) -> JSONResponse:  # noqa: UP045
        """Grab a fresh frame from the configured camera and read it."""
        _check_params(lang, None)
        if module.camera is None:
            raise InvalidRequest("no camera configured (modules.ocr.camera)", param=None)
        await module.check_lang(lang)
        result = await module.read_camera(lang=lang)
        return JSONResponse(result.to_dict())

    return router
