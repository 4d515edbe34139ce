"""ProjectionBase: what every projection reads from the oplog on its own connection.

The state and conflict projections share these: the oplog head, the signed causal vector clock of
a bundle (cached, since "had seen" asks for it per write), and the quarantine checks that force a
replay. `seen` is the one causality test (spec 02 §1.1) both use.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import apsw
import cbor2

from openprod.core import hlc as hlcmod
from openprod.core import vclock as vcmod

VC_CACHE = 4096


class Replay(Exception):
    """Raised inside a batch when spec 01 §7 calls for a full replay."""


class Corrupt(Exception):
    """A stored op body no longer matches its op_hash: its bundle is quarantined."""

    def __init__(self, bundle_id: bytes) -> None:
        super().__init__(bundle_id)
        self.bundle_id = bundle_id


def seen(x_hlc: bytes, x_actor: bytes, x_vc: dict[bytes, bytes], y_hlc: bytes,
         y_actor: bytes) -> bool:
    """x had seen y (spec 02 §1.1). Requiring x.hlc > y.hlc keeps it exact for any signed VC."""
    if x_hlc <= y_hlc:
        return False
    if x_actor == y_actor:
        return True
    return x_vc.get(y_actor, hlcmod.ZERO) >= y_hlc


class ProjectionBase:
    """Oplog reads shared by projections; subclasses call `super().__init__(conn)`."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self._vcs: OrderedDict[bytes, dict[bytes, bytes]] = OrderedDict()

    META_TABLE = ""  # the subclass's (k, v) table holding its checkpoint ("seq")

    def _meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.conn.execute(f"SELECT k, v FROM {self.META_TABLE}")}

    @property
    def checkpoint(self) -> int:
        return int(self._meta()["seq"])

    def _head(self) -> int:
        for (v,) in self.conn.execute("SELECT v FROM oplog_meta WHERE k = 'head_seq'"):
            return int(v)
        return 0

    def _vc(self, bundle_id: bytes) -> dict[bytes, bytes]:
        vc = self._vcs.get(bundle_id)
        if vc is not None:
            self._vcs.move_to_end(bundle_id)
            return vc
        vc = {}
        for (header,) in self.conn.execute(
            "SELECT header FROM bundles WHERE bundle_id = ?", (bundle_id,)
        ):
            vc = vcmod.from_wire(cbor2.loads(header)["causal_vc"])
        self._vcs[bundle_id] = vc
        if len(self._vcs) > VC_CACHE:
            self._vcs.popitem(last=False)
        return vc

    def _quarantine_hits(self, seq: int) -> bool:
        """A bundle quarantined after we applied it forces a replay (spec 01 §4)."""
        for _ in self.conn.execute(
            "SELECT 1 FROM quarantine q JOIN bundles b ON b.bundle_id = q.bundle_id"
            " WHERE q.at_seq > ? AND b.first_seq <= ? LIMIT 1", (seq, seq),
        ):
            return True
        return False

    def _quarantined(self) -> set[bytes]:
        return {bytes(b) for (b,) in self.conn.execute("SELECT bundle_id FROM quarantine")}

    def _quarantine(self, bundle_id: bytes, head: int) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO quarantine(bundle_id, reason, at_seq) VALUES (?, ?, ?)",
            (bundle_id, "stored op body does not match its op_hash", head),
        )
