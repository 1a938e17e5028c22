"""The keepalived (2.2) VRRP config that keeps a virtual IP on whichever of two boards has a healthy daemon."""
from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

from ..errors import ConfigError

# Linux interface names: at most 15 bytes, no slash, no whitespace.
_INTERFACE = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Role:
    """What the two boards differ in."""

    state: str
    priority: int


# Both start as BACKUP: keepalived honours preempt_delay and nopreempt only then, and the election (priority)
# decides who holds the address instead of whoever booted first. Priorities are high because a backup that
# hears the master give up (priority 0) waits the skew time, (256 - priority) / 256 advert intervals, before
# taking over: 0.06 s at 240 instead of 0.6 s at 100, a fifth of the 3-second failover budget.
ROLES: dict[str, Role] = {
    "primary": Role("BACKUP", 250),
    "standby": Role("BACKUP", 240),
}


@dataclass(frozen=True)
class KeepalivedSettings:
    """What `clawd-edge fleet keepalived` writes; durations in seconds."""

    role: str
    vip: str
    interface: str
    health_command: tuple[str, ...]
    virtual_router_id: int = 51
    priority: int | None = None
    advert_int: float = 1.0
    # The track script: keepalived runs `clawd-edge health` every `check_interval` seconds (keepalived takes
    # whole seconds only); `fall` failures in a row give the address up, `rise` successes take it back.
    check_interval: int = 1
    fall: int = 2
    rise: int = 2
    preempt: bool = True
    preempt_delay: float = 0.0
    script_user: str = "nobody"
    peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"{self.role!r}: one of {', '.join(ROLES)}", key="role")
        _vip(self.vip)
        if not _INTERFACE.fullmatch(self.interface):
            raise ConfigError(f"{self.interface!r} is not a network interface name", key="interface")
        if not self.health_command:
            raise ConfigError("the health command is empty", key="health_command")
        checks = (
            ("virtual_router_id", self.virtual_router_id, 1, 255),
            ("priority", self.priority if self.priority is not None else 1, 1, 254),
            ("check_interval", self.check_interval, 1, 3600),
            ("fall", self.fall, 1, 100),
            ("rise", self.rise, 1, 100),
        )
        for key, value, low, high in checks:
            if not low <= value <= high:
                raise ConfigError(f"must be between {low} and {high}, not {value}", key=key)
        if not 0 < self.advert_int <= 255:
            raise ConfigError(f"must be between 0 and 255 seconds, not {self.advert_int}", key="advert_int")
        if not 0 <= self.preempt_delay <= 1000:
            raise ConfigError(f"must be between 0 and 1000 seconds, not {self.preempt_delay}", key="preempt_delay")
        if not _USER.fullmatch(self.script_user):
            raise ConfigError(f"{self.script_user!r} is not a user name", key="script_user")
        for peer in self.peers:
            _ipv4(peer, "peer")

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority is not None else ROLES[self.role].priority


def _ipv4(text: str, key: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address", key=key) from None
    if not isinstance(address, ipaddress.IPv4Address):
        # VRRP for IPv6 is a separate (VRRPv3) instance with link-local adverts; not written here.
        raise ConfigError(f"{text}: only IPv4 is supported", key=key)
    return address


def _vip(text: str) -> str:
    """ADDR or ADDR/PREFIX, normalised; without a prefix keepalived adds a /32."""
    address, _, prefix = text.partition("/")
    _ipv4(address, "vip")
    if prefix and (not prefix.isdigit() or not 0 < int(prefix) <= 32):
        raise ConfigError(f"{text!r}: the prefix length must be 1..32", key="vip")
    return f"{address}/{prefix or 32}"


def _quote(argv: tuple[str, ...]) -> str:
    # keepalived splits the script line itself (no shell) and honours single quotes inside the double-quoted
    # string; a double quote cannot appear at all.
    for arg in argv:
        if '"' in arg:
            raise ConfigError(f"{arg!r}: a double quote cannot appear in the health command", key="health_command")
    return '"' + shlex.join(argv) + '"'


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def render(settings: KeepalivedSettings) -> str:
    """The whole keepalived.conf for one board."""
    s = settings
    role = ROLES[s.role]
    preempt = (f"    preempt_delay {_number(s.preempt_delay)}" if s.preempt else "    nopreempt")
    # Unicast adverts to the other board, for networks (many Wi-Fi access points) that drop VRRP multicast.
    peers = ["    unicast_peer {", *(f"        {p}" for p in s.peers), "    }"] if s.peers else []
    lines = [
        f"# Written by `clawd-edge fleet keepalived --role {s.role}`; regenerate rather than edit.",
        f"# {s.vip} follows the healthy daemon: `clawd-edge health` runs every {s.check_interval} s, {s.fall} "
        f"failures in a row give the address up, {s.rise} successes make this board eligible again.",
        "global_defs {",
        f"    router_id clawd_edge_{s.role}",
        # The track script runs as an unprivileged user; keepalived refuses it if any directory of its path is
        # writable by someone other than root.
        f"    script_user {s.script_user}",
        "    enable_script_security",
        "}",
        "",
        # Weight 0: a failing daemon puts the instance in FAULT, which gives the address up at once (a priority-0
        # advert tells the other board to take over without waiting for the master-down timer).
        "vrrp_script clawd_edge_health {",
        f"    script {_quote(s.health_command)}",
        f"    interval {s.check_interval}",
        # keepalived kills a script that hangs; `clawd-edge health --timeout` returns well before that.
        f"    timeout {s.check_interval + 1}",
        f"    fall {s.fall}",
        f"    rise {s.rise}",
        "    weight 0",
        # A board that just booted holds no address until its daemon has answered /health `rise` times.
        "    init_fail",
        "}",
        "",
        "vrrp_instance clawd_edge {",
        f"    state {role.state}",
        f"    interface {s.interface}",
        f"    virtual_router_id {s.virtual_router_id}",
        f"    priority {s.effective_priority}",
        f"    advert_int {_number(s.advert_int)}",
        # Preempting moves the address back to the primary as soon as it is healthy again, which cuts the
        # streams open on the standby; nopreempt (--no-preempt) leaves it on the standby until that one fails.
        preempt,
        *peers,
        "    virtual_ipaddress {",
        f"        {_vip(s.vip)} dev {s.interface}",
        "    }",
        "    track_script {",
        "        clawd_edge_health",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"
