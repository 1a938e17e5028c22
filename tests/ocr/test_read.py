"""Tesseract reads Pillow-rendered signs back exactly: several sizes, slight rotation, noise, dark grounds, shade."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import DependencyMissing
from edge_runtime.ocr.reader import Reader, debian_package
from edge_runtime.ocr.settings import OcrSettings

SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice", "Platform 7: Express to Berlin")


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader(OcrSettings())


@pytest.mark.parametrize("size", [16, 24, 40])
@pytest.mark.parametrize("angle", [0.0, 2.5, -3.5])
def test_rendered_text_is_read_exactly(reader: Reader, sign: Callable[..., np.ndarray], size: int,
                                       angle: float) -> None:
    image = sign(SIGN, size, angle=angle, noise=10.0, seed=size)
    result = reader.read(image)
    assert result.text == "\n".join(SIGN)
    if angle:
        assert result.skew_degrees == pytest.approx(angle, abs=1.0)


@pytest.mark.parametrize(("invert", "shade"), [(True, 1.0), (False, 0.4), (True, 0.5)])
def test_light_on_dark_and_uneven_light(reader: Reader, sign: Callable[..., np.ndarray], invert: bool,
                                        shade: float) -> None:
    image = sign(SIGN, 24, angle=-2.0, noise=8.0, invert=invert, shade=shade)
    assert reader.read(image).text == "\n".join(SIGN)


def test_words_carry_confidences_and_boxes_in_input_pixels(reader: Reader,
                                                           sign: Callable[..., np.ndarray]) -> None:
    image = sign(SIGN, 24, noise=5.0)
    result = reader.read(image)
    assert [w.text for w in result.words] == " ".join(SIGN).split()
    height, width = image.shape
    assert (result.width, result.height) == (width, height)
    previous_x = -1
    for word in result.words[:5]:  # the first line: left to right, same row
        x, y, w, h = word.box
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert x > previous_x
        previous_x = x
        assert 60.0 <= word.conf <= 100.0
        # The box really holds the word: the ink inside is dark, and it is at the first line's height.
        assert image[y:y + h, x:x + w].min() < 80
        assert abs(y - 24) < 12  # the renderer's top padding is one font size
    as_json = result.to_dict()
    assert set(as_json) >= {"text", "words", "lang"}
    assert as_json["words"][0] == {"text": "OPEN", "conf": result.words[0].conf, "box": list(result.words[0].box)}


def test_min_confidence_filters_the_text_not_the_words(sign: Callable[..., np.ndarray]) -> None:
    image = sign(SIGN, 24)
    result = Reader(OcrSettings(min_confidence=100.0)).read(image)
    assert result.words and result.text == ""  # Tesseract never claims 100 %


def test_blank_image_gives_no_text(reader: Reader) -> None:
    result = reader.read(np.full((200, 300), 240, np.uint8))
    assert result.text == "" and result.words == ()


def test_missing_language_names_the_debian_package(tmp_path: Path) -> None:
    # A tessdata directory holding only English: any other language is genuinely not installed there.
    import pytesseract

    tessdata = tmp_path / "tessdata"
    tessdata.mkdir()
    installed = Reader(OcrSettings())
    installed.check("eng")
    source = _tessdata_dir() / "eng.traineddata"
    (tessdata / "eng.traineddata").symlink_to(source)
    reader = Reader(OcrSettings(tessdata_dir=str(tessdata), lang="chi_sim"))
    with pytest.raises(DependencyMissing) as caught:
        reader.check()
    assert "apt-get install tesseract-ocr-chi-sim" in str(caught.value)
    assert "'chi_sim'" in str(caught.value) and "installed: eng" in str(caught.value)
    assert pytesseract.get_languages(config=f"--tessdata-dir {tessdata}") == ["eng"]


def test_missing_tesseract_binary_names_the_debian_package(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no tesseract program to run
    with pytest.raises(DependencyMissing) as caught:
        Reader(OcrSettings()).check()
    assert "tesseract program" in str(caught.value)
    assert "apt-get install tesseract-ocr" in str(caught.value)


def test_debian_package_names() -> None:
    assert debian_package("eng") == "tesseract-ocr-eng"
    assert debian_package("chi_sim") == "tesseract-ocr-chi-sim"


def _tessdata_dir() -> Path:
    import subprocess

    listing = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, check=True)
    first = (listing.stdout + listing.stderr).splitlines()[0]  # List of available languages in "DIR/" (N):
    return Path(first.split('"')[1])
