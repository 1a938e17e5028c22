"""The HAProxy (2.6) config that spreads /v1, /api and /health over a fleet of boards."""
from __future__ import annotations

import hashlib
import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

# HAProxy server names may hold letters, digits and - _ . : only.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
# Paths the balancer forwards; anything else (a board's /metrics, /docs) stays per board and gets 404 here.
API_PREFIXES = ("/v1/", "/api/")
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class Board:
    """One `clawd-edge serve` behind the balancer."""

    name: str
    host: str
    port: int
    slots: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HaproxySettings:
    """What `clawd-edge fleet haproxy` writes; every duration in seconds."""

    boards: tuple[Board, ...]
    bind: str = "0.0.0.0:8080"
    api_key: str | None = None
    stats_socket: str | None = None
    # Longest silence inside a stream, and longest wait for the first byte (a request queued on a busy 2-core
    # board, then its prompt processed): a stream of 2048 tokens at 3 tokens/s is 11 minutes long but never
    # silent for long, while a queued request is silent until its turn.
    stream_timeout: float = 600.0
    # Longest wait in HAProxy's own queue for a free slot on any board before answering 503.
    queue_timeout: float = 120.0
    check_interval: float = 1.0

    def __post_init__(self) -> None:
        if not self.boards:
            raise ConfigError("at least one --board is needed", key="board")
        names = [b.name for b in self.boards]
        if len(set(names)) != len(names):
            raise ConfigError(f"the same board is listed twice: {', '.join(sorted(names))}", key="board")
        for key, value in (("stream_timeout", self.stream_timeout), ("queue_timeout", self.queue_timeout),
                           ("check_interval", self.check_interval)):
            if value <= 0:
                raise ConfigError(f"must be more than 0 seconds, not {value}", key=key)
        parse_bind(self.bind)


