"""Tesseract through pytesseract: dependency checks naming the Debian package, words with boxes and confidences."""
from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DependencyMissing, InvalidRequest, OcrError
from ..extras import optional_import
from .camera import import_cv2
from .preprocess import MAX_SIDE, Prepared, prepare
from .settings import OcrSettings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# Only formats whose magic bytes send Pillow and OpenCV to the same decoder, so the size Pillow reads from the
# header is the size OpenCV decodes (MPO is Pillow's name for a camera's multi-picture JPEG).
_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP"})


@dataclass(frozen=True)
class Word:
    """One recognised word; `box` is [x, y, width, height] in the input image's pixels."""

    text: str
    conf: float
    box: tuple[int, int, int, int]
    line: tuple[int, int, int]  # (block, paragraph, line) as Tesseract numbered them

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "conf": self.conf, "box": list(self.box)}


@dataclass(frozen=True)
class OcrResult:
    """What one image said: the text (lines joined by newlines, text blocks by blank lines) and its words."""

    text: str
    words: tuple[Word, ...]
    lang: str
    width: int
    height: int
    skew_degrees: float = 0.0
    seconds: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "words": [w.to_dict() for w in self.words], "lang": self.lang,
                "width": self.width, "height": self.height, "skew_degrees": round(self.skew_degrees, 2),
                "seconds": round(self.seconds, 3)}


def debian_package(lang: str) -> str:
    """Debian/Ubuntu ship Tesseract's `chi_sim` data as tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + lang.lower().replace("_", "-")


def image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Width and height from the file's header; an image too large to read is refused before it is decoded."""
    if not data:
        raise InvalidRequest("the image is empty", param="file")
    import io

    from PIL import Image, UnidentifiedImageError

    # Pillow parses only the header here, so a few kilobytes claiming 6300×6300 pixels cost nothing yet.
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            kind = probe.format
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest("the file is not an image (PNG, JPEG, BMP, TIFF or WebP expected)",
                             param="file") from None
    except Image.DecompressionBombError:  # Pillow's own ceiling, far above any sane max_pixels
        raise InvalidRequest(f"the image has far more pixels than the limit of {max_pixels} "
                             "(modules.ocr.max_pixels)", param="file") from None
    if kind not in _FORMATS:
        raise InvalidRequest(f"the image is {kind}, not PNG, JPEG, BMP, TIFF or WebP", param="file")
    if width * height > max_pixels:
        raise InvalidRequest(f"the image has {width}×{height} pixels, more than the limit of {max_pixels} "
                             "(modules.ocr.max_pixels)", param="file")
    if max(width, height) > MAX_SIDE:
        raise InvalidRequest(f"the image is {width}×{height} pixels; at most {MAX_SIDE} pixels per side can be read",
                             param="file")
    return width, height


def decode_image(data: bytes, max_pixels: int) -> NDArray[np.uint8]:
    """Bytes of a PNG/JPEG/BMP/TIFF/WebP file to a BGR array; anything else is an InvalidRequest."""
    image_size(data, max_pixels)
    cv2 = import_cv2()
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidRequest("the image cannot be decoded (corrupt or unsupported format)", param="file")
    return image  # type: ignore[no-any-return]


