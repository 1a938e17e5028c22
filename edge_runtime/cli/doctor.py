"""`clawd-edge doctor`: what is installed, how much memory there is, and whether the model fits."""
from __future__ import annotations

import importlib.metadata
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .. import __version__, sysinfo
from ..cpu import guard
from ..cpu.build import installed as installed_build
from ..cpu.features import read_cpu
from ..cpu.profiles import PROFILES, best
from ..errors import ClawdError, DependencyMissing
from ..store import resolve_model
from . import state


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _llama_cpp() -> str:
    from ..engine.native import import_llama

    try:
        llama_cpp = import_llama()  # through the CPU guard, like every model load
    except ClawdError as exc:
        return f"NOT USABLE: {exc}"
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return f"llama-cpp-python {llama_cpp.__version__}; {info}"


def _build() -> tuple[bool, str]:
    """The installed build's profile against this CPU: (ok, one line)."""
    cpu, build = read_cpu(), installed_build()
    relevant = sorted({f for p in PROFILES if p.arch == cpu.arch for f in p.requires} | set(guard.AMX_FLAGS))
    have = " ".join(f for f in relevant if f in cpu.features) or "none of the profiles' features"
    try:
        fits = f"best profile here: {best(cpu.arch, cpu.features).name}"
    except KeyError as exc:
        fits = str(exc)
    line = f"{cpu.model} ({cpu.arch}; {have}; {fits})"
    if build is None:
        return False, f"{line}; llama-cpp-python is not installed"
    try:
        guard.check(build, cpu)
    except ClawdError as exc:
        return False, f"{line}\n{'':<15} MISMATCH: {exc}"
    return True, f"{line}\n{'':<15} {build.describe()}"


def _self_test(model: Path, command: list[str] | None = None) -> tuple[bool, str]:
    """Load the model and pick one token in a child process: a crash is reported here, never passed on.

    `command` replaces the child (tests inject a crash with it)."""
    argv = command or [sys.executable, "-m", "edge_runtime.engine.selftest", str(model)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return False, "FAILED: no token within 300 s"
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode).name
        return False, (f"CRASHED with {sig} (signal {-done.returncode}): this llama.cpp build cannot run on this "
                       f"CPU; rebuild it for this CPU's profile: scripts/bootstrap.sh (or scripts/build-wheel.sh "
                       f"--profile P and pip install the wheel)")
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return False, f"FAILED: {lines[-1] if lines else f'exit status {done.returncode}'}"
    return True, f"ok: one token {done.stdout.strip()}"


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
    from ..voice.sources import import_sounddevice

    try:
        sd = import_sounddevice()
    except DependencyMissing as exc:  # doctor reports what is missing, it does not stop at it
        return f"unavailable: {exc}"
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
@click.option("--no-self-test", is_flag=True, help="Skip loading the model in a child process.")
@click.pass_context
def doctor(ctx: click.Context, model: str | None, no_self_test: bool) -> None:
    """Report the llama.cpp build against this CPU, installed components, memory, and whether the model fits
    and runs (exit status 1 when it would not)."""
    settings = state(ctx).settings
    build_ok, build_line = _build()
    click.echo(f"{'cpu / build':<15} {build_line}")
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
        ctx.exit(0 if build_ok else 1)
    click.echo(f"{'model':<15} {resolved.name}: {resolved.path} ({_mib(resolved.path.stat().st_size)})")
    from ..engine.planner import plan_for

    try:
        plan = plan_for(settings, resolved)
    except ClawdError as exc:
        click.echo(f"{'memory plan':<15} DOES NOT FIT: {exc}")
        ctx.exit(1)
    click.echo(f"{'memory plan':<15} {plan.describe()}")
    if not no_self_test:
        test_ok, test_line = _self_test(resolved.path)
        click.echo(f"{'self-test':<15} {test_line}")
        build_ok = build_ok and test_ok
    if not build_ok:
        ctx.exit(1)
