"""`clawd-edge health` and `clawd-edge fleet haproxy|keepalived`: probe a board, write a fleet's configs."""
from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from ..errors import StorageError, UsageError
from ..fleet import haproxy, keepalived
from ..fleet.preflight import check_script_runs
from ..fleet.probe import DEFAULT_TIMEOUT, Unhealthy, Unreachable, parse_target, probe
from . import state

DEFAULT_HEALTH_URL = "http://127.0.0.1:8080/health"


def _write(text: str, output: str) -> None:
    """stdout for `-`, else the file replaced atomically with mode 0600 (it may hold a key's hash)."""
    if output == "-":
        click.echo(text, nl=False)
        return
    path = Path(output)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}", err=True)


def _local_health_url(ctx: click.Context) -> str:
    server = state(ctx).settings.server
    try:
        unspecified = ipaddress.ip_address(server.host).is_unspecified
    except ValueError:
        unspecified = False  # a host name
    # A daemon bound to every address is probed on loopback.
    host = "127.0.0.1" if unspecified or not server.host else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}/health"


@click.command()
@click.option("--url", default=None,
              help="The board's URL or /health URL (default: this host's server.host and server.port).")
@click.option("--timeout", type=click.FloatRange(0.05, 600), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds to wait for the answer.")
@click.option("--api-key", default=None, envvar="CLAWD_EDGE_HEALTH_API_KEY", show_envvar=True,
              help="Sent as a bearer token (the daemon's /health needs none; for a proxy in front).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when healthy.")
@click.pass_context
def health(ctx: click.Context, url: str | None, timeout: float, api_key: str | None, quiet: bool) -> None:
    """Exit 0 if the board's /health says ok; else one line and exit 1 (unhealthy) or 3 (unreachable)."""
    report = probe(url or _local_health_url(ctx), timeout=timeout, api_key=api_key)
    if not quiet:
        click.echo(report.summary())


@click.group()
def fleet() -> None:
    """Configs for several boards: HAProxy in front of a fleet, keepalived for a primary/standby pair."""


@fleet.command("haproxy")
@click.option("--board", "boards", multiple=True, required=True, metavar="URL",
              help="A board's http://HOST:PORT (repeat for each board).")
@click.option("--bind", default="0.0.0.0:8080", show_default=True, help="Address the balancer listens on.")
@click.option("--api-key", default=None, envvar="CLAWD_EDGE_API_KEY", show_envvar=True,
              help="The boards' shared server.api_key: checked at the balancer too (only its SHA-256 is written).")
@click.option("--slots", type=click.IntRange(1, 64), default=None,
              help="Requests each board runs at once (its `parallel`); default: read from each board's /health.")
@click.option("--stats-socket", default=None, metavar="PATH", help="HAProxy runtime socket (operator level).")
@click.option("--stream-timeout", type=click.FloatRange(1, 86400), default=600.0, show_default=True,
              help="Seconds a board may stay silent (waiting for a slot, or inside a stream).")
@click.option("--queue-timeout", type=click.FloatRange(1, 86400), default=120.0, show_default=True,
              help="Seconds a request may wait at the balancer for a free slot on any board.")
@click.option("-o", "--output", default="-", show_default=True, help="File to write (- for stdout).")
def haproxy_cmd(boards: tuple[str, ...], bind: str, api_key: str | None, slots: int | None,
                stats_socket: str | None, stream_timeout: float, queue_timeout: float, output: str) -> None:
    """Write an HAProxy config balancing /v1, /api and /health over the boards."""
    parsed = tuple(haproxy.parse_board(url, slots or _slots_of(url)) for url in boards)
    settings = haproxy.HaproxySettings(parsed, bind=bind, api_key=api_key, stats_socket=stats_socket,
                                       stream_timeout=stream_timeout, queue_timeout=queue_timeout)
    _write(haproxy.render(settings), output)


def _slots_of(url: str) -> int:
    try:
        report = probe(url, timeout=DEFAULT_TIMEOUT)
    except (Unhealthy, Unreachable) as exc:
        raise UsageError(f"cannot read the slot count of {url} ({exc}); pass --slots N") from None
    if report.slots_total < 1:
        raise UsageError(f"{url}: /health reports no slots; pass --slots N")
    return report.slots_total


def _health_command(url: str, timeout: float) -> tuple[str, ...]:
    # keepalived needs an absolute path; the clawd-edge beside this interpreter is the one being run.
    exe = Path(sys.executable).parent / "clawd-edge"
    program = str(exe) if exe.is_file() else shutil.which("clawd-edge")
    if program is None:
        raise UsageError("clawd-edge is not on PATH; install it before writing the keepalived config")
    return (program, "health", "--quiet", "--url", parse_target(url).url, "--timeout", f"{timeout:g}")


@fleet.command("keepalived")
@click.option("--role", type=click.Choice(sorted(keepalived.ROLES)), required=True,
              help="primary holds the address while healthy; standby takes it when the primary is not.")
@click.option("--vip", required=True, metavar="ADDR[/PREFIX]", help="The shared IPv4 address clients use.")
@click.option("--interface", required=True, metavar="IF", help="Network interface that carries the address.")
@click.option("--health-url", default=DEFAULT_HEALTH_URL, show_default=True,
              help="This board's /health, probed every second by `clawd-edge health`.")
@click.option("--health-timeout", type=click.FloatRange(0.1, 10), default=0.8, show_default=True,
              help="Seconds one probe may take (under keepalived's one-second interval).")
@click.option("--router-id", "virtual_router_id", type=click.IntRange(1, 255), default=51, show_default=True,
              help="VRRP virtual router id, the same on both boards and unique on the LAN.")
@click.option("--priority", type=click.IntRange(1, 254), default=None,
              help="VRRP priority (default: primary 250, standby 240).")
@click.option("--preempt/--no-preempt", default=True, show_default=True,
              help="Whether a recovered primary takes the address back (that cuts streams open on the standby).")
@click.option("--preempt-delay", type=click.FloatRange(0, 1000), default=0.0, show_default=True,
              help="Seconds a recovered primary waits before taking the address back.")
@click.option("--peer", "peers", multiple=True, metavar="ADDR",
              help="The other board's address for unicast VRRP (networks that drop multicast).")
@click.option("--script-user", default="nobody", show_default=True, help="User that runs the health probe.")
@click.option("-o", "--output", default="-", show_default=True, help="File to write (- for stdout).")
def keepalived_cmd(role: str, vip: str, interface: str, health_url: str, health_timeout: float,
                   virtual_router_id: int, priority: int | None, preempt: bool, preempt_delay: float,
                   peers: tuple[str, ...], script_user: str, output: str) -> None:
    """Write a keepalived VRRP config whose track script is `clawd-edge health`."""
    command = _health_command(health_url, health_timeout)
    check_script_runs(command, script_user)
    settings = keepalived.KeepalivedSettings(
        role=role, vip=vip, interface=interface, health_command=command,
        virtual_router_id=virtual_router_id, priority=priority, preempt=preempt, preempt_delay=preempt_delay,
        script_user=script_user, peers=peers)
    _write(keepalived.render(settings), output)
