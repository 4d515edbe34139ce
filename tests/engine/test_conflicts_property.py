"""Property (spec 02 §1.3, §4 C14): conflict records are a pure function of the op set.

Three peers write one entity's fields (optionally a mapped pair) concurrently, resolve open
conflicts (including clears, and resolutions that may be rejected), with random partial syncs.
The resulting op set is then delivered bundle by bundle, in random orders, to 3 fresh replicas:
every replica, every original peer, a full replay and a reopened replica hold identical records.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from openprod.core.errors import OpenprodError
from tests.helpers import Net, Peer

FIELDS = [{"label": "name", "name": "name"}, {"label": "status", "name": "status"}]

peer = st.integers(0, 2)
sync = st.sampled_from(["all", "none", "pair"])
round_ = st.tuples(
    st.lists(st.tuples(peer, st.integers(0, 2), st.sampled_from(["x", "y", "z", None])),
             max_size=4),                                      # concurrent writes
    sync,
    st.lists(st.tuples(peer, st.sampled_from(["r", "s", None])), max_size=3),  # resolutions
    sync,
)


def _close(net: Net) -> None:
    for p in net.peers:
        p.ws.close()


def _write(p: Peer, e: bytes, field: int, mapped: bool, v: Any) -> None:
    if field == 2 and mapped:
        p.update_record(e, {"name": v}, table="Cast")
    else:
        p.update_record(e, {FIELDS[field % 2]["name"]: v}, table="Task")


@settings(max_examples=40)
@given(mapped=st.booleans(), rounds=st.lists(round_, min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_any_arrival_order_gives_identical_conflict_records(
    mapped: bool, rounds: list[Any], seed: int,
) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        net = Net(root / "orig")
        fresh = Net(root / "fresh")
        try:
            peers = [net.add_peer(n) for n in ("A", "B", "C")]
            a = peers[0]
            ft = a.create_table("Task", FIELDS).facet
            e = a.create_record("Task", {"name": "orig"}).id
            if mapped:
                fk = a.create_table("Cast", [{"label": "name", "name": "name"}]).facet
                a.add_to_table(e, "Cast", {"name": "orig"})
                a.confirm_mapping(f"{ft}.name", f"{fk}.name")
            net.sync_all()

            def do_sync(how: str) -> None:
                if how == "all":
                    net.sync_all()
                elif how == "pair":
                    i, j = rng.sample(range(3), 2)
                    net.sync(peers[i], peers[j])

            for writes, sync1, resolvers, sync2 in rounds:
                for i, field, v in writes:
                    peers[i].clock.advance(rng.randrange(0, 3))
                    _write(peers[i], e, field, mapped, v)
                do_sync(sync1)
                for i, v in resolvers:
                    open_ = peers[i].list_conflicts()
                    if open_:
                        with contextlib.suppress(OpenprodError):  # e.g. entity state
                            peers[i].resolve_conflict(rng.choice(open_)["conflict_id"], v)
                do_sync(sync2)
            net.sync_all()
            want = a.conflicts.records()
            event(f"records: {len(want)}, rejected: "
                  f"{sum(len(r['rejected']) for r in want.values())}, "
                  f"reopened: {sum(bool(r['reopened']) for r in want.values())}")
            for p in peers:
                assert p.conflicts.records() == want
            records = a.ops_since({})
            fresh.ws_id = net.ws_id
            replicas = [fresh.add_peer(f"F{k}") for k in range(3)]
            for r in replicas:
                order = list(records)
                rng.shuffle(order)
                while order:  # random batch sizes, random order
                    n = rng.randrange(1, 4)
                    fresh.deliver(r, order[:n])
                    order = order[n:]
                assert r.conflicts.records() == want
            hashes = {p.state_hash() for p in peers + replicas}
            assert len(hashes) == 1
            r0 = replicas[0]
            r0.conflicts.rebuild()
            assert r0.conflicts.records() == want
            r0.reopen()
            assert r0.conflicts.records() == want
            assert [c["conflict_id"] for c in r0.list_conflicts("all")] == \
                [c["conflict_id"] for c in a.list_conflicts("all")]
        finally:
            _close(net)
            _close(fresh)
