"""LAN discovery runtime: the zeroconf ↔ trio bridge (spec 03 §4) and a fake source for tests.

Owns advertising this (device, workspace) over mDNS and turning what the browser sees into
`DiscoveryEvent`s on a trio channel. What a record means — parsing TXT, dropping malformed
ones, whether to dial — lives in `openprod.sync.discovery`; this module only moves records
between zeroconf's threads and trio and keeps track of which peers are currently reported.

The consumer (the sync service) decides whether to dial with `should_dial`: adverts for other
workspaces are still reported, only our own actor and malformed records are dropped here.

`ZeroconfDiscovery` needs real worker threads: under `blocking.INLINE` (the simulation harness)
`ServiceBrowser.cancel` would join the browser thread on the trio thread while that thread waits
in `trio.from_thread.run_sync` for trio — a deadlock. Simulations use `StaticDiscovery`.

Both sources close the `send` channel they are given when they stop (the trio convention for a
producer task); pass a clone if several sources share one consumer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import Literal

import attrs
import ifaddr
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from actors import blocking
from openprod.sync import discovery as disc
from openprod.sync.discovery import SERVICE_TYPE, Advert

# zeroconf's resolve timeout in ms (spec 03 §4). A peer that does not answer in time is only
# retried on its next browser Updated event or a rescan; it is not polled.
RESOLVE_TIMEOUT_MS = 3000
# Bounded so a chatty LAN cannot grow our memory; overflow degrades to a full rescan.
BROWSER_QUEUE_SIZE = 256
# Bounds the shielded shutdown: a wedged zeroconf must not hang node shutdown forever.
SHUTDOWN_TIMEOUT_S = 10.0


@attrs.frozen
class DiscoveryEvent:
    """A peer instance appeared/changed ("discovered", with its advert) or went away ("lost")."""

    kind: Literal["discovered", "lost"]
    name: str
    advert: Advert | None


@attrs.frozen
class ServiceRecord:
    """A raw resolved record, as a fake source feeds it: parsed and filtered like a real one."""

    name: str
    properties: Mapping[bytes, bytes | None]
    addresses: tuple[str, ...]
    port: int


class _Tracker:
    """Which names we currently report, so events are emitted once per change.

    zeroconf fires Updated for TTL refreshes and a rescan re-resolves everything; without this
    the consumer would see the same "discovered" over and over.
    """

    def __init__(self, actor: bytes) -> None:
        self._actor = actor
        self.reported: dict[str, Advert] = {}

    def resolved(self, name: str, advert: Advert | None) -> DiscoveryEvent | None:
        """A (re-)resolved record for `name`; None means it was malformed."""
        if advert is not None and advert.actor == self._actor:
            advert = None  # ourselves (in any workspace we advertise): never a peer
        if advert is None:
            # A record that turned malformed (or into ourselves) is no longer a peer to dial.
            return self.removed(name)
        if self.reported.get(name) == advert:
            return None
        self.reported[name] = advert
        return DiscoveryEvent("discovered", name, advert)

    def removed(self, name: str) -> DiscoveryEvent | None:
        if self.reported.pop(name, None) is None:
            return None  # never reported (own, malformed, unresolved): nothing to retract
        return DiscoveryEvent("lost", name, None)


def _local_ipv4_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this host (what we advertise with InterfaceChoice.All).

    Loopback is left out: a remote peer dialing 127.0.0.1 would reach itself.
    """
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):  # IPv6 entries are tuples
                continue
            if ipaddress.IPv4Address(ip.ip).is_loopback or ip.ip in out:
                continue
            out.append(ip.ip)
    return out


def _advertised_addresses(interfaces: list[str] | None) -> list[str]:
    if interfaces:
        # Explicit interfaces are given as addresses (e.g. ["127.0.0.1"]): advertise exactly those.
        out: list[str] = []
        for i in interfaces:
            try:
                out.append(str(ipaddress.IPv4Address(i)))
            except ValueError:
                continue
        if out:
            return out
    return _local_ipv4_addresses() or ["127.0.0.1"]


