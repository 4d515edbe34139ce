"""The central invariant (spec 01 §11.7): replicas that hold the same ops hold the same state.

A random program of commands runs on 2-4 replicas with skewed clocks, random syncs and
partitions, restarts and `verify` checks. At the end every bundle is delivered to fresh
replicas in random orders and chunk sizes, the original replicas are synced, and every replica
must have the same oplog digest and state hash -- incrementally, after a full replay
(`rebuild`) and after a restart. Ids, identities and index suffixes are seeded from the
hypothesis example, so a failing example replays exactly.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from openprod.core import codec, ids
from openprod.core import ops as O
from openprod.core.errors import OpenprodError
from openprod.core.identity import Identity
from openprod.engine import crdt, state
from openprod.engine.statehash import open_conflicts
from tests.helpers import T0, Net, Peer

ORDERED = "workspace.sub"
LINK = "workspace.link"
TEXTS = ["a", "b", "c"]
TABLES = ["Tasks", "People", "Orgs"]


@contextlib.contextmanager
def seeded_world(seed: int, flush_every: int) -> Iterator[None]:
    """Make ids, identities and fractional-index suffixes a function of `seed`; flush the
    full replay's row caches every `flush_every` ops (normally 50 000) to exercise that path."""
    rnd = random.Random(seed)
    counter = [0]

    def new_id() -> bytes:
        counter[0] += 1
        ms = T0 + counter[0]  # strictly increasing, like uuid7 within one process
        raw = bytearray(ms.to_bytes(6, "big") + rnd.randbytes(10))
        raw[6] = 0x70 | (raw[6] & 0x0F)
        raw[8] = 0x80 | (raw[8] & 0x3F)
        return bytes(raw)

    def generate(display_name: str = "", device_name: str = "") -> Identity:
        return Identity.from_seed(rnd.randbytes(32), display_name, device_name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ids, "new_id", new_id)
        mp.setattr(Identity, "generate", staticmethod(generate))
        mp.setattr(state, "FLUSH_EVERY", flush_every)
        yield


def seed_rand(p: Peer, salt: int) -> None:
    p.ws._rand = random.Random(salt)


class World:
    """Replicas of one workspace, a schema made on the first, and the command vocabulary."""

    def __init__(self, root: Path, n: int, skews: list[int]) -> None:
        self.net = Net(root)
        self.peers = [self.net.add_peer(f"p{i}", clock_ms=T0 + skews[i]) for i in range(n)]
        for i, p in enumerate(self.peers):
            seed_rand(p, i)
        a = self.peers[0]
        t1 = a.create_table("Tasks", [
            {"label": "name", "name": "name"},
            {"label": "n", "name": "n", "type": "integer"},
            {"label": "st", "name": "st", "type": "enum", "options": {"choices": ["x", "y"]}},
            {"label": "body", "name": "body", "crdt": True},
        ])
        t2 = a.create_table("People", [
            {"label": "title", "name": "title"},
            {"label": "qty", "name": "qty", "type": "integer"},
        ])
        t3 = a.create_table("Orgs", [{"label": "label", "name": "label"}])
        assert t1.facet is not None and t2.facet is not None and t3.facet is not None
        self.t1, self.t2, self.t3 = t1.facet, t2.facet, t3.facet
        self.label = {self.t1: "Tasks", self.t2: "People", self.t3: "Orgs"}
        a.define_edge_type(ORDERED, "Sub", ordered=True, props={"w": "integer"})
        a.define_edge_type(LINK, "Link", props={"w": "integer"})
        # Three text keys can form one group of three; the integers a group of two.
        self.mappings = [(f"{self.t1}.name", f"{self.t2}.title"),
                         (f"{self.t2}.title", f"{self.t3}.label"),
                         (f"{self.t1}.name", f"{self.t3}.label"),
                         (f"{self.t1}.n", f"{self.t2}.qty")]
        self.net.sync_all()
        self.log: list[str] = []
        self.refused = 0

    # --- reads a command needs ---------------------------------------------------------
    @staticmethod
    def records(p: Peer, table: str | None = None) -> list[bytes]:
        out: set[bytes] = set()
        for t in [table] if table else TABLES:
            out |= {ids.from_text(r["id"]) for r in p.list_records(t)}
        return sorted(out)

    @staticmethod
    def edges(p: Peer, etype: str) -> list[dict[str, Any]]:
        return p.list_edges(etype=etype)


