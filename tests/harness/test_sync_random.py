"""Randomized convergence over real sync links (spec 03 §6.8, §9 "Converged").

3–5 full nodes; each schedule is a random mix of edits (creates, field updates with many
same-field concurrent writes, clears, deletes, edges, conflict resolutions) and topology
changes (connect, disconnect, partition, heal, mock time passing so sessions stop part-way).
After every schedule the network is healed into one connected graph and must converge: equal
vector clocks, oplog digests and state hashes, and identical conflict records everywhere.

One test runs `SCHEDULES` schedules back to back on one network (each starting from the
previous one's converged state), so the default suite covers 20 × 10 = 200 schedules quickly;
`--runslow` adds 80 more seeds (1,000 schedules in all).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from openprod.core.errors import NotFound, ValidationError
from tests.harness.network import TestNetwork, _key
from tests.harness.peer import Peer

SCHEDULES = 10
SEEDS = 20
SLOW_SEEDS = 100
FIELDS = [("name", "text"), ("status", "text"), ("n", "integer")]
EDGE = "workspace.link"
NAMES = ["x", "y", "z"]  # few values: concurrent writes often touch the same field


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        n = SLOW_SEEDS if metafunc.config.getoption("--runslow") else SEEDS
        metafunc.parametrize("seed", range(n))


class World:
    """What the schedule knows exists (any peer may not have seen it yet)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.records: list[str] = []
        self.edges: list[str] = []


async def edit(rng: random.Random, w: World, p: Peer) -> None:
    t = w.table
    r = rng.random()
    try:
        if r < 0.15 or len(w.records) < 3:
            w.records.append(await p.create_record(t, {"name": rng.choice(NAMES),
                                                       "n": rng.randrange(100)}))
        elif r < 0.65:
            # the first records are the hot ones: same-field concurrent edits
            e = rng.choice(w.records[:3] if rng.random() < 0.8 else w.records)
            field = rng.choice(["name", "name", "name", "status", "n"])
            value: Any = rng.randrange(100) if field == "n" else rng.choice(NAMES)
            await p.update_record(e, t, {field: value})
        elif r < 0.70:
            await p.clear_field(rng.choice(w.records), t, rng.choice(["name", "status"]))
        elif r < 0.76:
            # mostly cold records, so the hot ones keep drawing concurrent edits
            cold = w.records[3:]
            await p.delete_record(rng.choice(cold if cold and rng.random() < 0.8 else w.records))
        elif r < 0.87:
            src, dst = rng.sample(w.records, 2)
            w.edges.append(await p.create_edge(EDGE, src, dst))
        elif r < 0.93 and w.edges:
            await p.delete_edge(rng.choice(w.edges))
        else:
            open_ = await p.list_conflicts()
            if open_:
                c = rng.choice(open_)
                if c["kind"] == "delete":
                    await p.resolve_conflict(c["conflict_id"],
                                             choice=rng.choice(["restore", "keep_deleted"]))
                else:
                    await p.resolve_conflict(c["conflict_id"], value=rng.choice(NAMES))
    except (NotFound, ValidationError):
        pass  # this peer has not seen the target yet, or it is deleted here: a refused edit


async def topology(rng: random.Random, net: TestNetwork) -> None:
    peers = net.peers
    r = rng.random()
    if r < 0.35:
        x, y = rng.sample(peers, 2)
        await net.connect(x, y)
    elif r < 0.55:
        live = [k for k, h in net.links.items() if not h.done.is_set()]
        if live:
            await net._drop(rng.choice(live))
    elif r < 0.75:
        await split(rng, net)
    elif r < 0.82:
        await net.heal()
    else:
        # let sessions run part-way (or finish) before the next change
        await trio.sleep(rng.choice([0.0, 0.01, 0.1, 0.5, 3.0]))


async def split(rng: random.Random, net: TestNetwork) -> None:
    """Partition the peers into 2 or 3 random non-empty groups."""
    shuffled = rng.sample(net.peers, len(net.peers))
    k = rng.randint(2, min(3, len(shuffled)))
    cuts = sorted(rng.sample(range(1, len(shuffled)), k - 1))
    groups = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    await net.partition(*groups)


async def heal_all(net: TestNetwork) -> None:
    await net.heal()
    for x, y in zip(net.peers, net.peers[1:], strict=False):
        h = net.links.get(_key(x, y))
        if h is None or h.done.is_set():
            await net.connect(x, y)


async def test_random_partitions_converge(seed: int, tmp_path: Any,
                                          autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(seed)
    async with TestNetwork.open(tmp_path) as net:
        peers = [await net.add_peer(f"p{i}") for i in range(rng.randint(3, 5))]
        t = await peers[0].create_table("Tasks", FIELDS)
        await peers[0].define_edge_type(EDGE)
        w = World(t)
        for i in range(3):
            w.records.append(await peers[0].create_record(t, {"name": NAMES[i]}))
        await heal_all(net)
        await net.wait_for_sync()
        for _ in range(SCHEDULES):
            if rng.random() < 0.7:  # most schedules start split: edits in parts run concurrent
                await split(rng, net)
            for _ in range(rng.randint(6, 16)):
                if rng.random() < 0.6:
                    p = rng.choice(peers)
                    p.clock.advance(rng.choice([1, 5, 50]))
                    await edit(rng, w, p)
                else:
                    await topology(rng, net)
            await heal_all(net)
            await net.wait_for_sync()
            await net.assert_converged()
            conflicts = [await p.list_conflicts("all") for p in peers]
            assert all(c == conflicts[0] for c in conflicts), seed
        for p in peers:
            assert await p.verify(), p.name  # a full replay reproduces the state
