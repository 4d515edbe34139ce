"""StateDeriver: owns the state projection and its connection; applies what the writer appended.

It wakes on `Appended(seq)`, catches up in a worker thread (one SQLite transaction per batch, never
awaiting inside it), publishes "applied up to N" to waiters (read-your-writes) and turns what
changed into `records_changed` / `tables_changed` events; when rule documents (or the schema they
name) change, `rules_changed`, and `automation_suspended` for rules that a synced cycle suspends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import blocking
from actors.events import EventHub
from actors.projection_actor import ProjectionActor
from openprod.core import ids
from openprod.engine import rules as rulemod
from openprod.engine.state import StateProjection
from openprod.engine.statehash import compute as compute_state_hash
from openprod.engine.views import Views
from openprod.storage import db


class StateDeriver(ProjectionActor[StateProjection, dict[str, Any]]):
    def __init__(self, oplog_path: Path, hub: EventHub) -> None:
        proj = StateProjection(db.connect(oplog_path, synchronous="NORMAL"))
        proj.track_changes = True
        # notified by the writer after each append; listeners (the ConflictManager) hear each
        # applied seq after its events
        super().__init__(proj, hub)
        self.views = Views(proj)
        # told when tables or fields changed (the ScriptRunner recompiles its triggers)
        self.schema_listeners: list[Callable[[], None]] = []
        self._suspended: set[str] = set(
            rulemod.RuleSet(rulemod.read_docs(self.views), self.views).suspended)

    def _catch_up(self) -> dict[str, Any]:
        proj = self.proj
        proj.touched.clear()
        proj.schema_changed = False
        proj.config_changed.clear()
        replays = proj.replays
        seq = proj.catch_up()
        touched = sorted(proj.touched)
        by_table: dict[str, list[str]] = {}
        if touched and proj.replays == replays:
            for start in range(0, len(touched), 500):
                chunk = touched[start:start + 500]
                q = ",".join("?" * len(chunk))
                for facet, e in proj.conn.execute(
                    f"SELECT facet, entity FROM facets WHERE entity IN ({q})", chunk
                ):
                    by_table.setdefault(facet, []).append(ids.to_text(bytes(e)))
        rules: dict[str, Any] | None = None
        if "rule" in proj.config_changed or "module" in proj.config_changed \
                or proj.schema_changed or proj.replays != replays:
            # rule documents, or the tables they name, changed: which rules are suspended
            rs = rulemod.RuleSet(rulemod.read_docs(self.views), self.views)
            rules = {"suspended": rs.suspended, "cycles": rs.cycles,
                     "changed": "rule" in proj.config_changed}
        return {"seq": seq, "tables": proj.schema_changed, "by_table": by_table,
                "replayed": proj.replays != replays, "rules": rules,
                "scripts": "script" in proj.config_changed}

    def _publish(self, ch: dict[str, Any]) -> int:
        seq: int = ch["seq"]
        rules = ch["rules"]
        if rules is not None:
            newly = sorted(set(rules["suspended"]) - self._suspended)
            self._suspended = set(rules["suspended"])
            if rules["changed"]:
                self.hub.publish({"type": "rules_changed", "seq": seq})
            if newly:
                # cycles can only arrive by sync (the put check refuses them locally)
                self.hub.publish({"type": "automation_suspended", "rules": newly,
                                  "cycles": rules["cycles"], "seq": seq})
        if ch.get("scripts"):  # a workspace script was put or deleted, here or by a peer
            self.hub.publish({"type": "scripts_changed", "seq": seq})
        if ch["replayed"]:
            self.hub.publish({"type": "resync", "seq": seq})
            return seq
        if ch["tables"] or ch["replayed"]:
            for fn in self.schema_listeners:
                fn()
        if ch["tables"]:
            self.hub.publish({"type": "tables_changed", "seq": seq})
        for table, entity_ids in sorted(ch["by_table"].items()):
            self.hub.publish({"type": "records_changed", "table": table,
                              "entity_ids": sorted(entity_ids), "seq": seq})
        return seq

    async def state(self, oplog_digest_of: Any) -> dict[str, Any]:
        """The state hash at the current head (computed once the projection reached it)."""
        def compute() -> dict[str, Any]:
            self.proj.catch_up()
            digest = oplog_digest_of(self.proj.conn)
            return {"state_hash": compute_state_hash(self.proj.conn, digest).hex(),
                    "oplog_digest": digest.hex(), "seq": self.proj.checkpoint}
        return await blocking.run_sync(compute, limiter=self._limiter)
