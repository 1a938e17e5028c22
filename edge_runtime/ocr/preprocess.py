"""Image cleanup before Tesseract: grayscale, denoise, upscale, deskew, flatten and whiten the background."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .camera import import_cv2
from .settings import OcrSettings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# Tesseract reads best with capital letters about 30-40 px tall; webcam frames and photos of a sign are often
# smaller, so "auto" enlarges text lines to about this height (or, when no line is found, small images 2×).
_TARGET_LINE_HEIGHT = 48.0
_AUTO_UPSCALE_BELOW = 1600
_MAX_LONG_SIDE = 4000
# Tesseract refuses a side over 32767 pixels ("Image too large"), and OpenCV 4's remap, which warpAffine runs,
# asserts sides below SHRT_MAX: no image handed on may be wider or taller than this.
MAX_SIDE = 32766


@dataclass(frozen=True)
class Prepared:
    """The image handed to Tesseract and the 2×3 affine transform from input pixels to its pixels."""

    image: NDArray[np.uint8]
    transform: NDArray[np.float64]
    scale: float
    skew_degrees: float


def to_gray(image: NDArray[Any]) -> NDArray[np.uint8]:
    cv2 = import_cv2()
    if image.ndim == 2:
        gray = image
    elif image.shape[2] == 4:
        gray = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    else:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if gray.dtype != "uint8":
        gray = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX).astype("uint8")
    return gray  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Layout:
    """What a quick look at the text lines tells: their tilt and their typical height."""

    skew_degrees: float  # positive = the text rises to the right; the image is rotated back by this much
    line_height: float | None  # median height of a text line in pixels, None when no line was found
    line_area: float = 0.0  # pixels covered by line-shaped blobs: how much this reading looks like text


def choose_scale(height: int, width: int, layout: Layout, settings: OcrSettings) -> float:
    long_side = max(height, width)
    if settings.upscale is not None:
        scale = settings.upscale
    elif layout.line_height:
        scale = min(4.0, _TARGET_LINE_HEIGHT / layout.line_height)
    elif long_side < _AUTO_UPSCALE_BELOW:
        scale = 2.0
    else:
        scale = 1.0
    # Never beyond the size cap, whatever was asked: Tesseract's time grows with the pixel count.
    return max(1.0, min(scale, _MAX_LONG_SIDE / max(long_side, 1)))


def fit_canvas(width: int, height: int, skew: float, scale: float, max_pixels: int) -> tuple[float, int, int]:
    """`scale`, lowered (below 1 if need be) so the warped canvas, rotated corners included, holds at most
    `max_pixels` pixels and MAX_SIDE per side; returns that scale and the canvas's width and height."""
    rad = math.radians(skew)
    cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
    base_w, base_h = width * cos + height * sin, width * sin + height * cos
    # Every step after the warp keeps several copies of the canvas (measured: about 15 bytes per pixel, the
    # background flattening's float32 images and the component labels the most), so enlarging gets the same
    # pixel budget as an upload: a small image asking for 4× costs no more memory than the largest one accepted.
    scale = min(scale, math.sqrt(max_pixels / (base_w * base_h)), MAX_SIDE / base_w, MAX_SIDE / base_h)
    out_w = min(math.ceil(base_w * scale), MAX_SIDE)
    # Rounding both sides up could pass the budget by a row: the last row then goes.
    out_h = min(math.ceil(base_h * scale), MAX_SIDE, max(1, max_pixels // out_w))
    return scale, out_w, out_h


def _weighted_median(values: list[float], weights: list[float]) -> float:
    import numpy as np

    order = np.argsort(values)
    cumulative = np.cumsum(np.asarray(weights)[order])
    return float(np.asarray(values)[order][int(np.searchsorted(cumulative, cumulative[-1] / 2))])


def _made_of_letters(rect: tuple[int, int, int, int], line_height: float, stats: NDArray[np.int32],
                     centroids: NDArray[np.float64]) -> bool:
    """A text line is a row of several separate marks nearly as tall as the line. A bar, the rim a sign
    leaves on a wall, or (in the wrong polarity) the ground around letters is one big mark plus small holes."""
    import numpy as np

    x, y, w, h = rect
    cx, cy = centroids[1:, 0], centroids[1:, 1]
    inside = (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h) & (stats[1:, 4] >= 4)
    heights = stats[1:, 3][inside]
    return bool(heights.size >= 3 and float(np.median(heights)) >= 0.3 * line_height)


def analyse(gray: NDArray[np.uint8], max_skew: float) -> Layout:
    """Find text lines in dark-on-light grayscale.

    Characters are smeared horizontally into line blobs; each long blob's minimum-area rectangle gives an
    angle and a height, and area-weighted medians are robust to noise specks and stray graphics.
    """
    cv2 = import_cv2()
    import numpy as np

    height, width = gray.shape
    # A local threshold (not Otsu's global one) so a shadow across the sign does not swallow whole lines.
    block = max(31, (min(height, width) // 8) | 1)
    binary = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block,
                                   max(10.0, 3.0 * noise_sigma(gray)))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    _, _, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (max(9, width // 40), 3))
    lines = cv2.dilate(binary, kernel)
    # Every contour, not just outer ones: lines on a sign sit inside the ring its edge leaves on the wall.
    contours, _ = cv2.findContours(lines, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    angles: list[float] = []
    heights: list[float] = []
    weights: list[float] = []
    for contour in contours:
        (_, _), (w, h), angle = cv2.minAreaRect(contour)
        long_side, short_side = max(w, h), min(w, h)
        if long_side < width / 10 or long_side < 3 * max(short_side, 1) or short_side < 6:
            continue  # not line-shaped
        if not _made_of_letters(cv2.boundingRect(contour), short_side, stats, centroids):
            continue
        # OpenCV 4 reports the rectangle's angle in (0, 90], OpenCV 5 in [-90, 0): fold either to the line's
        # tilt in [-45, 45].
        if angle > 45:
            angle -= 90
        elif angle < -45:
            angle += 90
        if abs(angle) <= max_skew:
            angles.append(angle)
            heights.append(short_side - 2)  # the 3-pixel-tall kernel grew each line by one pixel per side
            weights.append(long_side * short_side)
    if not angles:
        return Layout(0.0, None)
    # Image y grows downwards, so OpenCV's clockwise-positive angle is the negative of the tilt.
    return Layout(-_weighted_median(angles, weights), _weighted_median(heights, weights), float(sum(weights)))


def noise_sigma(gray: NDArray[np.uint8]) -> float:
    """Robust estimate of the pixel noise: what a 3×3 median removes, as a standard deviation (MAD × 1.4826).

    Text edges are too few to move the median, so it measures the grain of the background.
    """
    cv2 = import_cv2()
    import numpy as np

    residual = np.abs(gray.astype(np.int16) - cv2.medianBlur(gray, 3).astype(np.int16))
    return 1.4826 * float(np.median(residual))


def denoise(gray: NDArray[np.uint8], *, median: bool) -> NDArray[np.uint8]:
    """Non-local means sized to the measured grain (keeps glyph edges), then optionally a 3×3 median for the
    isolated dead/hot pixels that non-local means leaves alone."""
    cv2 = import_cv2()

    sigma = noise_sigma(gray)
    if sigma >= 2.0:
        gray = cv2.fastNlMeansDenoising(gray, None, h=min(30.0, 1.2 * sigma), templateWindowSize=7,
                                        searchWindowSize=21)
    if median:
        gray = cv2.medianBlur(gray, 3)
    return gray  # type: ignore[no-any-return]


def prepare(image: NDArray[Any], settings: OcrSettings) -> Prepared:
    """Run the configured steps; the returned transform lets word boxes be mapped back to input pixels."""
    cv2 = import_cv2()
    import numpy as np

    gray = to_gray(image)
    # Tesseract and the steps below want dark text on a light ground. Which way round a sign is cannot be told
    # from the whole frame (a white sign on a dark wall, a dark sign on a white one), so both readings are
    # tried and the one in which more of the image forms text lines wins.
    layout = analyse(gray, settings.max_skew)
    inverted = cv2.bitwise_not(gray)
    inverted_layout = analyse(inverted, settings.max_skew)
    if inverted_layout.line_area > layout.line_area:
        gray, layout = inverted, inverted_layout
    height, width = gray.shape
    scale = choose_scale(height, width, layout, settings)
    # A 3×3 median removes isolated noise pixels; it must run where strokes are several pixels wide, so on the
    # input when its text is large enough, else after enlarging (at the input size it would erase small text).
    early_median = settings.denoise and (layout.line_height or 0) >= 20
    if settings.denoise:
        gray = denoise(gray, median=early_median)
    skew = layout.skew_degrees if settings.deskew and abs(layout.skew_degrees) >= 0.3 else 0.0
    # One warp for rotation and scale, into a canvas large enough that rotated corners are not cut off.
    scale, out_w, out_h = fit_canvas(width, height, skew, scale, settings.max_pixels)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), -skew, scale)
    matrix[0, 2] += out_w / 2 - width / 2
    matrix[1, 2] += out_h / 2 - height / 2
    if skew == 0.0 and scale == 1.0:
        warped = gray
    else:
        # Fill the corners opened by the rotation with the background level: replicating the edge instead would
        # smear edge noise into streaks that Tesseract reads as characters.
        background = int(np.median(gray))
        warped = cv2.warpAffine(gray, matrix, (out_w, out_h), flags=cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=background)
    line_height = layout.line_height * scale if layout.line_height else None
    if settings.denoise and not early_median:
        warped = cv2.medianBlur(warped, 5 if scale >= 2.5 else 3)
    binary = binarise(warped, settings.threshold, line_height)
    return Prepared(binary, matrix.astype(np.float64), scale, skew)


def binarise(gray: NDArray[np.uint8], method: str, line_height: float | None = None) -> NDArray[np.uint8]:
    """Dark text on a clean white ground, from dark-on-light grayscale.

    "adaptive" keeps the glyphs' own gray levels and whitens everything else: Tesseract 5's LSTM reads
    anti-aliased edges better than hard black-and-white (measured: hard thresholds turned 5PM into SPM on
    clean renders), while the background's noise and shading are what confuses it.
    """
    cv2 = import_cv2()
    import numpy as np

    if method == "none":
        return gray
    if method == "otsu":
        _, result = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        return result  # type: ignore[no-any-return]
    # The block must be wider than a stroke or thick letters come out hollow, and big enough to hold some
    # background: about two text lines.
    block = int(2 * line_height) | 1 if line_height else max(31, (min(gray.shape) // 16) | 1)
    flat = _flatten(gray, block)
    # The offset must clear the background's grain or every grain becomes a speck: three noise deviations.
    offset = max(8.0, 3.0 * noise_sigma(flat))
    text = cv2.adaptiveThreshold(flat, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, offset)
    text = _drop_specks(text, line_height)
    # Grow the mask so the anti-aliased rim of each stroke survives with its gray level.
    rim = max(1, round((line_height or 24) / 24))
    text = cv2.dilate(text, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1)))
    return np.where(text > 0, flat, 255).astype(np.uint8)  # type: ignore[no-any-return]


def _flatten(gray: NDArray[np.uint8], block: int) -> NDArray[np.uint8]:
    """Divide out uneven lighting: the background (a closing removes the dark text) becomes 255 everywhere."""
    cv2 = import_cv2()
    import numpy as np

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (block, block))
    background = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, kernel)
    # Only a light blur: a wide one would bleed a bright sign's level onto the darker wall around it and
    # leave a dark rim there that reads as a character.
    background = cv2.GaussianBlur(background, (0, 0), 2.0)
    flat = gray.astype(np.float32) * 255.0 / np.maximum(background.astype(np.float32), 1.0)
    return np.clip(flat, 0, 255).astype(np.uint8)  # type: ignore[no-any-return]


def _drop_specks(mask: NDArray[np.uint8], line_height: float | None) -> NDArray[np.uint8]:
    """Remove connected components far smaller than a full stop of this text size."""
    cv2 = import_cv2()
    import numpy as np

    dot = max(2.0, (line_height or 24) / 12)  # a full stop is about a stroke wide: 1/10 of the line height
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < dot * dot
    small[0] = False  # label 0 is the background
    if not small[1:count].any():
        return mask
    return np.where(small[labels], 0, mask).astype(np.uint8)  # type: ignore[no-any-return]
