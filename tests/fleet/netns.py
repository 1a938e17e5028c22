"""A throwaway LAN in network namespaces: a bridge namespace and board namespaces wired to it by veth pairs."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.213.7"  # a /24 that exists only inside these namespaces


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def can_create_namespaces() -> str | None:
    """None when `ip netns add` works here, else why not (for a skip reason)."""
    name = f"clawd-probe-{os.getpid()}"
    try:
        result = ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return "the ip command (iproute2) is missing"
    if result.returncode != 0:
        return f"network namespaces cannot be created here: {result.stderr.strip()}"
    ip("netns", "del", name, check=False)
    return None


@dataclass
class Lan:
    """Namespace `<prefix>-lan` holds bridge br0 (SUBNET.254, the client side); `<prefix>-bN` are boards with
    eth0 = SUBNET.N."""

    prefix: str
    boards: list[str] = field(default_factory=list)

    @property
    def lan(self) -> str:
        return f"{self.prefix}-lan"

    def create(self, count: int) -> Lan:
        try:
            ip("netns", "add", self.lan)
            ip("-n", self.lan, "link", "set", "lo", "up")
            ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
            ip("-n", self.lan, "addr", "add", f"{SUBNET}.254/24", "dev", "br0")
            ip("-n", self.lan, "link", "set", "br0", "up")
            for index in range(1, count + 1):
                name = f"{self.prefix}-b{index}"
                ip("netns", "add", name)
                self.boards.append(name)
                ip("-n", name, "link", "set", "lo", "up")
                ip("-n", self.lan, "link", "add", f"p{index}", "type", "veth", "peer", "name", "eth0", "netns", name)
                ip("-n", self.lan, "link", "set", f"p{index}", "master", "br0", "up")
                ip("-n", name, "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
                ip("-n", name, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def has_address(self, board: str, address: str) -> bool:
        out = ip("-n", board, "-o", "-4", "addr", "show", "dev", "eth0").stdout
        return f" {address}/" in out

    def destroy(self) -> None:
        for name in [*self.boards, self.lan]:
            ip("netns", "del", name, check=False)
        self.boards.clear()