def _vals(data: st.DataObject, table: str) -> dict[str, Any]:
    if table == "Tasks":
        pool: dict[str, st.SearchStrategy[Any]] = {
            "name": st.sampled_from(TEXTS), "n": st.integers(0, 3),
            "st": st.sampled_from(["x", "y"]), "body": st.sampled_from(["", "hi", "yo"]),
        }
    elif table == "People":
        pool = {"title": st.sampled_from(TEXTS), "qty": st.integers(0, 3)}
    else:
        pool = {"label": st.sampled_from(TEXTS)}
    keys = data.draw(st.lists(st.sampled_from(sorted(pool)), unique=True, max_size=len(pool)))
    out: dict[str, Any] = {}
    for k in keys:
        out[k] = data.draw(st.none() | pool[k])
    return out


def _pick(data: st.DataObject, xs: list[Any]) -> Any:
    return data.draw(st.sampled_from(xs)) if xs else None


# Each step: (name, weight). Drawn by weight, so common commands dominate the program.
STEPS = [
    ("sync", 6), ("create", 5), ("update", 6), ("advance", 4), ("edge", 3), ("edit_text", 2),
    ("clear", 2), ("delete", 2), ("undo", 2), ("redo", 1), ("add_to_table", 2),
    ("reorder", 2), ("delete_edge", 1), ("edge_prop", 2), ("link", 1), ("merge", 2),
    ("split", 2), ("mapping", 2), ("partition", 2), ("reopen", 1), ("verify", 1),
    ("rebalance", 1), ("inject", 2),
]
STEP_NAMES = [name for name, w in STEPS for _ in range(w)]


def run_step(w: World, data: st.DataObject, name: str, p: Peer) -> None:
    d = data.draw
    if name == "sync":
        q = d(st.sampled_from(w.peers))
        if q is not p:
            w.net.sync(p, q)
        return
    if name == "partition":
        group = d(st.lists(st.sampled_from(w.peers), min_size=2, unique_by=id))
        w.net.sync_all(group)
        return
    if name == "advance":
        ms = d(st.sampled_from([0, 1, 1, 7, 250, 3000, -40]))
        p.clock.advance(ms)
        return
    if name == "reopen":
        p.reopen()
        seed_rand(p, d(st.integers(0, 9)))
        return
    if name == "verify":
        v = p.verify()
        assert v["ok"], ("incremental state differs from a full replay", v)
        return
    if name == "create":
        table = d(st.sampled_from(TABLES))
        p.create_record(table, _vals(data, table))
        return
    if name == "undo":
        p.undo()
        return
    if name == "redo":
        p.redo()
        return
    if name == "mapping":
        a, b = d(st.sampled_from(w.mappings))
        (p.confirm_mapping if d(st.booleans()) else p.reject_mapping)(a, b)
        return
    recs = w.records(p)
    e = _pick(data, recs)
    if name in ("update", "clear"):
        if e is None:
            return
        tables = p.get_record(e)["tables"]
        table = w.label[d(st.sampled_from(tables))]
        vals = _vals(data, table)
        if name == "clear":
            vals = {k: None for k in vals}
        if vals:
            p.update_record(e, vals, table=table)
        return
    if name == "delete":
        if e is not None:
            if d(st.booleans()):
                p.delete_entity(e)
            else:
                table = d(st.sampled_from(p.get_record(e)["tables"]))
                p.delete_record(e, table)
        return
    if name == "edit_text":
        tasks = w.records(p, "Tasks")
        e = _pick(data, tasks)
        if e is not None:
            cur = p.get_record(e)["values"]["body"] or ""
            i = d(st.integers(0, len(cur)))
            k = d(st.integers(0, len(cur) - i))
            p.edit_text(e, "Tasks", "body", i, k, d(st.sampled_from(["", "x", "zz"])))
        return
    if name == "add_to_table":
        if e is not None:
            tables = p.get_record(e)["tables"]
            others = [w.label[f] for f in (w.t1, w.t2, w.t3) if f not in tables]
            if others:
                other = d(st.sampled_from(others))
                p.add_to_table(e, other, _vals(data, other))
        return
    if name in ("edge", "link"):
        if len(recs) < 1:
            return
        src, dst = d(st.sampled_from(recs)), d(st.sampled_from(recs))
        props = {"w": d(st.integers(0, 2))} if d(st.booleans()) else None
        if name == "link":
            p.create_edge(LINK, src, dst, props=props)
            return
        scope = [g for _, g in p.views.ordered_scope(dst, ORDERED)]
        where = d(st.sampled_from(["end", "after", "before"]))
        anchor = _pick(data, scope)
        kw = {} if where == "end" or anchor is None else {where: anchor}
        p.create_edge(ORDERED, src, dst, props=props, **kw)
        return
    if name == "inject":
        inject(w, data, p)
        return
    if name == "merge":
        if len(recs) >= 2:
            a, b = d(st.lists(st.sampled_from(recs), min_size=2, max_size=2, unique=True))
            p.merge(a, b)
        return
    if name == "split":
        multi = [x for x in recs if len(p.get_record(x)["tables"]) >= 2]
        x = _pick(data, multi)
        if x is not None:
            tables = p.get_record(x)["tables"]
            p.split(x, d(st.lists(st.sampled_from(tables), min_size=1, unique=True)))
        return
    edges = w.edges(p, ORDERED) + (w.edges(p, LINK) if name != "reorder" else [])
    g = _pick(data, edges)
    if g is None:
        return
    gid = ids.from_text(g["id"])
    if name == "reorder":
        scope = [x for _, x in p.views.ordered_scope(ids.from_text(g["dst"]), ORDERED)
                 if x != gid]
        anchor = _pick(data, scope)
        where = d(st.sampled_from(["after", "before"]))
        p.reorder_edge(gid, **({where: anchor} if anchor is not None else {}))
    elif name == "rebalance":
        if g["type"] == ORDERED:
            p.rebalance(ids.from_text(g["dst"]), ORDERED)
    elif name == "delete_edge":
        p.delete_edge(gid)
    elif name == "edge_prop":
        p.set_edge_property(gid, "w", d(st.none() | st.integers(0, 2)))


