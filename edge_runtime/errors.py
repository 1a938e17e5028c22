"""The one error hierarchy of clawd-edge; the CLI and HTTP edges translate it, nothing else catches it."""
from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class ClawdError(Exception):
    """Base of every error clawd-edge raises on purpose; the message is meant for a user."""

    exit_code = 1


class ConfigError(ClawdError):
    """A configuration file, key or value is wrong (names the key, the value and what is allowed)."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        where = ""
        if source:
            where += f"{source}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
        self.key = key
        self.source = source


class UsageError(ClawdError):
    """A command was called with arguments that cannot work together."""

    exit_code = 2


class DependencyMissing(ClawdError):
    """An optional dependency (Python extra or system package) is not installed."""

    def __init__(self, what: str, *, extra: str | None = None, package: str | None = None) -> None:
        hints = []
        if extra:
            hints.append(f"pip install 'clawd-edge[{extra}]'")
        if package:
            hints.append(f"apt-get install {package}")
        hint = f" (install with: {' or '.join(hints)})" if hints else ""
        super().__init__(f"{what} is not installed{hint}")
        self.extra = extra
        self.package = package


class RegistryError(ClawdError):
    """The model registry is malformed or does not know a name."""


class ModelError(ClawdError):
    """A model file is missing, not GGUF, truncated, or otherwise unusable."""


class IntegrityError(ModelError):
    """A file's size or sha256 does not match what the registry records."""


class DownloadError(ClawdError):
    """No source of a model could deliver it."""


class StorageError(ClawdError):
    """A file cannot be written where it belongs (no space left, read-only, no permission)."""


class CpuMismatch(ClawdError):
    """The installed llama.cpp build needs an instruction set this CPU lacks (it would die with SIGILL)."""


class MemoryPlanError(ClawdError):
    """The model and the requested context cannot fit in the memory budget."""


class EngineError(ClawdError):
    """The inference engine failed or cannot take a request."""


class EngineBusy(EngineError):
    """Every slot is taken and the queue is full; retry later."""


class ShuttingDown(EngineBusy):
    """The server is stopping: this request will not run here; retry once it is back."""


class WorkerLost(EngineError):
    """An RPC worker holding part of the model died: this process cannot decode again and exits to be restarted."""


class InvalidRequest(ClawdError):
    """A generation request is malformed (too long a prompt, bad grammar, out-of-range parameter)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ToolCallError(ClawdError):
    """The model wrote a tool call that does not parse or does not match its tool's schema (never passed on)."""


class ConvertError(ClawdError):
    """A checkpoint cannot be converted (unsupported architecture, missing or corrupt file)."""


class AudioError(ClawdError):
    """An audio device, file or speech model failed."""


class OcrError(ClawdError):
    """A camera, image or Tesseract failed."""


def fresh(error: E) -> E:
    """A new exception equal to `error` (type, message, attributes) with no traceback or context of its own.

    One failure that ends many requests raises a copy in each: a single object re-raised in several tasks would
    collect all their tracebacks and contexts on itself.
    """
    clone = type(error).__new__(type(error), *error.args)
    clone.__dict__.update(vars(error))
    return clone
