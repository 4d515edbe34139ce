"""Tests for actors.discovery: the fake source (S45) and real mDNS over loopback (spec 03 §9).

The `mdns` tests use real zeroconf on 127.0.0.1 and the real clock. They fail (never skip) when
multicast does not work, with a message saying how to enable it, so CI cannot pass silently
without exercising the network layer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio

import actors.discovery
from actors.discovery import DiscoveryEvent, ServiceRecord, StaticDiscovery, ZeroconfDiscovery
from openprod.core import ids
from openprod.sync.discovery import Advert, parse_advert, should_dial, txt_properties

GH = "00112233aabbccdd"
MULTICAST_HINT = (
    "Multicast on loopback is probably off: check `ip link show lo` for MULTICAST and run "
    "`ip link set lo multicast on` (as root), then rerun `pytest -m mdns`."
)


def record(name: str, ws: bytes, actor: bytes, /, *, port: int = 7000,
           addresses: tuple[str, ...] = ("10.0.0.2",),
           **over: bytes | None) -> ServiceRecord:
    props: dict[bytes, bytes | None] = {
        k.encode(): v.encode() for k, v in txt_properties(ws, actor, name, "open", GH).items()
    }
    for k, v in over.items():
        props[k.encode()] = v
    return ServiceRecord(name=name, properties=props, addresses=addresses, port=port)


async def collect(source: StaticDiscovery) -> list[DiscoveryEvent]:
    send, recv = trio.open_memory_channel[DiscoveryEvent](100)
    async with trio.open_nursery() as n:
        n.start_soon(source.run, send)
        return [ev async for ev in recv]


# -- S45: a fake discovery source with mixed TXT ------------------------------------------------

async def test_s45_fake_source_keeps_only_dialable_peers() -> None:
    ws, other_ws = ids.new_id(), ids.new_id()
    me, peer, stranger = os.urandom(32), os.urandom(32), os.urandom(32)
    items = [
        record("good", ws, peer),
        record("foreign-ws", other_ws, stranger),            # another workspace
        record("me-elsewhere", other_ws, me),                # our own actor, other workspace
        record("me", ws, me),                                # our own actor
        record("bad-actor", ws, stranger, actor=b"zz" * 32),  # malformed TXT
        record("no-join", ws, stranger, join=None),          # bare key
        record("bad-port", ws, stranger, port=0),
        record("no-addr", ws, stranger, addresses=()),
        record("proto2", ws, stranger, proto=b"2"),          # S30: never dialed
        record("good", ws, peer),                            # a repeat: reported once
    ]
    events = await collect(StaticDiscovery(items, actor=me))

    names = [ev.name for ev in events]
    assert names == ["good", "foreign-ws", "proto2"]  # parsed; own actor and malformed dropped
    assert all(ev.kind == "discovered" for ev in events)
    dialable = [ev.name for ev in events
                if ev.advert is not None and should_dial(ev.advert, ws=ws, actor=me)]
    assert dialable == ["good"]


async def test_static_source_reports_changes_and_losses_once() -> None:
    ws = ids.new_id()
    me, peer = os.urandom(32), os.urandom(32)
    moved = record("p", ws, peer, port=7001)
    good = parse_advert("p", moved.properties, moved.addresses, moved.port)
    assert good is not None

    async def source() -> AsyncIterator[DiscoveryEvent | ServiceRecord]:
        yield record("p", ws, peer)
        yield moved                                   # port changed: reported again
        yield DiscoveryEvent("discovered", "p", good)  # same advert: collapsed
        yield record("p", ws, peer, gh=b"nothex")      # turned malformed: retracted
        yield DiscoveryEvent("lost", "p", None)        # already retracted: nothing
        yield DiscoveryEvent("lost", "never-seen", None)
        yield DiscoveryEvent("discovered", "q", Advert(
            name="q", ws=ws, actor=me, proto=frozenset({1}), wsname="me", join="open", gh=GH,
            addresses=("10.0.0.1",), port=1))          # ourselves, pre-parsed: dropped

    events = await collect(StaticDiscovery(source(), actor=me))
    assert [(ev.kind, ev.name) for ev in events] == [
        ("discovered", "p"), ("discovered", "p"), ("lost", "p")]
    assert events[1].advert == good
    assert events[2].advert is None


# -- real mDNS over loopback -------------------------------------------------------------------

async def wait_for(recv: trio.MemoryReceiveChannel[DiscoveryEvent], names: set[str],
                   seen: dict[str, DiscoveryEvent], kind: str = "discovered") -> None:
    while not all(n in seen and seen[n].kind == kind for n in names):
        ev = await recv.receive()
        seen[ev.name] = ev


@pytest.mark.mdns
@pytest.mark.parametrize("queue_size", [256, 0], ids=["queue", "overflow-rescan"])
async def test_loopback_mdns_discovery(queue_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # queue_size 0 makes every browser event arriving while the consumer is busy overflow, so
    # discovery must come through the rescan path (re-resolving every browsed name).
    monkeypatch.setattr(actors.discovery, "BROWSER_QUEUE_SIZE", queue_size)
    ws, other_ws = ids.new_id(), ids.new_id()
    actor_ids = [os.urandom(32) for _ in range(3)]
    discos = [
        ZeroconfDiscovery(ws=ws, actor=actor_ids[0], port=40101, wsname="A", join="open", gh=GH,
                          interfaces=["127.0.0.1"]),
        ZeroconfDiscovery(ws=ws, actor=actor_ids[1], port=40102, wsname="B", join="key", gh=GH,
                          interfaces=["127.0.0.1"]),
        ZeroconfDiscovery(ws=other_ws, actor=actor_ids[2], port=40103, wsname="C", join="open",
                          gh=GH, interfaces=["127.0.0.1"]),
    ]
    chans = [trio.open_memory_channel[DiscoveryEvent](256) for _ in discos]
    seen: list[dict[str, DiscoveryEvent]] = [{}, {}]
    a, b, c = discos

    async with trio.open_nursery() as nursery:
        c_scope = trio.CancelScope()

        async def run_c(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with c_scope:
                await c.run(chans[2][0], task_status=task_status)

        try:
            await nursery.start(a.run, chans[0][0])
            await nursery.start(b.run, chans[1][0])
            await nursery.start(run_c)
        except OSError as exc:
            pytest.fail(f"zeroconf could not start on 127.0.0.1 ({exc!r}). {MULTICAST_HINT}")
        assert a.registered_name and b.registered_name and c.registered_name
        timeout = 30
        try:
            with trio.fail_after(timeout):
                await wait_for(chans[0][1], {b.registered_name, c.registered_name}, seen[0])
                await wait_for(chans[1][1], {a.registered_name, c.registered_name}, seen[1])
        except trio.TooSlowError:
            pytest.fail(f"zeroconf instances bound to 127.0.0.1 did not discover each other within"
                        f" {timeout} s (seen by A: {sorted(seen[0])}; by B: {sorted(seen[1])})."
                        f" {MULTICAST_HINT}")

        # Each side sees the other with the advertised port, loopback address and TXT.
        ad_b = seen[0][b.registered_name].advert
        ad_a = seen[1][a.registered_name].advert
        assert ad_b is not None and ad_a is not None
        assert (ad_b.actor, ad_b.ws, ad_b.port, ad_b.join, ad_b.wsname) == \
            (actor_ids[1], ws, 40102, "key", "B")
        assert (ad_a.actor, ad_a.port) == (actor_ids[0], 40101)
        assert "127.0.0.1" in ad_a.addresses and "127.0.0.1" in ad_b.addresses
        assert should_dial(ad_b, ws=ws, actor=actor_ids[0])
        assert should_dial(ad_a, ws=ws, actor=actor_ids[1])

        # The other workspace is reported (the consumer decides) but never dialed.
        ad_c = seen[0][c.registered_name].advert
        assert ad_c is not None and ad_c.ws == other_ws
        assert not should_dial(ad_c, ws=ws, actor=actor_ids[0])

        # Nobody reports itself.
        assert a.registered_name not in seen[0] and b.registered_name not in seen[1]
        assert all(ev.advert is None or ev.advert.actor != actor_ids[i]
                   for i in (0, 1) for ev in seen[i].values())

        # C shuts down: its goodbye packets make A and B report it lost.
        c_scope.cancel()
        try:
            with trio.fail_after(timeout):
                await wait_for(chans[0][1], {c.registered_name}, seen[0], kind="lost")
                await wait_for(chans[1][1], {c.registered_name}, seen[1], kind="lost")
        except trio.TooSlowError:
            pytest.fail(f"C unregistered but A/B never reported it lost within {timeout} s")
        # C closed its channel on the way out.
        with pytest.raises(trio.EndOfChannel):
            while True:
                await chans[2][1].receive()

        nursery.cancel_scope.cancel()
