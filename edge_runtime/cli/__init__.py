"""The `clawd-edge` command line: a thin click group whose commands live one module each and load lazily."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config import Settings, load
from ..errors import ClawdError, DependencyMissing
from ..extras import EXTRA_OF_MODULE

# name -> "module:attribute"; a command whose module is absent (e.g. the converter on a device) is not listed.
COMMANDS: dict[str, str] = {
    "chat": "edge_runtime.cli.chat:chat",
    "models": "edge_runtime.cli.models:models",
    "config": "edge_runtime.cli.config_cmd:config",
    "doctor": "edge_runtime.cli.doctor:doctor",
    "serve": "edge_runtime.cli.serve:serve",
    "listen": "edge_runtime.cli.voice:listen",
    "say": "edge_runtime.cli.voice:say",
    "ocr": "edge_runtime.cli.ocr:ocr",
    "kiosk": "edge_runtime.cli.kiosk:kiosk",
    "rpc-worker": "edge_runtime.cli.rpc_worker:rpc_worker",
    "wyoming": "edge_runtime.cli.wyoming:wyoming",
    "convert": "convert.cli:convert",
    "health": "edge_runtime.cli.fleet:health",
    "fleet": "edge_runtime.cli.fleet:fleet",
}


@dataclass
class CliState:
    """Per-invocation state: where the config comes from, loaded once on first use."""

    config_path: Path | None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load(self.config_path)
        return self._settings


def _available(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs, so `--help` and the device stay light."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _available(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(target):
            return None
        module_name, attr = target.split(":", 1)
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        # The one place a ClawdError becomes text: one `error:` line on stderr and its exit status.
        try:
            return super().invoke(ctx)
        except ClawdError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except ModuleNotFoundError as exc:
            # A command module importing an extra's package at its top (fastapi for serve): the extra to install.
            extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            missing = DependencyMissing(f"{exc.name} (needed by this command)", extra=extra)
            click.echo(f"error: {missing}", err=True)
            ctx.exit(missing.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="config.yaml to use (default: $CLAWD_EDGE_CONFIG, else built-in defaults).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="clawd-edge")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """clawd-edge: run small LLMs on edge boards with llama.cpp."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = CliState(config_path=config_path)


def state(ctx: click.Context) -> CliState:
    """The CliState of the root group, for subcommands."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="clawd-edge")
