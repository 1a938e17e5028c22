"""The local models dir: pull (temp file, sha256, atomic rename), verify, and resolve a name or path."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import fetch
from .config import Settings
from .errors import DownloadError, IntegrityError, ModelError, StorageError
from .gguf_file import inspect
from .registry import LOCAL_REGISTRY_FILENAME, Registry, RegistryEntry, load_registry

# Write failures of the models directory itself: no other source could do better.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

CHUNK = 1 << 20
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its display name, its local path, and its registry entry if it has one."""

    name: str
    path: Path
    entry: RegistryEntry | None


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    sha256: str
    size: int
    entry: RegistryEntry | None
    ok: bool
    message: str


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    done = 0
    total = path.stat().st_size
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """A directory's digest: sha256 over sorted `<file sha256>  <relative path>` lines."""
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n"
             for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".clawd-")]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _copy_hashing(src: BinaryIO, dst: BinaryIO, digest: hashlib._Hash, done: int, total: int | None,
                  progress: Progress | None) -> int:
    while block := src.read(CHUNK):
        dst.write(block)
        digest.update(block)
        done += len(block)
        if progress:
            progress(done, total)
    return done


class ModelStore:
    """Models under one directory, each checked against the registry before it is trusted."""

    def __init__(self, models_dir: Path, registry: Registry) -> None:
        self.models_dir = models_dir
        self.registry = registry

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        extra = [p for p in (settings.registry, settings.models_dir / LOCAL_REGISTRY_FILENAME) if p]
        return cls(settings.models_dir, load_registry(extra))

    @property
    def local_registry(self) -> Path:
        return self.models_dir / LOCAL_REGISTRY_FILENAME

    def path_for(self, entry: RegistryEntry) -> Path:
        return self.models_dir / entry.file

    def _stamp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.verified.json")

    def _write_stamp(self, path: Path, digest: str) -> None:
        st = path.stat()
        self._stamp(path).write_text(json.dumps({"sha256": digest, "size": st.st_size,
                                                 "mtime_ns": st.st_mtime_ns}))

    def _stamp_digest(self, path: Path) -> str | None:
        """The digest recorded at the last verification, if the file has not changed since."""
        try:
            stamp = json.loads(self._stamp(path).read_text())
            st = path.stat()
        except (OSError, ValueError):
            return None
        if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
            return str(stamp.get("sha256"))
        return None

    def pull(self, entry: RegistryEntry, *, force: bool = False, progress: Progress | None = None,
             prefer_installed: bool = True) -> Path:
        """Fetch `entry` from its first working source; nothing unverified is ever left at the final path."""
        final = self.path_for(entry)
        if final.exists() and not force and self.check(entry, final) is None:
            return final
        self.models_dir.mkdir(parents=True, exist_ok=True)
        errors: list[str] = []
        for source in entry.sources:
            try:
                if entry.format == "dir":
                    self._pull_dir(entry, source.parts[0], final, prefer_installed)
                else:
                    self._pull_file(entry, source.parts, final, progress, prefer_installed)
                return final
            except (DownloadError, IntegrityError) as exc:
                errors.append(str(exc))
        raise DownloadError(f"could not pull {entry.name}: " + "; ".join(errors))

    def _pull_file(self, entry: RegistryEntry, parts: tuple[str, ...], final: Path,
                   progress: Progress | None, prefer_installed: bool) -> None:
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.file}.", suffix=".part", dir=self.models_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as dst, tempfile.TemporaryDirectory(dir=self.models_dir) as work:
                done = 0
                for i, uri in enumerate(parts):
                    with fetch.open_file(uri, Path(work) / str(i), prefer_installed=prefer_installed) as src:
                        done = _copy_hashing(src, dst, digest, done, entry.size, progress)
                dst.flush()
                os.fsync(dst.fileno())
            label = parts[0] if len(parts) == 1 else f"{len(parts)} parts from {parts[0]}"
            if entry.size is not None and done != entry.size:
                raise IntegrityError(f"{label}: got {done} bytes, registry says {entry.size}")
            if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
                raise IntegrityError(f"{label}: sha256 {digest.hexdigest()} does not match the registry's "
                                     f"{entry.sha256}")
            if entry.kind == "llm":
                inspect(tmp)
            tmp.replace(final)
            self._write_stamp(final, digest.hexdigest())
        except OSError as exc:
            if exc.errno not in _STORAGE_ERRNOS:
                raise
            # Every source would fail the same way: say what to free instead of trying the next one.
            raise StorageError(f"cannot write {entry.file} into {self.models_dir}: {exc.strerror} "
                               f"(it needs {entry.size or 'an unknown number of'} bytes)") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _pull_dir(self, entry: RegistryEntry, uri: str, final: Path, prefer_installed: bool) -> None:
        with tempfile.TemporaryDirectory(dir=self.models_dir) as work:
            tree = fetch.extract_dir(uri, Path(work), prefer_installed=prefer_installed)
            digest = sha256_tree(tree)
            if entry.sha256 is not None and digest != entry.sha256:
                raise IntegrityError(f"{uri}: tree sha256 {digest} does not match the registry's {entry.sha256}")
            # Trust on first use for entries whose upstream hash cannot be known in advance.
            (tree / ".clawd-sha256").write_text(digest + "\n")
            staging = final.with_name(f".{final.name}.new")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.move(str(tree), staging)
            if final.exists():
                shutil.rmtree(final)
            staging.replace(final)

    def check(self, entry: RegistryEntry, path: Path | None = None, *, deep: bool = False) -> str | None:
        """None when the local copy matches the registry, else why not (cheap when a fresh stamp exists).

        A directory model is re-hashed only when `deep`: hundreds of MB on every start would cost seconds.
        """
        path = path or self.path_for(entry)
        if not path.exists():
            return f"{path} is missing"
        if entry.format == "dir":
            marker = path / ".clawd-sha256"
            recorded = marker.read_text().strip() if marker.exists() else None
            expected = entry.sha256 or recorded
            actual = sha256_tree(path) if deep or recorded is None else recorded
            return None if expected is None or actual == expected else \
                f"{path}: tree sha256 {actual} does not match {expected}"
        size = path.stat().st_size
        if entry.size is not None and size != entry.size:
            return f"{path}: size {size} bytes does not match the registry's {entry.size} (truncated or replaced)"
        digest = self._stamp_digest(path)
        if digest is None:
            digest = sha256_file(path)
            if entry.sha256 is None or digest == entry.sha256:
                self._write_stamp(path, digest)
        if entry.sha256 is not None and digest != entry.sha256:
            return f"{path}: sha256 {digest} does not match the registry's {entry.sha256} (corrupt file)"
        return None

    def verify(self, path: Path) -> VerifyResult:
        """Hash a file (always, no stamp) and compare it with the registry entry it claims to be."""
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        digest = sha256_file(path)
        size = path.stat().st_size
        entry = self.registry.by_sha256(digest)
        if entry is not None:
            return VerifyResult(path, digest, size, entry, True, f"matches registry model {entry.name}")
        candidates = self.registry.by_filename(path.name)
        if candidates:
            e = candidates[0]
            why = (f"size {size} != {e.size} (truncated?)" if e.size is not None and e.size != size
                   else f"sha256 {digest} != {e.sha256}")
            return VerifyResult(path, digest, size, e, False, f"does not match registry model {e.name}: {why}")
        if path.suffix == ".gguf":
            inspect(path)
            return VerifyResult(path, digest, size, None, True, "valid GGUF header; not in the registry")
        return VerifyResult(path, digest, size, None, False, "not in the registry")


def _looks_like_path(name: str) -> bool:
    return "/" in name or name.endswith(".gguf") or name.startswith(("~", "."))


def resolve_model(settings: Settings, model: str | None = None, *, pull: bool = True,
                  progress: Progress | None = None) -> ResolvedModel:
    """Turn a registry name or a GGUF path into a checked local file (pulling registry models if missing)."""
    name = model or settings.model_path
    if _looks_like_path(name) or Path(name).expanduser().is_file():
        path = Path(name).expanduser()
        info = inspect(path)
        return ResolvedModel(name=info.name or path.stem, path=path, entry=None)
    store = ModelStore.from_settings(settings)
    entry = store.registry.get(name)
    path = store.path_for(entry)
    if not path.exists():
        if not pull:
            raise ModelError(f"model {entry.name} is not pulled yet; run `clawd-edge models pull {entry.name}`")
        store.pull(entry, progress=progress)
    problem = store.check(entry, path)
    if problem is not None:
        raise IntegrityError(f"{problem}; run `clawd-edge models pull {entry.name} --force` to fetch it again")
    if entry.kind == "llm":
        inspect(path)
    return ResolvedModel(name=entry.name, path=path, entry=entry)
