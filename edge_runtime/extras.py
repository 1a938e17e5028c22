"""Optional dependencies: which clawd-edge extra installs each one, and the one lazy import that says so."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType, ModuleType

from .errors import DependencyMissing

# Third-party modules of the optional extras (import name -> extra): a missing one names the extra to install.
EXTRA_OF_MODULE: Mapping[str, str] = MappingProxyType({
    "fastapi": "server", "uvicorn": "server", "prometheus_client": "server", "starlette": "server",
    "pydantic": "server", "sounddevice": "voice", "vosk": "voice", "pocketsphinx": "voice", "multipart": "voice",
    "onnxruntime": "voice", "pymicro_wakeword": "wakeword",
    "pytesseract": "ocr", "cv2": "ocr", "PIL": "ocr", "sentencepiece": "convert", "tqdm": "convert",
    "piper": "piper", "wyoming": "wyoming", "zeroconf": "zeroconf",
})


def optional_import(module: str, *, what: str | None = None, extra: str | None = None,
                    library: str | None = None) -> ModuleType:
    """`import module`, or DependencyMissing: one line naming what is missing and the extra that installs it.

    `what` names the dependency for a user when the import name is not its package name (cv2, piper); `extra`
    defaults to EXTRA_OF_MODULE's; `library` is the system package of a shared library the module loads on
    import (sounddevice: libportaudio2), whose absence shows as an OSError rather than an ImportError.
    """
    root = module.partition(".")[0]
    name = what or root
    extra = extra or EXTRA_OF_MODULE.get(root)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # The module may be there and something it imports not (a wheel installed with --no-deps): name that
        # one, since "X is not installed" would be untrue.
        if exc.name and exc.name.partition(".")[0] != root:
            name = f"{exc.name}, which {name} needs,"
        elif not exc.name:
            name = f"{name} ({_first_line(exc)})"
        raise DependencyMissing(name, extra=extra) from None
    except OSError as exc:
        if library is None:
            raise
        raise DependencyMissing(f"{library}, the library {name} loads ({_first_line(exc)})", package=library) \
            from None


def _first_line(exc: BaseException) -> str:
    """An error's message cut to one line: DependencyMissing is shown as a single `error:` line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
