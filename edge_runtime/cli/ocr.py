"""`clawd-edge ocr IMAGE|--camera [URI]`: print the text Tesseract reads (or JSON with words, boxes, confidences)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..errors import InvalidRequest, OcrError, UsageError
from . import state

_CONFIGURED = "\0configured"  # the value of a bare `--camera`: use modules.ocr.camera


def ocr_options(settings: Settings, **changes: Any) -> Any:
    """`modules.ocr` options (enabled or not) with command-line overrides, validated."""
    from ..ocr.settings import from_options

    configured = settings.modules.get("ocr")
    options: dict[str, Any] = dict(configured.options) if configured is not None else {}
    options.update({k: v for k, v in changes.items() if v is not None})
    return from_options(options)


def _image(spec: str, max_pixels: int) -> Any:
    from ..ocr.reader import decode_image, load_image

    if spec != "-":
        return load_image(spec, max_pixels)
    try:
        return decode_image(sys.stdin.buffer.read(), max_pixels)
    except InvalidRequest as exc:
        raise OcrError(f"standard input: {exc}") from None


@click.command()
@click.argument("image", required=False, metavar="[IMAGE|-]")
@click.option("--camera", "camera", is_flag=False, flag_value=_CONFIGURED, metavar="[URI]",
              help="Read a fresh camera frame instead of IMAGE; URI as in modules.ocr.camera "
                   "(v4l2:/dev/video0, 0, file:/path.avi, rtsp://...), default: the configured camera.")
@click.option("--lang", help="Tesseract language(s), e.g. eng or eng+kor (default: modules.ocr.lang).")
@click.option("--psm", type=click.IntRange(1, 13), help="Tesseract page segmentation mode.")
@click.option("--threshold", type=click.Choice(["adaptive", "otsu", "none"]), help="Background cleanup.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: text, words with boxes and confidences.")
@click.option("--save-frame", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the camera frame (or the image) that was read to this PNG/JPEG file.")
@click.pass_context
def ocr(ctx: click.Context, image: str | None, camera: str | None, lang: str | None, psm: int | None,
        threshold: str | None, as_json: bool, save_frame: Path | None) -> None:
    """Read the text in IMAGE (a file, or - for standard input) or in a camera frame."""
    if (image is None) == (camera is None):
        raise UsageError("give either IMAGE or --camera [URI]")
    options = ocr_options(state(ctx).settings, lang=lang, psm=psm, threshold=threshold)
    from ..ocr.camera import Camera, parse_camera
    from ..ocr.reader import Reader

    reader = Reader(options)
    reader.check()  # a missing tesseract or language pack is reported before the camera is opened
    if camera is not None:
        uri = options.camera if camera == _CONFIGURED else camera
        if not uri:
            raise UsageError("--camera: no URI given and modules.ocr.camera is not set")
        source = Camera(parse_camera(uri, key="--camera"), options)
        try:
            frame = source.grab()
        finally:
            source.close()
    else:
        assert image is not None
        frame = _image(image, options.max_pixels)
    if save_frame is not None:
        from ..ocr.camera import import_cv2

        if not import_cv2().imwrite(str(save_frame), frame):
            raise OcrError(f"{save_frame}: cannot write the frame (use a .png or .jpg name in a writable place)")
    result = reader.read(frame)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    elif result.text:
        click.echo(result.text)
    else:
        click.echo("(no text found)", err=True)