def load_image(path: str, max_pixels: int) -> NDArray[np.uint8]:
    """An image file from disk, with the same checks as an upload."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise OcrError(f"cannot read image {path}: {exc.strerror or exc}") from None
    try:
        return decode_image(data, max_pixels)
    except InvalidRequest as exc:
        raise OcrError(f"{path}: {exc}") from None


def _import_pytesseract() -> Any:
    return optional_import("pytesseract", what="pytesseract (Python package)")


class Reader:
    """Runs Tesseract on images; installed languages are checked once per language and remembered here."""

    def __init__(self, settings: OcrSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._installed: frozenset[str] | None = None

    def check(self, lang: str | None = None) -> None:
        """Raise DependencyMissing unless pytesseract, the tesseract binary and every `lang` part are present."""
        pytesseract = _import_pytesseract()
        wanted = (lang or self.settings.lang).split("+")
        with self._lock:
            if self._installed is None:
                config = self._tessdata_arg()
                try:
                    self._installed = frozenset(pytesseract.get_languages(config=config))
                except pytesseract.TesseractNotFoundError:
                    raise DependencyMissing("the tesseract program", package="tesseract-ocr") from None
                except (pytesseract.TesseractError, OSError) as exc:
                    raise OcrError(f"tesseract cannot list its languages: {exc}") from None
            installed = self._installed
        for part in wanted:
            if part not in installed:
                have = ", ".join(sorted(installed)) or "none"
                raise DependencyMissing(f"Tesseract language data '{part}' (installed: {have})",
                                        package=debian_package(part))

    def read(self, image: NDArray[Any], *, lang: str | None = None, psm: int | None = None) -> OcrResult:
        """Blocking: preprocess and recognise one image (run it in a worker thread from async code)."""
        lang = lang or self.settings.lang
        self.check(lang)
        pytesseract = _import_pytesseract()
        started = time.perf_counter()
        prepared = prepare(image, self.settings)
        config = f"--psm {psm or self.settings.psm}"
        if self.settings.oem is not None:
            config += f" --oem {self.settings.oem}"
        tessdata = self._tessdata_arg()
        if tessdata:
            config += " " + tessdata
        try:
            data = pytesseract.image_to_data(prepared.image, lang=lang, config=config,
                                             output_type=pytesseract.Output.DICT,
                                             timeout=self.settings.timeout)
        except pytesseract.TesseractNotFoundError:
            raise DependencyMissing("the tesseract program", package="tesseract-ocr") from None
        except pytesseract.TesseractError as exc:
            raise OcrError(f"tesseract failed: {exc.message or exc}") from None
        except RuntimeError as exc:  # pytesseract's timeout
            raise OcrError(f"tesseract gave no answer within {self.settings.timeout:g} s ({exc})") from None
        height, width = image.shape[:2]
        words = _words(data, prepared, width, height)
        text = _text(words, self.settings.min_confidence)
        return OcrResult(text=text, words=words, lang=lang, width=width, height=height,
                         skew_degrees=prepared.skew_degrees, seconds=time.perf_counter() - started,
                         meta={"scale": prepared.scale, "psm": psm or self.settings.psm})

    def _tessdata_arg(self) -> str:
        tessdata = self.settings.tessdata_dir
        return f"--tessdata-dir {shlex.quote(tessdata)}" if tessdata else ""


def _words(data: Mapping[str, Sequence[Any]], prepared: Prepared, width: int, height: int) -> tuple[Word, ...]:
    cv2 = import_cv2()
    import numpy as np

    inverse = cv2.invertAffineTransform(prepared.transform)
    words: list[Word] = []
    for i, raw in enumerate(data["text"]):
        text = str(raw).strip()
        conf = float(data["conf"][i])
        if not text or conf < 0:
            continue
        x, y, w, h = (int(data[k][i]) for k in ("left", "top", "width", "height"))
        corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]], dtype=np.float64)
        mapped = corners @ inverse.T
        x0, y0 = np.clip(np.floor(mapped.min(axis=0)), 0, [width, height]).astype(int)
        x1, y1 = np.clip(np.ceil(mapped.max(axis=0)), 0, [width, height]).astype(int)
        line = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
        words.append(Word(text, round(conf, 1), (int(x0), int(y0), int(x1 - x0), int(y1 - y0)), line))
    return tuple(words)


def _text(words: Sequence[Word], min_confidence: float) -> str:
    paragraphs: list[list[list[str]]] = []
    previous: tuple[int, int, int] | None = None
    for word in words:
        if word.conf < min_confidence:
            continue
        # Blocks are separated by a blank line; Tesseract's paragraph split inside a block is too erratic on
        # short sign text to be worth reproducing.
        if previous is None or word.line[0] != previous[0]:
            paragraphs.append([[word.text]])
        elif word.line != previous:
            paragraphs[-1].append([word.text])
        else:
            paragraphs[-1][-1].append(word.text)
        previous = word.line
    return "\n\n".join("\n".join(" ".join(line) for line in para) for para in paragraphs)
