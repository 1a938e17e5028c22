"""`clawd-edge config show|check`: the effective settings, and validation of a file."""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from ..config import load, to_dict
from . import state


@click.group()
def config() -> None:
    """Show or check configuration."""


@config.command("show")
@click.pass_context
def show(ctx: click.Context) -> None:
    """Print the effective configuration (file + defaults) as YAML."""
    click.echo(yaml.safe_dump(to_dict(state(ctx).settings), sort_keys=False, allow_unicode=True), nl=False)


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def check(file: Path) -> None:
    """Validate FILE; exit 2 with the offending key if it is wrong."""
    load(file)
    click.echo(f"{file}: ok")