class ZeroconfDiscovery:
    """Advertise one (device, workspace) and report every other openprod instance on the LAN."""

    def __init__(self, *, ws: bytes, actor: bytes, port: int, wsname: str, join: str, gh: str,
                 interfaces: list[str] | None = None, advertise: bool = True) -> None:
        self.ws = ws
        self.actor = actor
        self.port = port
        self.interfaces = interfaces
        # Browse only: a joining replica has no genesis (so no `gh`) and must not advertise
        # until it is active (spec 03 §2 Join flow).
        self.advertise = advertise
        # Validates the inputs now rather than inside the zeroconf thread.
        self.properties = disc.txt_properties(ws, actor, wsname, join, gh) if advertise else {}
        # The name we ended up registered under (allow_name_change may append "-2").
        self.registered_name: str | None = None
        self._tracker = _Tracker(actor)
        # Names the browser currently believes exist, maintained on the trio thread by `push`,
        # so a rescan after an overflow knows what to re-resolve even if events were dropped.
        self._browsed: set[str] = set()
        self._rescan = False

    async def run(self, send: trio.MemorySendChannel[DiscoveryEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, browse and report until cancelled; unregister on the way out."""
        token = trio.lowlevel.current_trio_token()
        inbox_send, inbox_recv = trio.open_memory_channel[tuple[str, ServiceStateChange]](
            BROWSER_QUEUE_SIZE)

        def push(ev: tuple[str, ServiceStateChange]) -> None:
            # Runs on the trio thread (via from_thread.run_sync), so no locking is needed.
            name, change = ev
            if change is ServiceStateChange.Removed:
                self._browsed.discard(name)
            else:
                self._browsed.add(name)
            try:
                inbox_send.send_nowait(ev)
            except trio.WouldBlock:
                # Never block zeroconf's thread on a slow consumer: drop the event and
                # reconcile everything once the backlog drains.
                self._rescan = True
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # shutting down: the browser outlived our loop by a moment

        def on_change(*, zeroconf: Zeroconf, service_type: str, name: str,
                      state_change: ServiceStateChange) -> None:
            # Runs on the browser's thread: hand over to trio and do nothing else here.
            # RunFinishedError: the trio run is over, so nobody is listening any more.
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(push, (name, state_change), trio_token=token)

        addresses = [socket.inet_aton(a) for a in _advertised_addresses(self.interfaces)]
        info = ServiceInfo(
            SERVICE_TYPE,
            disc.service_name(self.actor, self.ws),
            addresses=addresses,
            port=self.port,
            properties=self.properties,
            server=f"{disc.instance_name(self.actor, self.ws)}.local.",
        )
        iface: list[str] | InterfaceChoice = self.interfaces or InterfaceChoice.All
        async with send:
            zc = await blocking.run_sync(_open_zeroconf, iface)
            registered = False
            browser: ServiceBrowser | None = None
            try:
                async with inbox_recv:
                    if self.advertise:
                        # Probes for name conflicts first (1–2 s); info.name follows a rename.
                        await blocking.run_sync(_register, zc, info)
                        registered = True
                        self.registered_name = info.name
                    browser = await blocking.run_sync(_browse, zc, on_change)
                    task_status.started()
                    async for name, change in inbox_recv:
                        await self._handle(zc, send, name, change)
                        if self._rescan:
                            self._rescan = False
                            await self._rescan_all(zc, send)
            finally:
                inbox_send.close()
                await _shutdown(zc, browser, info if registered else None)

    async def _resolve(self, zc: Zeroconf, name: str) -> tuple[bool, Advert | None]:
        """(answered, advert): not answered within the timeout, or answered but malformed."""
        info = await blocking.run_sync(zc.get_service_info, SERVICE_TYPE, name,
                                       RESOLVE_TIMEOUT_MS, abandon_on_cancel=True)
        if info is None:
            return False, None
        port = info.port if info.port is not None else 0
        return True, disc.parse_advert(name, info.properties,
                                       info.parsed_addresses(IPVersion.V4Only), port)

    async def _handle(self, zc: Zeroconf, send: trio.MemorySendChannel[DiscoveryEvent],
                      name: str, change: ServiceStateChange) -> None:
        if change is ServiceStateChange.Removed:
            ev = self._tracker.removed(name)
        else:
            if name == self.registered_name:
                return  # our own advert, seen through the multicast loop
            answered, advert = await self._resolve(zc, name)
            if not answered:
                # A timeout is not evidence the peer changed: keep what we reported and wait
                # for its next announcement (or a Removed).
                return
            ev = self._tracker.resolved(name, advert)
        if ev is not None:
            await send.send(ev)

    async def _rescan_all(self, zc: Zeroconf,
                          send: trio.MemorySendChannel[DiscoveryEvent]) -> None:
        """Reconcile after dropped browser events: retract the vanished, re-resolve the rest."""
        for name in [n for n in self._tracker.reported if n not in self._browsed]:
            ev = self._tracker.removed(name)
            if ev is not None:
                await send.send(ev)
        for name in sorted(self._browsed):
            await self._handle(zc, send, name, ServiceStateChange.Updated)


async def _shutdown(zc: Zeroconf, browser: ServiceBrowser | None,
                    info: ServiceInfo | None) -> None:
    """Cancel the browser, unregister (goodbye packets), close — even while being cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT_S):
        try:
            if browser is not None:
                await blocking.run_sync(browser.cancel, abandon_on_cancel=True)
        finally:
            try:
                if info is not None:
                    await blocking.run_sync(zc.unregister_service, info, abandon_on_cancel=True)
            finally:
                await blocking.run_sync(zc.close, abandon_on_cancel=True)


def _open_zeroconf(interfaces: list[str] | InterfaceChoice) -> Zeroconf:
    return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)