def inject(w: World, data: st.DataObject, p: Peer) -> None:
    """A signed bundle the facade would refuse: derivation applies it or keeps it inert."""
    d = data.draw
    known = sorted({bytes(e) for (e,) in p.proj.conn.execute("SELECT entity FROM entities")})
    edges = sorted({bytes(g) for (g,) in p.proj.conn.execute("SELECT edge FROM edges")})
    e = _pick(data, known)
    g = _pick(data, edges)
    choices: list[Callable[[], O.Payload]] = [
        lambda: O.AttachFacet(ids.new_id(), w.t3),  # rows before (or without) their entity
    ]
    if e is not None:
        choices += [
            lambda: O.SetField(e, w.t1, "body", ["text", "inert"]),  # scalar on a CRDT slot
            lambda: O.SetCRDTField(e, w.t1, "name", crdt.delta_for_replace(None, "inert")),
            lambda: O.SetField(e, w.t2, "qty", ["integer", 9]),  # facet maybe not attached
            lambda: O.ClearField(e, w.t3, "label"),
            lambda: O.RestoreEntity(e),
            lambda: O.DeleteEntity(e, []),  # edges left undeleted, hidden
            lambda: O.AttachFacet(e, w.t3),
            lambda: O.ConfirmFieldMapping(*sorted_pair(w.t1, "n", w.t3, "label")),  # types
            lambda: O.SplitEntity(e, ids.new_id(), sorted([w.t1, w.t2])),
        ]
    if len(known) >= 2:
        x, y = d(st.lists(st.sampled_from(known), min_size=2, max_size=2, unique=True))
        choices.append(lambda: O.MergeEntities(min(x, y), max(x, y)))  # even dead ones
    if g is not None:
        choices += [
            lambda: O.MoveOrderedEdge(g, d(st.sampled_from(["1", "V", "zz"]))),  # any edge
            lambda: O.SetEdgeProperty(g, "w", ["integer", d(st.integers(0, 2))]),
            lambda: O.RestoreEdge(g),
        ]
    payloads = [d(st.sampled_from(choices))()]
    for pl in payloads:
        pl.check()
    bundle = O.seal(p.ws.ident, p.ws.ws, "user", payloads, p.ws.clock.tick_many(len(payloads)),
                    p.vclock())
    report = p.ws.ingest([bundle.record])
    assert report.applied == [bundle.bundle_id], report


def sorted_pair(fa: str, na: str, fb: str, nb: str) -> tuple[str, str, str, str]:
    (a1, a2), (b1, b2) = sorted([(fa, na), (fb, nb)], key=lambda x: f"{x[0]}.{x[1]}")
    return a1, a2, b1, b2


def all_bundles(peers: list[Peer]) -> list[list[Any]]:
    seen: dict[bytes, list[Any]] = {}
    for p in peers:
        for rec in p.ops_since({}):
            seen.setdefault(codec.decode(rec[0])["bundle"], rec)
    return [seen[k] for k in sorted(seen)]


def summary(p: Peer) -> tuple[Any, ...]:
    """What a user sees: records per table (values, conflicts), visible edges, open conflicts."""
    recs = tuple(
        tuple((r["id"], sorted(r["values"].items()), tuple(r["conflicts"]))
              for r in p.list_records(t))
        for t in TABLES
    )
    edges = tuple((g["id"], g["src"], g["dst"], g["index"], sorted(g["props"].items()))
                  for g in p.list_edges())
    n_open = sum(
        1 for (blob,) in p.proj.conn.execute("SELECT tips FROM tips WHERE kind IN ('f', 'p')")
        if open_conflicts(codec.decode(bytes(blob)))
    )
    return recs, edges, n_open


