"""optional_import: a missing optional dependency is one line naming what to install, at every lazy import site."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.errors import DependencyMissing
from edge_runtime.extras import EXTRA_OF_MODULE, optional_import


def test_a_missing_module_is_one_line_naming_the_extra() -> None:
    with pytest.raises(DependencyMissing) as caught:
        optional_import("clawd_edge_no_such_module", extra="voice")
    assert str(caught.value) == ("clawd_edge_no_such_module is not installed "
                                 "(install with: pip install 'clawd-edge[voice]')")
    assert caught.value.extra == "voice"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback to show


def test_the_extra_comes_from_the_table_and_the_name_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails as on a board without the ocr extra
    with pytest.raises(DependencyMissing, match=r"^OpenCV \(Python package opencv-python-headless\) is not "
                                                r"installed \(install with: pip install 'clawd-edge\[ocr\]'\)$"):
        optional_import("cv2", what="OpenCV (Python package opencv-python-headless)")
    assert EXTRA_OF_MODULE["cv2"] == "ocr"


def test_an_installed_module_missing_its_own_dependency_names_that_one(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clawd_edge_probe.py").write_text("import clawd_edge_absent_dependency\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DependencyMissing) as caught:
        optional_import("clawd_edge_probe", extra="ocr")
    assert str(caught.value) == ("clawd_edge_absent_dependency, which clawd_edge_probe needs, is not installed "
                                 "(install with: pip install 'clawd-edge[ocr]')")


def test_a_missing_shared_library_names_the_system_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What sounddevice does on a board without libportaudio2: the Python package is there, dlopen fails.
    (tmp_path / "clawd_edge_native.py").write_text("raise OSError('PortAudio library not found')\n",
                                                   encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DependencyMissing) as caught:
        optional_import("clawd_edge_native", library="libportaudio2")
    assert str(caught.value) == ("libportaudio2, the library clawd_edge_native loads (PortAudio library not found) "
                                 "is not installed (install with: apt-get install libportaudio2)")
    with pytest.raises(OSError, match="PortAudio library not found"):  # no library named: not ours to explain
        optional_import("clawd_edge_native")


def _vosk(tmp_path: Path) -> object:
    from edge_runtime.voice.vosk_stt import VoskEngine

    return VoskEngine(tmp_path).load()


def _pocketsphinx(tmp_path: Path) -> object:
    from edge_runtime.voice.sphinx_stt import SphinxEngine

    return SphinxEngine().load()


def _sounddevice(tmp_path: Path) -> object:
    from edge_runtime.voice.sources import find_device

    return find_device("fakein", "input")


def _piper(tmp_path: Path) -> object:
    from edge_runtime.voice.tts import PiperTTS

    return PiperTTS("en_US-joe-medium").synthesize("Hello.")


def _cv2(tmp_path: Path) -> object:
    from edge_runtime.ocr.camera import import_cv2

    return import_cv2()


def _pytesseract(tmp_path: Path) -> object:
    from edge_runtime.ocr.reader import Reader
    from edge_runtime.ocr.settings import OcrSettings

    return Reader(OcrSettings()).check()


@pytest.mark.parametrize(("hidden", "use", "named", "extra"), [
    ("vosk", _vosk, "vosk", "voice"),
    ("pocketsphinx", _pocketsphinx, "pocketsphinx", "voice"),
    ("sounddevice", _sounddevice, "sounddevice", "voice"),
    ("piper", _piper, "piper-tts", "piper"),
    ("cv2", _cv2, r"OpenCV \(Python package opencv-python-headless\)", "ocr"),
    ("pytesseract", _pytesseract, r"pytesseract \(Python package\)", "ocr"),
])
def test_each_lazy_import_site_names_its_extra(hidden: str, use: Callable[[Path], object], named: str, extra: str,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` fails as on a board without that extra
    with pytest.raises(DependencyMissing, match=rf"^{named} is not installed \(install with: pip install "
                                                rf"'clawd-edge\[{extra}\]'\)$"):
        use(tmp_path)
