"""`clawd-edge doctor`: what is installed, how much memory there is, and whether the model fits."""
from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
from collections.abc import Callable

import click

from .. import __version__, sysinfo
from ..errors import ClawdError
from ..store import resolve_model
from . import state


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _llama_cpp() -> str:
    try:
        import llama_cpp
    except ImportError as exc:
        return f"not importable ({exc})"
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return f"llama-cpp-python {llama_cpp.__version__}; {info}"


def _tesseract() -> str:
    exe = shutil.which("tesseract")
    if exe is None:
        return "not installed (apt-get install tesseract-ocr tesseract-ocr-eng)"
    out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, check=False)
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    langs = [ln for ln in out.stdout.splitlines()[1:] if ln.strip()]
    first = (ver.stdout or ver.stderr).splitlines()
    return f"{first[0] if first else exe}; languages: {', '.join(langs) or 'none'}"


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return "not installed (apt-get install espeak-ng)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or exe


def _audio_devices() -> str:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        return f"unavailable ({exc}; pip install 'clawd-edge[voice]', apt-get install libportaudio2)"
    try:
        devices = sd.query_devices()
    except Exception as exc:  # noqa: BLE001 - PortAudio errors vary by host; doctor reports, never fails
        return f"PortAudio error: {exc}"
    names = [f"{i}:{d['name']} (in {d['max_input_channels']}, out {d['max_output_channels']})"
             for i, d in enumerate(devices)]
    return "; ".join(names) or "no devices"


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1024**2:.0f} MiB"


@click.command()
@click.option("--model", "-m", default=None, help="Check this model instead of the configured one.")
@click.pass_context
def doctor(ctx: click.Context, model: str | None) -> None:
    """Report installed components, memory, and whether the configured model fits."""
    settings = state(ctx).settings
    checks: list[tuple[str, Callable[[], str]]] = [
        ("clawd-edge", lambda: f"{__version__} on Python {platform.python_version()}, {platform.machine()}"),
        ("llama.cpp", _llama_cpp),
        ("vosk", lambda: _version("vosk")),
        ("pocketsphinx", lambda: _version("pocketsphinx")),
        ("opencv", lambda: _version("opencv-python-headless")),
        ("tesseract", _tesseract),
        ("espeak-ng", _espeak),
        ("audio devices", _audio_devices),
    ]
    for label, check in checks:
        click.echo(f"{label:<15} {check()}")
    info = sysinfo.meminfo()
    budget, source = sysinfo.memory_budget(settings.memory_budget)
    click.echo(f"{'memory':<15} total {_mib(info.get('MemTotal'))}, available {_mib(info.get('MemAvailable'))}, "
               f"cgroup limit {_mib(sysinfo.cgroup_memory_limit())}; budget {_mib(budget)} ({source})")
    try:
        resolved = resolve_model(settings, model, pull=False)
    except ClawdError as exc:
        click.echo(f"{'model':<15} {exc}")
        return
    click.echo(f"{'model':<15} {resolved.name}: {resolved.path} ({_mib(resolved.path.stat().st_size)})")
    from ..engine.planner import plan_for

    try:
        plan = plan_for(settings, resolved)
    except ClawdError as exc:
        click.echo(f"{'memory plan':<15} DOES NOT FIT: {exc}")
        ctx.exit(1)
    click.echo(f"{'memory plan':<15} {plan.describe()}")