def _register(zc: Zeroconf, info: ServiceInfo) -> None:
    zc.register_service(info, allow_name_change=True)


def _browse(zc: Zeroconf, handler: Callable[..., None]) -> ServiceBrowser:
    return ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler])


Source = Iterable[DiscoveryEvent | ServiceRecord] | AsyncIterable[DiscoveryEvent | ServiceRecord]


class StaticDiscovery:
    """A fake discovery source: forwards given events/records through the same filter.

    `ServiceRecord`s are parsed exactly as a resolved mDNS record would be (malformed → dropped);
    `DiscoveryEvent`s are taken as already parsed. Either way our own actor is dropped and
    repeats are collapsed, as with `ZeroconfDiscovery`. Used for S45 and for manual sources.
    """

    def __init__(self, source: Source, *, actor: bytes) -> None:
        self.source = source
        self._tracker = _Tracker(actor)

    def _convert(self, item: DiscoveryEvent | ServiceRecord) -> DiscoveryEvent | None:
        if isinstance(item, ServiceRecord):
            advert = disc.parse_advert(item.name, item.properties, item.addresses, item.port)
            return self._tracker.resolved(item.name, advert)
        if item.kind == "lost":
            return self._tracker.removed(item.name)
        return self._tracker.resolved(item.name, item.advert)

    async def run(self, send: trio.MemorySendChannel[DiscoveryEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forward every item of the source, then return (closing `send`)."""
        async with send:
            task_status.started()
            if isinstance(self.source, AsyncIterable):
                async for item in self.source:
                    await self._forward(send, item)
            else:
                for item in self.source:
                    await self._forward(send, item)

    async def _forward(self, send: trio.MemorySendChannel[DiscoveryEvent],
                       item: DiscoveryEvent | ServiceRecord) -> None:
        ev = self._convert(item)
        if ev is not None:
            await send.send(ev)
        else:
            await trio.lowlevel.checkpoint()


__all__ = [
    "DiscoveryEvent",
    "ServiceRecord",
    "StaticDiscovery",
    "ZeroconfDiscovery",
]