def check_converged(net: Net, peers: list[Peer]) -> None:
    h = net.assert_converged(peers)
    views = {p.name: summary(p) for p in peers}
    assert len({repr(v) for v in views.values()}) == 1, "replicas show different records"
    for p in peers:
        before = p.proj.replays
        assert p.rebuild() == h, f"{p.name}: full replay differs from incremental state"
        assert p.proj.replays == before + 1
        assert repr(summary(p)) == repr(views[p.name])
        p.reopen()
        assert p.state_hash() == h, f"{p.name}: state differs after a restart"
    for p in peers:
        assert p.verify()["ok"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1),
       flush_every=st.sampled_from([state.FLUSH_EVERY, 1, 7, 40]))
def test_random_programs_converge(data: st.DataObject, seed: int, flush_every: int) -> None:
    with seeded_world(seed, flush_every), tempfile.TemporaryDirectory() as tmp:
        n = data.draw(st.integers(2, 4), label="replicas")
        skews = data.draw(st.lists(st.integers(-2000, 2000), min_size=n, max_size=n),
                          label="skews")
        w = World(Path(tmp), n, skews)
        try:
            for i in range(data.draw(st.integers(0, 3), label="seed records")):
                p = w.peers[i % n]
                e = p.create_record("Tasks", {"name": TEXTS[i % 3], "n": i}).id
                if i % 2:
                    p.add_to_table(e, "People", {"title": TEXTS[(i + 1) % 3]})
            w.net.sync_all()
            n_steps = data.draw(st.integers(3, 45), label="steps")
            for _ in range(n_steps):
                name = data.draw(st.sampled_from(STEP_NAMES))
                p = data.draw(st.sampled_from(w.peers))
                w.log.append(f"{p.name}.{name}")
                head = p.storage.head_seq()
                try:
                    run_step(w, data, name, p)
                    if p.storage.head_seq() != head:
                        event(f"wrote {name}")
                except OpenprodError as exc:  # a refused command writes nothing
                    w.refused += 1
                    w.log[-1] += f" refused({exc.code})"
                    event(f"refused {name}: {exc.code}")
            note(" ".join(w.log))
            bundles = all_bundles(w.peers)
            k = data.draw(st.integers(1, 3), label="fresh replicas")
            clock = max(p.clock.ms for p in w.peers)
            fresh = []
            for i in range(k):
                f = w.net.add_peer(f"fresh{i}", clock_ms=clock)
                order = data.draw(st.permutations(bundles), label=f"order{i}")
                pos = 0
                while pos < len(order):
                    size = data.draw(st.integers(1, 8))
                    w.net.deliver(f, order[pos:pos + size])
                    pos += size
                fresh.append(f)
            w.net.sync_all(w.peers)
            replays = min(sum(p.proj.replays for p in w.peers), 5)
            event(f"full replays during the program: {replays}")
            check_converged(w.net, w.peers + fresh)
        finally:
            for p in w.net.peers:
                p.ws.close()


def test_two_bundles_sharing_an_op_id_quarantine_the_same_one(net: Net) -> None:
    """Invariant 7: an op_id held by two bundles -> the smaller header_hash wins everywhere."""
    a, b = net.add_peer("a"), net.add_peer("b")
    c, d = net.add_peer("c"), net.add_peer("d")
    facet = a.create_table("Tasks", [{"label": "name", "name": "name"}]).facet
    assert facet is not None
    e = a.create_record("Tasks", {"name": "base"}).id
    net.sync_all()
    shared = ids.new_id()
    records = []
    for p, text in ((a, "from-a"), (b, "from-b")):
        p.clock.advance(5)
        bundle = O.seal(p.ws.ident, p.ws.ws, "user", [O.SetField(e, facet, "name", ["text", text])],
                        p.ws.clock.tick_many(1), p.vclock(), op_ids=[shared])
        records.append(bundle.record)
    for order, p in (([0, 1], c), ([1, 0], d)):
        p.clock.advance(5)
        # deliver the second bundle only after the first has been applied
        for i in order:
            net.deliver(p, [records[i]])
    net.sync_all()
    quarantined = [set(p.storage.quarantined()) for p in net.peers]
    assert len(quarantined[0]) == 1
    assert all(q == quarantined[0] for q in quarantined)
    h = net.assert_converged()
    values = {p.get_record(e)["values"]["name"] for p in net.peers}
    assert len(values) == 1 and values < {"from-a", "from-b"}
    for p in net.peers:
        assert p.rebuild() == h