def parse_board(url: str, slots: int) -> Board:
    """`http://host:port` of a board (no path: the balancer forwards the paths) with its slot count."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ConfigError(f"{url}: boards are reached over plain http:// on the LAN (TLS ends at the balancer)",
                          key="board")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{url}: the port is not a number between 0 and 65535", key="board") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{url}: give the board as http://HOST:PORT, without a path", key="board")
    if slots < 1:
        raise ConfigError(f"{url}: a board has at least one slot, not {slots}", key="slots")
    name = _NAME_UNSAFE.sub("_", f"{parts.hostname}_{port}")
    return Board(name, parts.hostname, port, slots)


def parse_bind(bind: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6]:PORT` or `:PORT` (all addresses)."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{bind!r}: give ADDRESS:PORT, e.g. 0.0.0.0:8080", key="bind")
    host = host.strip("[]")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{bind!r}: {host!r} is not an IP address", key="bind") from None
    return host, int(port_text)


def _seconds(value: float) -> str:
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _json_error(status: int, message: str, code: str) -> str:
    # OpenAI-shaped, like the boards' own errors; single quotes keep HAProxy from reading the double quotes.
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return (f"'{{\"error\": {{\"message\": \"{message}\", \"type\": \"{kind}\", \"param\": null, "
            f"\"code\": \"{code}\"}}}}'")


def _global(s: HaproxySettings) -> list[str]:
    lines = [
        "global",
        # stdout: the journal under systemd, the terminal in the foreground; nothing to rotate.
        "    log stdout format short daemon info",
        "    maxconn 2048",
    ]
    if s.stats_socket:
        lines.append(f"    stats socket {s.stats_socket} mode 600 level operator")
    return lines


def _defaults(s: HaproxySettings) -> list[str]:
    stream = _seconds(s.stream_timeout)
    return [
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    option forwardfor",
        # One connection to a board per request: the daemon closes idle keep-alive connections after 5 s, and
        # reusing one it has just closed would look like a board failure (see on-error mark-down below). A
        # handshake on the LAN costs far less than a token.
        "    option http-server-close",
        # Server-sent events (/v1 stream) and NDJSON (/api) are forwarded as each chunk arrives: HAProxy holds
        # no response body (no compression, no http-buffer-response), and http-no-delay sends every small chunk
        # at once instead of waiting to fill a packet.
        "    option http-no-delay",
        # The whole request body is read before a board is picked, so a retry can send it again (bodies up to
        # tune.bufsize, 16 kB; larger ones are forwarded but cannot be retried) and a slow client holds a
        # balancer buffer instead of a board's connection.
        "    option http-buffer-request",
        # A request is retried on another board only when no byte of the answer came back: the connection
        # failed, the board closed it without a word (killed mid-prompt), answered garbage, or said 503
        # (loading, failed, or every slot and queue place taken by clients that bypass the balancer).
        # Generation has no side effects, so replaying a POST is safe.
        # Once a stream has started nothing is retried: the client sees its stream end without [DONE].
        "    retries 3",
        "    retry-on conn-failure empty-response junk-response 503",
        "    option redispatch 1",
        # Boards are on the LAN: a connect that takes a second is a board that is gone.
        "    timeout connect 1s",
        f"    timeout client {stream}",
        f"    timeout server {stream}",
        f"    timeout queue {_seconds(s.queue_timeout)}",
        # As the daemon's own server.read_timeout: headers and body within 10 s.
        "    timeout http-request 10s",
        "    timeout http-keep-alive 5s",
        "    timeout client-fin 5s",
        "    timeout server-fin 5s",
        "    timeout check 2s",
    ]


def _frontend(s: HaproxySettings) -> list[str]:
    host, port = parse_bind(s.bind)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        "frontend clawd_edge",
        f"    bind {bind}",
        f"    acl api path_beg {' '.join(API_PREFIXES)}",
        f"    acl health path {HEALTH_PATH}",
        "    http-request return status 404 content-type application/json string "
        + _json_error(404, "not found on the balancer: only /v1, /api and /health are served", "not_found")
        + " unless api || health",
    ]
    if s.api_key:
        # The key is checked here, before a request takes a board's slot or a queue place, and forwarded
        # unchanged: every board runs with the same server.api_key and checks it again. Only its SHA-256 is
        # written (fhdr: the whole header, commas included), so this file does not hold the key itself.
        digest = hashlib.sha256(f"Bearer {s.api_key}".encode()).hexdigest().upper()
        lines += [
            f"    acl key_ok req.fhdr(authorization),sha2(256),hex -m str {digest}",
            "    http-request return status 401 content-type application/json hdr WWW-Authenticate Bearer "
            "string " + _json_error(401, "invalid or missing API key: send Authorization: Bearer KEY",
                                    "invalid_api_key") + " if api !key_ok",
        ]
    lines.append("    default_backend boards")
    return lines


def _backend(s: HaproxySettings) -> list[str]:
    interval = _seconds(s.check_interval)
    lines = [
        "backend boards",
        # A generating 2-core board is slow: the next request goes to the board with the fewest open ones.
        "    balance leastconn",
        # /health needs no API key, so the checks carry none. 200 means ready or idle-unloaded (the next
        # request reloads it in under a second); 503 means loading or failed, and the board is taken out.
        "    option httpchk",
        f"    http-check send meth GET uri {HEALTH_PATH} ver HTTP/1.1 hdr Host clawd-edge",
        "    http-check expect status 200",
        # Which board answered (its server name, host_port), for the client's logs and for debugging.
        "    http-response set-header X-Clawd-Board %s",
        # "Out of slots" is handled per request, not by the health check: each server's maxconn is its slot
        # count, so HAProxy never sends a board more requests than it runs at once and keeps the rest in its
        # own queue (timeout queue), handing each to whichever board frees a slot first. A check that marked
        # busy boards down would flap every second and, with every board busy, answer 503 instead of queueing.
        # Two checks in a row decide (fall/rise 2). A connection error on live traffic marks the board down at
        # once: under leastconn a dead board has the fewest connections, so every retry and redispatch would
        # pick it again until the checks noticed (all 3 retries refused within a millisecond, then 503). The
        # checks bring a board back in about a second; a board marked down by one odd error loses only that.
        f"    default-server check inter {interval} fastinter {_seconds(s.check_interval / 2)} "
        f"downinter {_seconds(s.check_interval / 2)} fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down",
    ]
    lines += [f"    server {b.name} {b.address} maxconn {b.slots}" for b in s.boards]
    return lines


def render(settings: HaproxySettings) -> str:
    """The whole haproxy.cfg for these settings."""
    header = [
        "# Written by `clawd-edge fleet haproxy`; regenerate rather than edit.",
        "# Boards: " + ", ".join(f"{b.name} ({b.slots} slots)" for b in settings.boards),
        "# Each board gets at most its slots at once (maxconn); the rest wait here for the first free slot.",
        "# /health decides who is in (200: ready or idle-unloaded; 503: loading or failed).",
        "# A request is retried on another board only if no byte of its answer came back.",
    ]
    if settings.api_key:
        header.append("# Clients must send the boards' API key (only its SHA-256 is here); boards check it again.")
    sections: Sequence[list[str]] = (header, _global(settings), _defaults(settings), _frontend(settings),
                                     _backend(settings))
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
