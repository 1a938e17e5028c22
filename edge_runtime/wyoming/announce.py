"""mDNS announcement of the Wyoming server (`_wyoming._tcp`), so Home Assistant discovers it by itself."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from typing import Any

from ..extras import optional_import

log = logging.getLogger(__name__)
SERVICE_TYPE = "_wyoming._tcp.local."
_MDNS_GROUP = "224.0.0.251"
_GOODBYE_SECONDS = 2.0


def _local_address() -> str:
    """The address other hosts reach us on: the one the route to the mDNS group leaves from (no packet sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((_MDNS_GROUP, 1))
        return str(probe.getsockname()[0])


def default_name() -> str:
    """The MAC address as hex, the instance name the Rhasspy Wyoming servers announce."""
    return f"{uuid.getnode():012x}"


class Announcement:
    """A registered `_wyoming._tcp` service; close() withdraws it."""

    def __init__(self, zeroconf: Any, info: Any, broadcast: Any) -> None:
        self._zeroconf = zeroconf
        self._info = info
        self._broadcast = broadcast  # zeroconf repeats the announcement for a while in this task

    @property
    def name(self) -> str:
        return str(self._info.name)

    async def close(self) -> None:
        """Say goodbye on the network (so Home Assistant forgets the address at once) and close the sockets."""
        try:
            if not self._broadcast.done():
                self._broadcast.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._broadcast
            goodbye = await self._zeroconf.async_unregister_service(self._info)
            await asyncio.wait_for(goodbye, _GOODBYE_SECONDS)
        finally:
            await self._zeroconf.async_close()


async def announce(port: int, host: str, name: str | None) -> Announcement:
    """Register the service for `host:port`; a wildcard host announces the machine's LAN address.

    DependencyMissing (naming the `zeroconf` extra) when the package is absent.
    """
    aio = optional_import("zeroconf.asyncio", what="zeroconf (for wyoming.zeroconf)", extra="zeroconf")
    address = _local_address() if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - comparing, not binding
    instance = name or default_name()
    info = aio.AsyncServiceInfo(SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}",
                                addresses=[socket.inet_aton(address)], port=port)
    zeroconf = aio.AsyncZeroconf()
    try:
        broadcast = await zeroconf.async_register_service(info)
    except BaseException:
        await zeroconf.async_close()
        raise
    log.info("wyoming: announced %s on %s:%d over mDNS", info.name, address, port)
    return Announcement(zeroconf, info, broadcast)
