"""The synchronous engine facade: one open workspace, driven by plain calls.

Owns the oplog writer (`SqliteStorage`, synchronous=FULL), the state projection on its own
connection, the device identity, the HLC and the local actor's undo/redo stacks. Every command
validates against derived state plus the earlier ops of its bundle, writes nothing on failure,
and returns the seq it appended; reads see every write the call made (read-your-writes).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from openprod.core import codec, ids, values
from openprod.core import hlc as hlcmod
from openprod.core import ops as O
from openprod.core.errors import (
    EntityDeleted,
    EntityMerged,
    EquivocationError,
    Forbidden,
    NotFound,
    ValidationError,
)
from openprod.core.identity import Identity
from openprod.engine import blobs as blobmod
from openprod.engine import crdt, fracindex
from openprod.engine import fork as forkmod
from openprod.engine import lifecycle as lcmod
from openprod.engine import modules as modmod
from openprod.engine import overlays as ovmod
from openprod.engine import proposals as propmod
from openprod.engine import query as querymod
from openprod.engine import rules as rulemod
from openprod.engine import undo as undomod
from openprod.engine.conflicts import (
    ConflictAlreadyResolved,
    ConflictNotFound,
    ConflictProjection,
    StaleConflictState,
    conflict_id,
    is_prop_skey,
    prop_skey,
    raw_ids,
)
from openprod.engine.manifest import Package
from openprod.engine.state import StateProjection
from openprod.engine.statehash import compute as compute_state_hash
from openprod.engine.views import FieldDef, TableDef, Views, _read
from openprod.scripts import triggers as trigmod
from openprod.scripts import workspace_scripts as wsscripts
from openprod.storage import db
from openprod.storage.sqlite import SqliteStorage, digest_of
from openprod.sync.receipt import Checked, check_records

OPLOG_FILE = "oplog.db"
IMPORT_BATCH = 500
FORK_APPEND_BUNDLES = 16  # fork bundles per append transaction (each up to ~4 MiB)
INTEGRITY_CODES = frozenset(["bad_signature", "bad_digest", "malformed"])


@attrs.frozen
class Result:
    """What a command appended: the seq the projections must reach, and what it created."""

    seq: int
    bundle_id: bytes | None
    created: tuple[bytes, ...] = ()
    facet: str | None = None
    staged: bool = False  # staged into the active overlay: nothing was appended

    @property
    def id(self) -> bytes:
        return self.created[0]


@attrs.frozen
class IngestReport:
    applied: list[bytes] = attrs.field(factory=list)
    dup: list[bytes] = attrs.field(factory=list)
    rejected: list[tuple[bytes | None, str, str]] = attrs.field(factory=list)
    stale: list[bytes] = attrs.field(factory=list)  # applied, older than 7 days (flagged)
    seq: int = 0


class _Ctx:
    """Within-bundle state a command validates against on top of derived state."""

    def __init__(self) -> None:
        self.created: set[bytes] = set()
        self.attached: set[tuple[bytes, str]] = set()
        self.detached: set[tuple[bytes, str]] = set()
        self.slots: set[tuple[bytes, str]] = set()
        self.edges: set[bytes] = set()
        self.canonical = False  # True: validate against canonical only (never staged)


class Workspace:
    def __init__(
        self, path: Path, ident: Identity, *, now: Callable[[], int] = hlcmod.system_ms,
        derive: bool = True,
    ) -> None:
        """derive=False: only append (the runtime's StateDeriver projects on its own connection
        and the OplogWriter waits for it before validating the next command)."""
        self.path = path
        self.derive = derive
        self.ident = ident
        self.actor = ident.actor
        self.storage = SqliteStorage(path / OPLOG_FILE)
        self.proj = StateProjection(db.connect(path / OPLOG_FILE, synchronous="NORMAL"))
        self.views = Views(self.proj)
        # the blob store (spec 03 §7), on its own connection; the runtime gives it a lock, as
        # the API streams uploads into it from worker threads while the writer reads it
        self.blobs = blobmod.BlobStore.for_workspace(path)
        self._conflict_proj = ConflictProjection(self.proj.conn)
        self.conflict_events: list[dict[str, Any]] = []  # from the last conflicts catch-up
        self.clock = hlcmod.Clock(now)
        self.clock.observe(self.storage.max_hlc())
        ws = self.storage.local_get("workspace")
        self.ws: bytes = bytes(ws) if ws is not None else b""
        self.undo_stack = undomod.UndoStack()
        self.recovery_secret: bytes | None = None  # set by create(), for showing once
        self._rand = random.Random()
        self._derive()
        # Overlays (spec 02 §2): local-only, all load stashed; committed ones are forgotten.
        self.overlays = ovmod.OverlayStore(self.storage.conn)
        self.overlays.forget_committed(self.storage.has_bundle)
        self.overlay_events: list[dict[str, Any]] = []  # overlay_drift events, last check
        # Rules (spec 04 §6): proposals are local; the rule set is cached on its documents
        self.proposals = propmod.ProposalStore(self.storage.conn)
        self._rules_cache: tuple[tuple[Any, ...], rulemod.RuleSet] | None = None
        # ((overlay, store rewrites, head), rows applied, canonical + those rows): _rule_base
        self._rule_layer: tuple[tuple[bytes, int, int], int, rulemod.Layer] | None = None
        self.rule_clock: Callable[[], float] = time.monotonic
        # this user's enabled on-change scripts as name -> (writes, watches), for cycle checks
        self.local_automations: dict[str, tuple[set[str], set[str]]] = {}
        # ... and their watches (spec 04 §7.4): local canonical commits they fire are queued
        # in `fired` as (script, changes, depth, bundle id) for the runtime's ScriptRunner
        self.triggers: list[trigmod.Trigger] = []
        self.fired: list[tuple[str, list[dict[str, Any]], int, bytes]] = []

    def _derive(self) -> None:
        """Bring the projection up to the oplog head, or just reload its schema caches."""
        if self.derive:
            self.proj.catch_up()
        else:
            self.proj.refresh()

    # --- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: Path | str, ident: Identity, name: str = "Workspace", *,
        now: Callable[[], int] = hlcmod.system_ms, ws: bytes | None = None,
        recovery_secret: bytes | None = None, forked_from: Mapping[str, Any] | None = None,
    ) -> Workspace:
        """Create a workspace folder and its genesis bundle (CreateWorkspace + join mode).

        The recovery secret (random unless given) is left on `recovery_secret` for the caller
        to show once and keep (spec 03 §2 Create); only its public key is in the genesis.
        `forked_from` {ws, genesis_hash, oplog_digest} marks a fork's genesis (see `fork`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        if (path / OPLOG_FILE).exists():
            raise ValidationError(f"a workspace already exists at {path}", path=str(path))
        self = cls(path, ident, now=now)
        self.ws = ws or ids.new_id()
        self.storage.local_set("workspace", self.ws)
        self.storage.local_set("actor", self.actor)
        secret = recovery_secret or lcmod.new_recovery_secret()
        self.recovery_secret = secret
        recovery_pub = lcmod.recovery_identity(secret).actor
        self._commit("user", [
            O.CreateWorkspace(name=name, owner=self.actor, recovery_pub=recovery_pub,
                              forked_from=dict(forked_from) if forked_from else None),
            O.PutConfig("workspace", "join_mode", "open"),
            O.PutConfig("actor", self.actor.hex(), {
                "display_name": ident.display_name, "device_name": ident.device_name}),
        ], push_undo=False)
        return self

    @classmethod
    def join(cls, path: Path | str, ident: Identity, ws: bytes, *,
             now: Callable[[], int] = hlcmod.system_ms) -> Workspace:
        """An empty replica of workspace ws, to be filled by `ingest` (catch-up)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self = cls(path, ident, now=now)
        self.ws = ws
        self.storage.local_set("workspace", ws)
        self.storage.local_set("actor", self.actor)
        return self

    @classmethod
    def open(cls, path: Path | str, ident: Identity, *,
             now: Callable[[], int] = hlcmod.system_ms, derive: bool = True) -> Workspace:
        path = Path(path)
        if not (path / OPLOG_FILE).exists():
            raise NotFound(f"no workspace at {path}", path=str(path))
        return cls(path, ident, now=now, derive=derive)

    def close(self) -> None:
        self.blobs.close()
        self.proj.conn.close()
        self.storage.close()

    def fork(self, dest: Path | str, name: str, *, ws: bytes | None = None,
             ) -> tuple[Workspace, dict[str, Any]]:
        """A new workspace at `dest` holding this one's current canonical state (spec 03 §2).

        Its genesis names this actor owner and `forked_from` = {ws, genesis_hash,
        oplog_digest} of this workspace; then the schema, records (same entity ids, displayed
        values), CRDT text and edges (same edge ids and indexes) follow as `import` bundles
        authored by this actor (what is and is not copied: openprod.engine.fork). This
        workspace then records `fork` = {} under the new ws id (a normal user bundle).
        Returns the open fork (its recovery secret on `recovery_secret`) and a report
        {ws, name, records, edges, open_conflicts}. `ws`: the fork's id (new unless given).
        The blobs its blob_ref values reference that are stored here are hard-linked into the
        fork's store (copied when linking fails); their metadata travels as config.
        """
        name = _label(name, "workspace")
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise ValidationError(f"{dest} is not empty", path=str(dest))
        gh = self.genesis_hash()
        if gh is None:
            raise ValidationError("this workspace has not received its genesis yet")
        conflicts = self.list_conflicts("open")  # also catches the conflict projection up
        origin = {"ws": self.ws, "genesis_hash": gh, "oplog_digest": self.oplog_digest()}
        new = Workspace.create(dest, self.ident, name, now=self.clock.now, ws=ws,
                               forked_from=origin)
        try:
            records, edges = new._import_fork(self.views)
            self.blobs.link_into(new.blobs, blobmod.referenced(new.views.conn))
        except BaseException:
            new.close()  # a half-made fork is not a workspace: remove it
            shutil.rmtree(dest, ignore_errors=True)
            raise
        self.put_config("fork", ids.to_text(new.ws), {})
        return new, {"ws": ids.to_text(new.ws), "name": name, "records": len(records),
                     "edges": len(edges),
                     "open_conflicts": forkmod.conflict_report(conflicts, records, edges)}

    def _import_fork(self, src: Views) -> tuple[set[bytes], set[bytes]]:
        """Append the source's state as `import` bundles (schema, records, edges), a few
        bundles per transaction; returns the entity and edge ids copied."""
        tables = {t.facet: t for t in src.tables()}
        entities = forkmod.live_entities(src)
        edge_ops = list(forkmod.edge_ops(src))
        sections: list[Iterable[list[O.Payload]]] = [
            forkmod.pack([p] for p in forkmod.schema_ops(src)),
            forkmod.pack(forkmod.record_ops(src, e, tables) for e in entities),
            forkmod.pack([p] for p in edge_ops),
        ]
        batch: list[O.Bundle] = []
        for section in sections:
            for payloads in section:
                batch.append(self._seal("import", payloads))
                if len(batch) >= FORK_APPEND_BUNDLES:
                    self.storage.append(batch)
                    batch = []
        if batch:
            self.storage.append(batch)
        self._derive()
        return set(entities), {p.edge for p in edge_ops
                               if isinstance(p, O.CreateEdge | O.CreateOrderedEdge)}

    # --- the write path ----------------------------------------------------------------------
    def _seal(self, kind: str, payloads: Sequence[O.Payload],
              meta: Mapping[str, Any] | None = None) -> O.Bundle:
        for p in payloads:
            p.check()
        hlcs = self.clock.tick_many(len(payloads))
        return O.seal(self.ident, self.ws, kind, payloads, hlcs, self.storage.vclock(),
                      meta=meta)

    def _commit(
        self, kind: str, payloads: Sequence[O.Payload], *,
        meta: Mapping[str, Any] | None = None, push_undo: bool = True,
        created: Iterable[bytes] = (), facet: str | None = None,
        fired: rulemod.EventResult | None = None,
    ) -> Result:
        """Append one bundle (or stage a user command into the active overlay). A user command
        is a triggering event for rules unless `fired` says they already ran on it."""
        event: rulemod.EventResult | None = fired
        ctx: bytes | None = None
        if kind == "user" and payloads and fired is None:
            oid = self.overlays.active
            if oid is not None and all(p.t in ovmod.STAGEABLE or p.t == "SetCRDTField"
                                       for p in payloads):
                ctx = oid
            # a local mutation batch: rules fire inside the command (spec 04 §6)
            event = self._fire_rules(payloads, ctx)
            payloads = event.payloads
            if ctx is not None:
                res_staged = self._stage(ctx, payloads, tuple(created), facet)
                self._record_proposals(event, ctx)
                return res_staged
        payloads = [*payloads, *self._blob_meta(payloads)]
        pre = undomod.preimage(self.views, payloads) if push_undo else ()
        bundle = self._seal(kind, payloads, meta)
        triggered = self._match_triggers(payloads, 1) if kind == "user" else {}
        res = self.storage.append([bundle])
        if event is not None:
            self._record_proposals(event, None)
        self._queue_fired(triggered, 1, bundle.bundle_id)
        self._derive()
        if push_undo and undomod.undoable(payloads):
            self.undo_stack.push(undomod.Entry(
                bundle.bundle_id, bundle.hlc, bundle.causal_vc, tuple(payloads), tuple(pre)))
        if kind not in ("undo", "redo"):
            self.undo_stack.redo.clear()
        self._after_canonical()
        return Result(res.head, bundle.bundle_id, tuple(created), facet)

    def _entity(self, ref: bytes | str, ctx: _Ctx | None = None, *,
                canonical: bool = False) -> bytes:
        """A live entity for a local command (merged ids are refused, not retargeted).

        With an overlay active, entities it created count as live and ones it deleted as
        deleted, unless `canonical` (commands that are never staged)."""
        e = ref if isinstance(ref, bytes) else _parse_id(ref)
        if ctx is not None and e in ctx.created:
            return e
        ov = None if canonical else self._ov_state()
        if ov is not None:
            if e in ov.deleted:
                raise EntityDeleted(f"record {ids.to_text(e)} is deleted in this overlay",
                                    entity_id=ids.to_text(e))
            if e in ov.created:
                return e
        row = self.views.entity_row(e)
        if row is None or not row[1]:
            raise NotFound(f"no record {ids.to_text(e)}", entity_id=ids.to_text(e))
        if row[2] is not None:
            survivor = self.proj.resolve(e)
            raise EntityMerged(f"record {ids.to_text(e)} was merged into "
                               f"{ids.to_text(survivor)}", entity_id=ids.to_text(e),
                               survivor=ids.to_text(survivor))
        if row[0]:
            raise EntityDeleted(f"record {ids.to_text(e)} is deleted", entity_id=ids.to_text(e))
        return e

    def _attached(self, e: bytes, facet: str, ctx: _Ctx) -> bool:
        if (e, facet) in ctx.attached:
            return True
        if (e, facet) in ctx.detached:
            return False
        ov = None if ctx.canonical else self._ov_state()
        if ov is not None and (e, facet) in ov.facets:
            return ov.facets[(e, facet)]
        return self.views.is_attached(e, facet)

    def _write_ops(self, e: bytes, table: TableDef, vals: Mapping[str, Any], ctx: _Ctx,
                   ) -> list[O.Payload]:
        out: list[O.Payload] = []
        if not self._attached(e, table.facet, ctx):
            raise ValidationError(f"record {ids.to_text(e)} is not in table {table.label!r}",
                                  entity_id=ids.to_text(e), table=table.facet)
        for ref, x in vals.items():
            f = table.field(ref)
            slot = self.proj.slot_of(f.facet, f.name)
            if (e, slot) in ctx.slots:
                raise ValidationError(f"field {f.label!r} is written twice in one change",
                                      field=f.name)
            ctx.slots.add((e, slot))
            if f.crdt:
                if x is not None and not isinstance(x, str):
                    raise ValidationError(f"{f.label!r} is a text field", field=f.name)
                state = self.views.crdt_state(e, slot)
                if crdt.read_text(state) != (x or ""):
                    delta = crdt.delta_for_replace(state, x or "")
                    out.append(O.SetCRDTField(e, f.facet, f.name, delta))
                continue
            w: O.SetField | O.ClearField
            if x is None:
                w = O.ClearField(e, f.facet, f.name)
            else:
                w = O.SetField(e, f.facet, f.name, self._value(f, x))
            out.append(self._tag_if_open(e, slot, w, ctx))
        return out

    def catch_up_conflicts(self) -> list[dict[str, Any]]:
        """Bring the conflict projection up to date; return the conflict events it produced."""
        self._conflicts_now()
        return self.conflict_events

    def _conflicts_now(self) -> ConflictProjection:
        """The conflict projection, caught up. It is caught up lazily (only when conflicts are
        read or a field with several tips is written) so ordinary writes do not pay for it; the
        runtime runs it as its own actor."""
        if self.derive:
            self.conflict_events = self._conflict_proj.catch_up()
        else:  # the runtime's ConflictManager owns catch-up; read what it committed
            self._conflict_proj.refresh()
        return self._conflict_proj

    @property
    def conflicts(self) -> ConflictProjection:
        """The conflict projection, caught up to the oplog head."""
        return self._conflicts_now()

    def _tag_if_open(self, e: bytes, slot: str, w: O.SetField | O.ClearField, ctx: _Ctx,
                     ) -> O.Payload:
        """A local write to a locally open field is a resolution of it (spec 02 §1.6)."""
        if e in ctx.created:
            return w
        # A field open in the conflict projection has several tips in the state projection too
        # (for honest peers), so a field with one tip needs no conflict lookup.
        stored = self.views.stored_tips("f", e, slot)  # none: at most the register's own
        if stored is None or len(stored) < 2:
            return w
        cid = conflict_id(e, slot)
        rec = self._conflicts_now().get_raw(cid)
        if rec is None or rec["status"] != "open" or rec["kind"] != "field":
            return w
        return attrs.evolve(w, resolves=sorted(bytes(t[0]) for t in rec["tips"]), conflict=cid)

    def _tag_prop_if_open(self, w: O.SetEdgeProperty | O.ClearEdgeProperty) -> O.Payload:
        """A local write to a locally open edge property is a resolution of it (spec 02 §0,
        §1.6), like `_tag_if_open` for fields."""
        if len(self.views.tips("p", w.edge, w.key)) < 2:
            return w
        cid = conflict_id(w.edge, prop_skey(w.key))
        rec = self._conflicts_now().get_raw(cid)
        if rec is None or rec["status"] != "open" or rec["kind"] != "property":
            return w
        return attrs.evolve(w, resolves=sorted(bytes(t[0]) for t in rec["tips"]), conflict=cid)

    def _value(self, f: FieldDef, x: Any) -> list[Any]:
        if isinstance(x, dict) and set(x) == {"ref"}:
            target, key = x["ref"]
            te = self._entity(target)
            tfacet, tfield = values.split_field_key(key)
            tdef = self.views.field_def(tfacet, tfield)
            if tdef is None or tdef.ftype != f.ftype or tdef.crdt:
                raise ValidationError("a reference must point to a discrete field of the same "
                                      "type", field=f.name, ref=key)
            return ["ref", [te, key]]
        v = values.from_user(f.ftype, x, choices=f.choices)
        if v[0] == "blob_ref":
            self._blob_known(bytes(v[1]).hex(), f.name)
        return v

    # --- blob metadata (spec 03 §7) ------------------------------------------------------
    def _blob_known(self, h: str, field: str) -> None:
        """A blob_ref may name a blob this node stored (an upload) or one an attachment
        already describes (synced metadata); anything else is a typo or a stale hash."""
        if blobmod.read_meta(self.views.conn, h) is None and self.blobs.info(h) is None:
            raise blobmod.BlobUnknown(
                f"no file with hash {h} was uploaded here or attached in this workspace; "
                "upload it first (POST /blobs/upload)", field=field, hash=h)

    def _blob_meta(self, payloads: Sequence[O.Payload], seen: set[str] | None = None,
                   ) -> list[O.Payload]:
        """The attaching bundle's `PutConfig("blob", hash, {size, mime, name})` for each blob
        its SetFields reference that has no metadata yet, from this node's record of the
        upload (a blob known nowhere gets none: `_value` refused user input naming one)."""
        out: list[O.Payload] = []
        seen = set() if seen is None else seen
        for p in payloads:
            if not isinstance(p, O.SetField) or p.value[0] != "blob_ref":
                continue
            h = bytes(p.value[1]).hex()
            if h in seen or blobmod.read_meta(self.views.conn, h) is not None:
                continue
            seen.add(h)
            row = self.blobs.info(h)
            if row is not None:
                out.append(O.PutConfig(blobmod.META_NS, h, row.meta()))
        return out

    # --- schema commands ---------------------------------------------------------------------
    def create_table(self, label: str, fields: Sequence[Mapping[str, Any]] = ()) -> Result:
        """A user table `workspace.t_<hex>` with fields `f_<hex>`, shown by their labels."""
        _label(label, "table")
        if any(t.label.lower() == label.lower() for t in self.views.tables()):
            raise ValidationError(f"a table named {label!r} already exists", label=label)
        facet = f"workspace.t_{ids.new_id().hex()}"
        payloads: list[O.Payload] = [O.DefineTable(facet, label)]
        payloads += self._field_defs(facet, fields, set())
        return self._commit("user", payloads, push_undo=False, facet=facet)

    def add_field(self, table: str, label: str, ftype: str, *, crdt_text: bool = False,
                  options: Mapping[str, Any] | None = None) -> Result:
        t = self.views.table(table)
        payloads = self._field_defs(t.facet, [{"label": label, "type": ftype, "crdt": crdt_text,
                                               "options": options}],
                                    {f.label.lower() for f in t.fields})
        return self._commit("user", payloads, push_undo=False, facet=t.facet)

    def _field_defs(self, facet: str, fields: Sequence[Mapping[str, Any]], taken: set[str],
                    ) -> list[O.Payload]:
        out: list[O.Payload] = []
        for spec in fields:
            unknown = set(spec) - {"label", "type", "crdt", "options", "name"}
            if unknown:
                raise ValidationError(f"unknown field keys {sorted(unknown)}")
            label = _label(spec.get("label"), "field")
            if label.lower() in taken:
                raise ValidationError(f"field {label!r} is defined twice", label=label)
            taken.add(label.lower())
            ftype = spec.get("type", "text")
            if ftype not in values.FTYPES:
                raise ValidationError(f"unknown field type {ftype!r}", type=ftype,
                                      allowed=sorted(values.FTYPES))
            name = spec.get("name") or f"f_{os.urandom(8).hex()}"
            opts = dict(spec.get("options") or {})
            if "choices" in opts and ftype != "enum":
                raise ValidationError("only enum fields have choices", field=label)
            if ftype == "enum" and not opts.get("choices"):
                raise ValidationError("an enum field needs choices", field=label)
            out.append(O.DefineField(facet, name, ftype, label, crdt=bool(spec.get("crdt"))
                                     or None, opts=opts or None))
        return out

    def define_edge_type(self, etype: str, label: str, *, ordered: bool = False,
                         props: Mapping[str, str] | None = None) -> Result:
        existing = self.views.edge_type(etype)
        if existing is not None and existing["ordered"] != ordered:
            raise ValidationError(f"edge type {etype!r} already exists with ordered="
                                  f"{existing['ordered']}", type=etype)
        return self._commit("user", [O.DefineEdgeType(etype, ordered, label,
                                                      props=dict(props) if props else None)],
                            push_undo=False)

    # --- record commands ---------------------------------------------------------------------
    def _create_payloads(self, table: TableDef, vals: Mapping[str, Any]
                         ) -> tuple[bytes, list[O.Payload]]:
        ctx = _Ctx()
        e = ids.new_id()
        ctx.created.add(e)
        ctx.attached.add((e, table.facet))
        payloads: list[O.Payload] = [O.CreateEntity(e), O.AttachFacet(e, table.facet)]
        given = {k: v for k, v in vals.items() if v is not None}
        named = {table.field(k).name for k in given}
        for f in table.fields:  # a field's default (module manifests) fills what was not given
            d = f.opts.get("default")
            if d is not None and f.name not in named and not f.crdt:
                given[f.name] = values.to_user(d)
        payloads += self._write_ops(e, table, given, ctx)
        return e, payloads

    def create_record(self, table: str, vals: Mapping[str, Any] | None = None) -> Result:
        t = self.views.table(table)
        e, payloads = self._create_payloads(t, vals or {})
        return self._commit("user", payloads, created=[e])

    def create_records(self, table: str, rows: Sequence[Mapping[str, Any]], *,
                       batch: int = IMPORT_BATCH) -> Result:
        """Bulk import: one bundle per record, many bundles per transaction (kind `import`)."""
        t = self.views.table(table)
        created: list[bytes] = []
        head = self.storage.head_seq()
        blob_seen: set[str] = set()
        for i in range(0, len(rows), batch):
            bundles = []
            events = []
            for vals in rows[i:i + batch]:
                e, payloads = self._create_payloads(t, vals)
                ev = self._fire_rules(payloads, None)
                events.append(ev)
                bundles.append(self._seal("import", [*ev.payloads,
                                                     *self._blob_meta(ev.payloads, blob_seen)]))
                created.append(e)
            head = self.storage.append(bundles).head
            for ev in events:
                self._record_proposals(ev, None)
            self._derive()
        self.undo_stack.redo.clear()
        self._after_canonical()
        return Result(head, None, tuple(created), t.facet)

    def update_record(self, entity: bytes | str, vals: Mapping[str, Any],
                      table: str | None = None) -> Result:
        """Set fields (None clears). Without table, field names are looked up in every table."""
        return self.update_records([(entity, vals, table)])

    def update_records(
        self, updates: Sequence[tuple[bytes | str, Mapping[str, Any], str | None]],
    ) -> Result:
        """Several records' fields in one bundle (a paste is one undo step)."""
        ctx = _Ctx()
        payloads: list[O.Payload] = []
        for entity, vals, table in updates:
            e = self._entity(entity)
            if table is not None:
                payloads += self._write_ops(e, self.views.table(table), vals, ctx)
                continue
            by_table: dict[str, dict[str, Any]] = {}
            tables = self._tables_of(e)
            for ref, x in vals.items():
                owner = _owning_table(tables, ref)
                by_table.setdefault(owner.facet, {})[ref] = x
            for t in tables:
                if t.facet in by_table:
                    payloads += self._write_ops(e, t, by_table[t.facet], ctx)
        if not payloads:
            raise ValidationError("nothing to change")
        return self._commit("user", payloads)

    def add_to_table(self, entity: bytes | str, table: str,
                     vals: Mapping[str, Any] | None = None) -> Result:
        e = self._entity(entity)
        t = self.views.table(table)
        if self._attached(e, t.facet, _Ctx()):
            raise ValidationError(f"record is already in {t.label!r}", table=t.facet)
        ctx = _Ctx()
        ctx.attached.add((e, t.facet))
        payloads: list[O.Payload] = [O.AttachFacet(e, t.facet)]
        payloads += self._write_ops(e, t, vals or {}, ctx)
        return self._commit("user", payloads)

    def delete_record(self, entity: bytes | str, table: str | None = None) -> Result:
        """Remove from a table (DetachFacet), deleting the entity when no table remains.

        Without a table the record is deleted from every table (DeleteEntity)."""
        return self.delete_records([entity], table)

    def delete_records(self, entities: Sequence[bytes | str], table: str | None = None,
                       ) -> Result:
        """Several records in one bundle (one undo step restores them and their links)."""
        payloads: list[O.Payload] = []
        seen: set[bytes] = set()
        t = self.views.table(table) if table is not None else None
        for entity in entities:
            e = self._entity(entity)
            if e in seen:
                continue
            seen.add(e)
            attached = [t.facet for t in self._tables_of(e)]
            if t is not None:
                if t.facet not in attached:
                    raise ValidationError(f"record is not in {t.label!r}", table=t.facet,
                                          entity_id=ids.to_text(e))
                payloads.append(O.DetachFacet(e, t.facet))
                attached.remove(t.facet)
            if t is None or not attached:
                # no table named: the record goes from every table, i.e. the entity is deleted
                payloads.append(O.DeleteEntity(e, self._live_edges_of(e)))
        if not payloads:
            raise ValidationError("nothing to delete")
        return self._commit("user", payloads)

    def delete_entity(self, entity: bytes | str) -> Result:
        e = self._entity(entity)
        return self._commit("user", [O.DeleteEntity(e, self._live_edges_of(e))])

    def edit_text(self, entity: bytes | str, table: str, field: str, index: int, delete: int,
                  insert: str) -> Result:
        """Splice a CRDT text field (concurrent splices merge, never conflict)."""
        e = self._entity(entity)
        t = self.views.table(table)
        f = t.field(field)
        if not f.crdt:
            raise ValidationError(f"{f.label!r} is not a collaborative text field",
                                  field=f.name)
        if not self.views.is_attached(e, t.facet):
            raise ValidationError(f"record is not in {t.label!r}", table=t.facet)
        state = self.views.crdt_state(e, self.proj.slot_of(f.facet, f.name))
        try:
            delta = crdt.delta_for_splice(state, index, delete, insert)
        except ValueError as exc:
            raise ValidationError(str(exc), field=f.name) from exc
        return self._commit("user", [O.SetCRDTField(e, f.facet, f.name, delta)])

    def set_field_raw(self, entity: bytes | str, facet: str, field: str, value: Any) -> Result:
        """SetField with an already-canonical value, refused on CRDT fields (for tests/tools)."""
        e = self._entity(entity)
        f = self.views.field_def(facet, field)
        if f is None:
            raise NotFound(f"no field {facet}.{field}", field=f"{facet}.{field}")
        if f.crdt:
            raise ValidationError("SetField on a CRDT field; edit the text instead",
                                  field=f.name)
        t = self.views.table(facet)
        ctx = _Ctx()
        return self._commit("user", self._write_ops(e, t, {field: values.to_user(value)}, ctx))

    # --- edges -------------------------------------------------------------------------------
    def create_edge(self, etype: str, src: bytes | str, dst: bytes | str, *,
                    props: Mapping[str, Any] | None = None, after: bytes | str | None = None,
                    before: bytes | str | None = None) -> Result:
        et = self.views.edge_type(etype)
        if et is None:
            raise NotFound(f"no edge type {etype!r}", type=etype)
        s, d = self._entity(src), self._entity(dst)
        pvals = self._props(et, props or {})
        edge = ids.new_id()
        if et["ordered"]:
            idx = self._position(d, etype, after, before)
            return self._commit("user", [O.CreateOrderedEdge(edge, etype, s, d, idx,
                                                             props=pvals or None)], created=[edge])
        if after is not None or before is not None:
            raise ValidationError(f"edge type {etype!r} is not ordered", type=etype)
        return self._commit("user", [O.CreateEdge(edge, etype, s, d, props=pvals or None)],
                            created=[edge])

    def _props(self, et: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for k, x in props.items():
            ftype = et["props"].get(k)
            if ftype is None:
                raise ValidationError(f"edge type {et['type']!r} has no property {k!r}",
                                      property=k)
            out[k] = values.from_user(ftype, x)
        return out

    def _position(self, dst: bytes, etype: str, after: bytes | str | None,
                  before: bytes | str | None, moving: bytes | None = None) -> str:
        scope = [(i, g) for i, g in self.views.ordered_scope(dst, etype) if g != moving]
        keys = [i for i, _ in scope]
        edges = [g for _, g in scope]
        if after is None and before is None:
            lo, hi = (keys[-1] if keys else None), None
        elif after is not None:
            a = _as_id(after)
            if a not in edges:
                raise NotFound("the edge to place after is not in this list",
                               edge=ids.to_text(a))
            pos = edges.index(a)
            lo, hi = keys[pos], keys[pos + 1] if pos + 1 < len(keys) else None
        else:
            b = _as_id(before)  # type: ignore[arg-type]
            if b not in edges:
                raise NotFound("the edge to place before is not in this list",
                               edge=ids.to_text(b))
            pos = edges.index(b)
            lo, hi = (keys[pos - 1] if pos > 0 else None), keys[pos]
        if lo is not None and hi is not None and lo >= hi:
            raise ValidationError("this list needs rebalancing first", type=etype)
        return fracindex.key_between(lo, hi, self._rand.randrange)

    def delete_edge(self, edge: bytes | str) -> Result:
        g = _as_id(edge)
        info = self._edge_info(g)
        if info is None or info["deleted"]:
            raise NotFound(f"no live edge {ids.to_text(g)}", edge=ids.to_text(g))
        return self._commit("user", [O.DeleteEdge(g)])

    def reorder_edge(self, edge: bytes | str, *, after: bytes | str | None = None,
                     before: bytes | str | None = None) -> Result:
        """Move an ordered edge; rebalances the list first when its keys grew too long."""
        g = _as_id(edge)
        info = self.views.edge(g)
        if info is None or info["deleted"]:
            raise NotFound(f"no live edge {ids.to_text(g)}", edge=ids.to_text(g))
        if info["index"] is None:
            raise ValidationError("only ordered edges can be reordered", edge=ids.to_text(g))
        scope = self.views.ordered_scope(info["dst"], info["type"])
        if fracindex.needs_rebalance([i for i, _ in scope]):
            self.rebalance(info["dst"], info["type"])
        idx = self._position(info["dst"], info["type"], after, before, moving=g)
        return self._commit("user", [O.MoveOrderedEdge(g, idx)])

    def rebalance(self, dst: bytes, etype: str) -> Result:
        scope = self.views.ordered_scope(dst, etype)
        keys = fracindex.rebalance(len(scope))
        return self._commit("user", [O.RebalanceOrderedEdges(
            dst, etype, [[g, k] for (_, g), k in zip(scope, keys, strict=True)])],
            push_undo=False)

    def set_edge_property(self, edge: bytes | str, key: str, value: Any) -> Result:
        g = _as_id(edge)
        info = self._edge_info(g)
        if info is None or info["deleted"]:
            raise NotFound(f"no live edge {ids.to_text(g)}", edge=ids.to_text(g))
        et = self.views.edge_type(info["type"])
        assert et is not None
        w: O.SetEdgeProperty | O.ClearEdgeProperty
        if value is None:
            if key not in et["props"]:
                raise ValidationError(f"edge type has no property {key!r}", property=key)
            w = O.ClearEdgeProperty(g, key)
        else:
            w = O.SetEdgeProperty(g, key, self._props(et, {key: value})[key])
        if self.overlays.active is None:  # staged writes are tagged when committed
            return self._commit("user", [self._tag_prop_if_open(w)])
        return self._commit("user", [w])

    # --- identity repair, mappings, config ----------------------------------------------------
    def merge(self, a: bytes | str, b: bytes | str) -> Result:
        ea, eb = self._entity(a, canonical=True), self._entity(b, canonical=True)
        if ea == eb:
            raise ValidationError("cannot merge a record with itself")
        return self._commit("user", [O.MergeEntities(min(ea, eb), max(ea, eb))],
                            push_undo=False)

    def split(self, source: bytes | str, tables: Sequence[str]) -> Result:
        e = self._entity(source, canonical=True)
        facets = sorted({self.views.table(t).facet for t in tables})
        attached = set(self.views.attached(e))
        missing = [f for f in facets if f not in attached]
        if missing or not facets:
            raise ValidationError("split needs tables the record is in", tables=missing)
        new = ids.new_id()
        return self._commit("user", [O.SplitEntity(e, new, facets)], push_undo=False,
                            created=[new])

    def _mapping_pair(self, key_a: str, key_b: str) -> tuple[str, str, str, str]:
        a, b = sorted([key_a, key_b])
        if a == b:
            raise ValidationError("a field cannot be mapped to itself")
        fa, na = values.split_field_key(a)
        fb, nb = values.split_field_key(b)
        da, dbf = self.views.field_def(fa, na), self.views.field_def(fb, nb)
        if da is None or dbf is None:
            raise NotFound("both fields must exist", key_a=a, key_b=b)
        if da.ftype != dbf.ftype or da.crdt or dbf.crdt:
            # derivation would make the op inert (spec 01 §5): refuse it instead
            raise modmod.TypeMismatch("mapped fields must have the same type and not be CRDT",
                                      key_a=a, key_b=b, type_a=da.ftype, type_b=dbf.ftype)
        return fa, na, fb, nb

    def confirm_mapping(self, key_a: str, key_b: str) -> Result:
        fa, na, fb, nb = self._mapping_pair(key_a, key_b)
        sa, sb = self.proj.slot_of(fa, na), self.proj.slot_of(fb, nb)
        if sa != sb:  # mapped fields become one slot: automations may now meet through it
            def merged(facet: str, field: str) -> str:
                k = self.proj.slot_of(facet, field)
                return min(sa, sb) if k in (sa, sb) else k
            rs = rulemod.RuleSet(rulemod.read_docs(self.views), self.views, merged,
                                 self._local_automations(merged))
            rulemod.check_cycles(rs.graph())
        return self._commit("user", [O.ConfirmFieldMapping(*self._mapping_pair(key_a, key_b))],
                            push_undo=False)

    def reject_mapping(self, key_a: str, key_b: str) -> Result:
        return self._commit("user", [O.RejectFieldMapping(*self._mapping_pair(key_a, key_b))],
                            push_undo=False)

    def mapping_suggestions(self) -> list[dict[str, Any]]:
        """Field pairs with equal module `shared_key`s still to decide (spec 04 §4)."""
        return modmod.suggestions(self.views)

    # --- modules (spec 04 §4; the package was validated by openprod.engine.manifest) ----------
    def adopt_module(self, pkg: Package) -> Result:
        """One `schema` bundle defining the package's tables, fields and edge types plus its
        `module` config document. The same version again appends nothing (`bundle_id` None);
        a downgrade or a version that is not a pure superset raises SchemaChangeUnsupported."""
        if not modmod.check_adoptable(pkg, self.views):
            return Result(self.storage.head_seq(), None)
        return self._commit("schema", modmod.adoption_payloads(pkg), push_undo=False)

    def put_config(self, ns: str, key: str, value: Any) -> Result:
        return self._commit("user", [O.PutConfig(ns, key, value)], push_undo=False)

    # --- rules (spec 04 §6) ----------------------------------------------------------------
    def rule_set(self) -> rulemod.RuleSet:
        """Every rule document compiled against the current schema (cached on the documents,
        the schema and the mapping slots)."""
        fp = rulemod.docs_fingerprint(self.views)
        c = self._rules_cache
        if c is not None and c[0] == fp and not self.local_automations:
            return c[1]
        rs = rulemod.RuleSet(rulemod.read_docs(self.views) if fp else {}, self.views,
                             external=self._local_automations(self.proj.slot_of))
        if not self.local_automations:  # a set built with them must not outlive them
            self._rules_cache = (fp, rs)
        return rs

    def _local_automations(self, slot_of: Callable[[str, str], str] | None = None,
                           ) -> dict[str, tuple[set[str], set[str]]]:
        if slot_of is None:
            return dict(self.local_automations)
        # keys of local automations are "facet.field" keys or @-keys; re-slot them
        def norm(k: str) -> str:
            if k.startswith("@"):
                return k
            facet, field = values.split_field_key(k)
            return slot_of(facet, field)
        return {n: ({norm(k) for k in w}, {norm(k) for k in x})
                for n, (w, x) in self.local_automations.items()}

    def _rule_base(self, ctx: bytes | None) -> rulemod.StateView:
        """The state a rule event reads: canonical, or canonical + that overlay's staged ops.

        An overlay's is kept from one command to the next while canonical stands still and
        both projections have applied all of it (rows staged since are applied to it: building
        it from every staged row for each command made a script run with active rules
        quadratic); it is only ever read through a Layer on top of it."""
        if ctx is None:
            return rulemod.CanonicalView(rulemod.Schema(self.views))
        store, head = self.overlays, self.storage.head_seq()
        key = (ctx, store.rewrites, head)
        c = self._rule_layer
        if c is not None and c[0] == key:
            layer, n = c[2], c[1]
            for r in store.rows_since(ctx, n):
                layer.apply(r.payload)
        else:
            layer = rulemod.Layer(rulemod.CanonicalView(rulemod.Schema(self.views)),
                                  [r.payload for r in store.rows(ctx)])
        if ctx and self.proj.checkpoint == head and self._conflict_proj.checkpoint == head:
            self._rule_layer = (key, store.count(ctx), layer)
        else:  # a projection behind the oplog may still change under the same head
            self._rule_layer = None
        return layer

    def _fire_rules(self, payloads: Sequence[O.Payload], ctx: bytes | None,
                    ) -> rulemod.EventResult:
        rs = self.rule_set()
        if not rs.active:
            return rulemod.EventResult(list(payloads), [], [], [])
        return rulemod.Evaluation(rs, self._rule_base(ctx), clock=self.rule_clock).run(payloads)

    def _record_proposals(self, event: rulemod.EventResult, ctx: bytes | None) -> None:
        self.proposals.record(ctx, event.flipped,
                              [(p.rule_id, p.entity, p.action) for p in event.proposals])

    def _match_triggers(self, payloads: Sequence[O.Payload], depth: int,
                        ) -> dict[str, list[dict[str, Any]]]:
        """The on-change triggers a local canonical commit of payloads fires (read before the
        append: the states before and after it)."""
        if not self.triggers or depth > trigmod.MAX_DEPTH:
            return {}
        before = rulemod.Layer(self._rule_base(None))
        after = rulemod.Layer(before.base, payloads)
        return trigmod.match(self.triggers, payloads, before, after)

    def _queue_fired(self, fired: Mapping[str, list[dict[str, Any]]], depth: int,
                     bundle_id: bytes) -> None:
        for script, changes in fired.items():
            self.fired.append((script, changes, depth, bundle_id))

    def take_fired(self) -> list[tuple[str, list[dict[str, Any]], int, bytes]]:
        out, self.fired = self.fired, []
        return out

    def list_rules(self) -> list[dict[str, Any]]:
        """Every rule document with its status: active, disabled, dormant (a table it names
        does not exist here yet), suspended (in a cycle that arrived by sync) or invalid."""
        out = []
        for info in self.rule_set().infos.values():
            out.append({"id": info.id, **info.doc, "status": info.status,
                        "reason": info.reason})
        return out

    def get_rule(self, rid: str) -> dict[str, Any]:
        for r in self.list_rules():
            if r["id"] == rid:
                return r
        raise rulemod.RuleNotFound(f"no rule {rid!r}", rule_id=rid)

    def put_rule(self, rid: str | None, doc: Mapping[str, Any], *,
                 apply_existing: bool = False) -> tuple[str, Result]:
        """Create or replace a rule document (LWW). Enabling checks the automation graph for
        cycles first; `apply_existing` then adds every current match in one more bundle."""
        rid = rid or rulemod.new_rule_id()
        norm = rulemod.normalize(rid, doc, self.views)
        compiled: rulemod.Rule | rulemod.Dormant | None = None
        if norm["enabled"]:
            compiled = rulemod.compile_rule(rid, norm, self.views, self.proj.slot_of)
            if isinstance(compiled, rulemod.Rule):
                rulemod.check_cycles(self.rule_set().graph(extra=compiled), rid)
        res = self._commit("user", [O.PutConfig(rulemod.RULE_NS, rid, norm)], push_undo=False)
        if not norm["enabled"]:
            self.proposals.drop_rule(rid)
        if apply_existing and isinstance(compiled, rulemod.Rule):
            # the compiled rule, not the rule set: under the node's writer the projection
            # does not show the document just written until the command is over
            applied = self.apply_rule(rid, compiled)
            if applied.bundle_id is not None or applied.staged:
                res = applied
        return rid, res

    def delete_rule(self, rid: str) -> Result:
        if rid not in rulemod.read_docs(self.views):
            raise rulemod.RuleNotFound(f"no rule {rid!r}", rule_id=rid)
        res = self._commit("user", [O.DeleteConfig(rulemod.RULE_NS, rid)], push_undo=False)
        self.proposals.drop_rule(rid)
        return res

    # --- workspace scripts (spec 04 §7.1) ------------------------------------------------------

    def put_script(self, sid: str | None, doc: Mapping[str, Any]) -> tuple[str, Result]:
        """Create or replace a workspace script document (LWW, like rules; not an undo step)."""
        sid = wsscripts.check_id(sid) if sid is not None else wsscripts.new_script_id()
        norm = wsscripts.normalize(doc)
        return sid, self._commit("user", [O.PutConfig(wsscripts.SCRIPT_NS, sid, norm)],
                                 push_undo=False)

    def delete_script(self, sid: str) -> Result:
        sid = wsscripts.check_id(sid)
        if sid not in wsscripts.read_docs(self.views):
            raise NotFound(f"no workspace script {sid!r}", script=sid)
        return self._commit("user", [O.DeleteConfig(wsscripts.SCRIPT_NS, sid)], push_undo=False)

    def apply_rule(self, rid: str, rule: rulemod.Rule | None = None) -> Result:
        """"Apply to existing": attach every current match not yet in the target, in one
        bundle (itself a triggering event), in the current context."""
        if rule is None:
            info = self.rule_set().infos.get(rid)
            if info is None:
                raise rulemod.RuleNotFound(f"no rule {rid!r}", rule_id=rid)
            if info.rule is None or info.status != "active":
                raise ValidationError(f"rule {rid!r} is {info.status}, not active",
                                      rule_id=rid, status=info.status)
            rule = info.rule
        view = rulemod.Layer(self._rule_base(self.overlays.active))
        members = self.list_records(rule.source)
        payloads: list[O.Payload] = []
        for rec in members:
            e = ids.from_text(rec["id"])
            if rulemod.matches(rule, e, view) and not view.is_member(e, rule.target):
                gen = rulemod.attach_ops(rule, e, view)
                for p in gen:
                    view.apply(p)
                payloads += gen
        if not payloads:
            return Result(self.storage.head_seq(), None)
        return self._commit("user", payloads)

    def _proposal_live(self, p: propmod.StoredProposal, rs: rulemod.RuleSet) -> bool:
        """Whether a proposal still asks something: its rule is active and, in its context,
        attach: the condition holds and the record is not in the target; detach: the
        condition fails and it is."""
        info = rs.infos.get(p.rule_id)
        if info is None or info.rule is None or info.status != "active":
            return False
        if p.context is not None and p.context not in self.overlays.overlay_ids():
            return False
        view = rulemod.Layer(self._rule_base(p.context))
        m = rulemod.matches(info.rule, p.entity, view)
        inside = view.is_member(p.entity, info.rule.target)
        return (m and not inside) if p.action == "attach" else (not m and inside)

    def list_proposals(self) -> list[dict[str, Any]]:
        """Open proposals still valid in their context, with what a person needs to decide."""
        rs = self.rule_set()
        out = []
        for p in self.proposals.all("open"):
            if not self._proposal_live(p, rs):
                continue
            rule = rs.infos[p.rule_id]
            assert rule.rule is not None
            d = p.to_json()
            d["rule_label"] = rule.doc.get("label", rule.id)
            d["source"], d["target"] = rule.rule.source, rule.rule.target
            d["target_label"] = self.views.table(rule.rule.target).label
            d["title"] = self._title_of(p.entity, rule.rule.source, p.context)
            out.append(d)
        return out

    def _title_of(self, e: bytes, facet: str, ctx: bytes | None) -> str:
        t = self.views.table(facet)
        view = rulemod.Layer(self._rule_base(ctx))
        vals = view.field_values(e, facet)
        for f in t.fields:
            v = vals.get(f.name)
            if f.ftype == "text" and isinstance(v, str) and v:
                return v
        return ids.to_text(e)

    def accept_proposal(self, pid: bytes | str) -> Result:
        """Re-check the condition, then one bundle (or overlay step) in the proposal's context:
        attach + `set` writes, or the removal. A new triggering event of its own."""
        p = self.proposals.get(_as_id(pid))
        rs = self.rule_set()
        if not self._proposal_live(p, rs):
            self.proposals.delete([p.id])
            raise propmod.ProposalStale("this proposal no longer applies; it was removed",
                                        proposal_id=ids.to_text(p.id))
        rule = rs.infos[p.rule_id].rule
        assert rule is not None
        view = rulemod.Layer(self._rule_base(p.context))
        gen = (rulemod.attach_ops(rule, p.entity, view) if p.action == "attach"
               else rulemod.detach_ops(rule, p.entity, view))
        ev = self._fire_rules(gen, p.context)  # may raise RuleLimitExceeded: keep p then
        if p.context is None:
            res = self._commit("user", ev.payloads, fired=ev)
        else:
            res = self._stage(p.context, ev.payloads, (), None)
            self._record_proposals(ev, p.context)
        self.proposals.delete([p.id])  # answered only once its change is written or staged
        return res

    def dismiss_proposal(self, pid: bytes | str) -> None:
        """Hide a proposal until its condition flips."""
        self.proposals.dismiss(_as_id(pid))

    # --- workspace lifecycle: join mode, access keys, admits, recovery (spec 03 §2) ----------
    def lifecycle(self) -> lcmod.Lifecycle:
        return lcmod.read(self.proj.conn, self.ws)

    def _owner_only(self, what: str) -> lcmod.Lifecycle:
        lc = self.lifecycle()
        if lc.owner != self.actor:  # the entry would be inert: refuse to author it
            raise Forbidden(f"only the workspace owner can {what}",
                            owner=lc.owner.hex() if lc.owner else None)
        return lc

    def set_join_mode(self, mode: str) -> Result:
        if mode == "request":
            raise ValidationError("the request join mode is not available in this version")
        if mode not in ("open", "key"):
            raise ValidationError("join mode must be open or key", field="mode")
        self._owner_only("change how people join")
        return self.put_config("workspace", "join_mode", mode)

    def create_access_key(self, *, expires_ms: int | None = None,
                          max_uses: int | None = None) -> tuple[str, str, Result]:
        """A new 6-character access code; returns (key_id, code, result)."""
        self._owner_only("create access keys")
        if expires_ms is not None and (type(expires_ms) is not int or expires_ms <= 0):
            raise ValidationError("expires_ms must be a positive time in ms", field="expires_ms")
        if max_uses is not None and (type(max_uses) is not int or max_uses < 1):
            raise ValidationError("max_uses must be at least 1", field="max_uses")
        kid, code = ids.to_text(ids.new_id()), lcmod.new_code()
        value: dict[str, Any] = {"code": code}
        if expires_ms is not None:
            value["expires_ms"] = expires_ms
        if max_uses is not None:
            value["max_uses"] = max_uses
        return kid, code, self.put_config("access_key", kid, value)

    def revoke_access_key(self, key_id: str) -> Result:
        lc = self._owner_only("revoke access keys")
        if key_id not in lc.keys or key_id in lc.revoked:
            raise NotFound(f"no live access key {key_id!r}", key_id=key_id)
        return self._commit("user", [O.DeleteConfig("access_key", key_id)], push_undo=False)

    def admit_joiner(self, joiner: bytes, key_id: str) -> Result:
        """Record that a joiner proved an access code (committed before its `clock`)."""
        return self.put_config("admit", joiner.hex(), {"key_id": key_id})

    def recover_ownership(self, secret: bytes) -> tuple[bytes, Result]:
        """Become owner with the current recovery secret; returns the new secret (show once)."""
        lc = self.lifecycle()
        old = lcmod.recovery_identity(secret)
        if lc.recovery_pub is None or old.actor != lc.recovery_pub:
            raise ValidationError("this is not the workspace's current recovery key")
        new_secret = lcmod.new_recovery_secret()
        new_pub = lcmod.recovery_identity(new_secret).actor
        sig = old.sign(lcmod.recovery_message(self.ws, self.actor, new_pub))
        r = self._commit("user", [O.RecoverOwnership(self.actor, new_pub, sig)],
                         push_undo=False)
        return new_secret, r

    # --- conflicts ---------------------------------------------------------------------------
    def resolve_field(self, entity: bytes | str, table: str, field: str, value: Any) -> Result:
        """Resolve the open conflict on one field: one `resolution` bundle with one write.

        The write (SetField, or ClearField for None) carries `resolves` = the sorted op ids of
        the current tips and `conflict` = the conflict_id (spec 02 §1.6, §1.8). Not undoable
        (never pushed on the undo stack); like any new local command it clears redo.
        """
        e = self._entity(entity, canonical=True)
        t = self.views.table(table)
        f = t.field(field)
        slot = self.proj.slot_of(f.facet, f.name)
        cid = conflict_id(e, slot)
        rec = None if f.crdt else self._conflicts_now().get_raw(cid)
        if rec is None or rec["status"] != "open":
            raise NotFound(f"field {f.label!r} of record {ids.to_text(e)} has no open conflict",
                           entity_id=ids.to_text(e), field=f.name)
        return self._resolution_write(e, t, f.name, value, sorted(tip[0] for tip in rec["tips"]),
                                      cid)

    def list_conflicts(self, status: str = "open") -> list[dict[str, Any]]:
        """Conflict records (spec 02 §1.8) as JSON-able dicts; status "open" or "all"."""
        return self._conflicts_now().list_conflicts(status)

    def get_conflict(self, conflict: bytes | str) -> dict[str, Any]:
        rec = self._conflicts_now().get(_as_id(conflict))
        if rec is None:
            raise ConflictNotFound(f"no conflict {conflict!r}", conflict_id=str(conflict))
        return rec

    def resolve_conflict(self, conflict: bytes | str, value: Any = None, *,
                         choice: str | None = None,
                         expected_tips: Sequence[bytes | str] | None = None) -> Result:
        """Resolve an open conflict (spec 02 §1.6, §1.9): one `resolution` bundle.

        Field conflicts: one tagged write of `value` (None clears). Delete conflicts: `choice`
        "restore" (tagged RestoreEntity + RestoreEdge for the delete's cascade edges whose other
        end is live) or "keep_deleted" (tagged DeleteEntity with a fresh cascade).
        """
        cid = _as_id(conflict)
        text = ids.to_text(cid)
        rec = self._conflicts_now().get_raw(cid)
        if rec is None:
            raise ConflictNotFound(f"no conflict {text}", conflict_id=text)
        if rec["status"] != "open":
            raise ConflictAlreadyResolved(f"conflict {text} is already resolved",
                                          conflict_id=text)
        tips = sorted(bytes(t[0]) for t in rec["tips"])
        if expected_tips is not None and sorted(raw_ids(expected_tips)) != tips:
            raise StaleConflictState(f"conflict {text} changed since it was read",
                                     conflict_id=text, tips=[ids.to_text(t) for t in tips])
        e = bytes(rec["entity"])
        if rec["kind"] == "delete":
            return self._resolve_delete(cid, e, rec, tips, choice)
        if choice is not None:
            raise ValidationError("choice applies to delete conflicts only", choice=choice)
        skey = rec["skey"]
        if rec["kind"] == "property":
            return self._resolve_property(cid, e, skey, value, tips)
        e = self._entity(e, canonical=True)
        members = sorted({skey} | {k for k, s in self.proj.slots.items() if s == skey})
        for key in members:
            facet, name = values.split_field_key(key)
            if self.views.is_attached(e, facet):
                return self._resolution_write(e, self.views.table(facet), name, value, tips,
                                              cid)
        raise ValidationError(f"record {ids.to_text(e)} is in no table with field {skey}",
                              entity_id=ids.to_text(e), field=skey)

    def _resolution_write(self, e: bytes, t: TableDef, name: str, value: Any,
                          tips: list[bytes], cid: bytes) -> Result:
        ctx = _Ctx()
        ctx.canonical = True
        (write,) = self._write_ops(e, t, {name: value}, ctx)
        assert isinstance(write, O.SetField | O.ClearField)
        tagged = attrs.evolve(write, resolves=tips, conflict=cid)
        return self._commit("resolution", [tagged], push_undo=False)

    def _resolve_property(self, cid: bytes, g: bytes, skey: str, value: Any,
                          tips: list[bytes]) -> Result:
        """One tagged SetEdgeProperty (value checked against the edge type's declared property
        type) or ClearEdgeProperty (value None) on the live edge `g`."""
        assert is_prop_skey(skey)
        key = skey[1:]
        info = self.views.edge(g)
        if info is None or info["deleted"]:
            raise NotFound(f"no live edge {ids.to_text(g)}", edge=ids.to_text(g))
        et = self.views.edge_type(info["type"])
        if et is None or key not in et["props"]:
            raise ValidationError(f"edge type has no property {key!r}", property=key)
        w: O.Payload
        if value is None:
            w = O.ClearEdgeProperty(g, key, resolves=tips, conflict=cid)
        else:
            w = O.SetEdgeProperty(g, key, self._props(et, {key: value})[key], resolves=tips,
                                  conflict=cid)
        return self._commit("resolution", [w], push_undo=False)

    def _resolve_delete(self, cid: bytes, e: bytes, rec: Mapping[str, Any], tips: list[bytes],
                        choice: str | None) -> Result:
        if choice not in ("restore", "keep_deleted"):
            raise ValidationError("a delete conflict needs choice 'restore' or 'keep_deleted'",
                                  choice=choice)
        payloads: list[O.Payload]
        if choice == "keep_deleted":
            payloads = [O.DeleteEntity(e, self.views.live_edges_of(e), resolves=tips,
                                       conflict=cid)]
            return self._commit("resolution", payloads, push_undo=False)
        payloads = [O.RestoreEntity(e, resolves=tips, conflict=cid)]
        cascade: set[bytes] = set()
        for tip in rec["tips"]:
            if tip[6] == "DeleteEntity":
                for (body,) in self.proj.conn.execute(
                    "SELECT body FROM ops WHERE op_id = ?", (bytes(tip[0]),)
                ):
                    cascade.update(bytes(g) for g in codec.decode(bytes(body))["p"]["cascade"])
        for g in sorted(cascade):
            info = self.views.edge(g)
            if info is None or not info["deleted"]:
                continue
            other = info["dst"] if info["src"] == e else info["src"]
            if other == e or self.views.is_live(other):
                payloads.append(O.RestoreEdge(g))
        return self._commit("resolution", payloads, push_undo=False)

    # --- undo / redo -------------------------------------------------------------------------
    def undo(self) -> undomod.UndoResult:
        oid = self.overlays.active
        if oid is not None:  # an active overlay's undo: canonical untouched (spec 02 §2.9)
            return self._overlay_undo_result(oid, self.overlays.undo_step(oid))
        st = self.undo_stack
        while st.undo:
            entry = st.undo.pop()
            skipped = undomod.skip_check(self.views, self.actor, entry.hlc, entry.causal_vc,
                                      entry.ops)
            if skipped:
                return self._undo_result("skipped", skipped=skipped)
            inv, not_restored = undomod.inverse(self.views, entry)
            if not inv:
                continue
            bundle = self._seal("undo", inv, {"undoes": entry.bundle_id})
            head = self.storage.append([bundle]).head
            self._derive()
            self._after_canonical()
            st.redo.append(undomod.RedoEntry(entry, bundle.bundle_id, bundle.hlc,
                                          bundle.causal_vc, tuple(inv)))
            return self._undo_result("applied", bundle.bundle_id, not_restored=not_restored,
                                     seq=head)
        return self._undo_result("empty")

    def redo(self) -> undomod.UndoResult:
        oid = self.overlays.active
        if oid is not None:
            done = self.overlays.redo_step(oid)
            if done:
                self.check_drift()
            return self._overlay_undo_result(oid, done)
        st = self.undo_stack
        if not st.redo:
            return self._undo_result("empty")
        r = st.redo.pop()
        skipped = undomod.skip_check(self.views, self.actor, r.undo_hlc, r.undo_vc, r.undo_ops)
        if skipped:
            return self._undo_result("skipped", skipped=skipped)
        payloads = undomod.redo_ops(self.views, r.original)
        pre = undomod.preimage(self.views, payloads)
        bundle = self._seal("redo", payloads, {"redoes": r.original.bundle_id})
        head = self.storage.append([bundle]).head
        self._derive()
        self._after_canonical()
        st.push(undomod.Entry(bundle.bundle_id, bundle.hlc, bundle.causal_vc, tuple(payloads),
                           pre))
        return self._undo_result("applied", bundle.bundle_id, seq=head)

    def _overlay_undo_result(self, oid: bytes, done: bool) -> undomod.UndoResult:
        return undomod.UndoResult("applied" if done else "empty",
                                  can_undo=bool(self.overlays.undo.get(oid)),
                                  can_redo=bool(self.overlays.redo.get(oid)))

    def _undo_result(self, status: str, bundle_id: bytes | None = None, *,
                     skipped: list[dict[str, Any]] | None = None,
                     not_restored: list[bytes] | None = None, seq: int | None = None,
                     ) -> undomod.UndoResult:
        return undomod.UndoResult(
            status, bundle_id, skipped or [], not_restored or [],
            can_undo=bool(self.undo_stack.undo), can_redo=bool(self.undo_stack.redo), seq=seq,
        )

    # --- overlays (spec 02 §2) ---------------------------------------------------------------
    # Routing: while an overlay is active, record/field/facet/edge commands (bundle kind "user"
    # whose ops are all stageable) are validated against canonical + the overlay and staged.
    # Schema, mapping, merge/split, config, rebalance, bulk import, resolve_conflict and the
    # canonical undo/redo are never staged: they go straight to canonical. CRDT text edits are
    # refused while an overlay is active (an overlay has no text CRDT state of its own).
    def _ov_state(self) -> ovmod.OverlayState | None:
        """The active overlay's staged state (kept up to date by the store), or None."""
        oid = self.overlays.active
        if oid is None:
            return None
        return self.overlays.state(oid)

    def _tables_of(self, e: bytes) -> list[TableDef]:
        ov = self._ov_state()
        if ov is None:
            return self.views.tables_of(e)
        att = set() if e in ov.created else set(self.views.attached(e))
        for f, a in ov.staged_facets(e).items():
            if a:
                att.add(f)
            else:
                att.discard(f)
        return [t for t in self.views.tables() if t.facet in att]

    def _live_edges_of(self, e: bytes) -> list[bytes]:
        ov = self._ov_state()
        out = set() if ov is not None and e in ov.created else set(self.views.live_edges_of(e))
        if ov is not None:
            out |= {g for g, p in ov.edges_created.items() if e in _ends(p)}
            out -= ov.edges_deleted
        return sorted(out)

    def _edge_info(self, g: bytes) -> dict[str, Any] | None:
        ov = self._ov_state()
        info = self.views.edge(g)
        if ov is None:
            return info
        p = ov.edges_created.get(g)
        if p is not None:
            src, dst = _ends(p)
            info = {"edge": g, "type": getattr(p, "type", None), "src": src, "dst": dst,
                    "deleted": False, "index": getattr(p, "index", None)}
        if info is not None and g in ov.edges_deleted:
            info = {**info, "deleted": True}
        return info

    def _register(self, e: bytes, slot: str) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The canonical register of a field: (winning op id, value CBOR, sorted tips CBOR if
        several tips)."""
        op_id = value = None
        for v, stamp in self.proj.conn.execute(
            "SELECT value, stamp FROM fields WHERE entity = ? AND slot = ?", (e, slot)
        ):
            op_id = bytes(stamp)[12:]
            value = bytes(v) if v is not None else None
        tips = self.views.stored_tips("f", e, slot)  # none: at most the register's own
        tb = codec.encode(sorted(bytes(t[0]) for t in tips)) if tips and len(tips) > 1 else None
        return op_id, value, tb

    def _latest_op(self, x: bytes) -> bytes | None:
        for (o,) in self.proj.conn.execute(
            "SELECT op_id FROM ops WHERE entity = ? ORDER BY hlc DESC, op_id DESC LIMIT 1", (x,)
        ):
            return bytes(o)
        return None

    def _stage(self, oid: bytes, payloads: Sequence[O.Payload], created: tuple[bytes, ...],
               facet: str | None) -> Result:
        """Stage one command's ops into the overlay (one overlay undo step)."""
        if any(p.t == "SetCRDTField" for p in payloads):
            raise ValidationError("collaborative text fields cannot be edited in an overlay; "
                                  "stash it first")
        store = self.overlays
        # the first staged write of a field holds its base; earlier commands' from the store's
        # index (kept as rows are appended), this command's own here
        first = store.state(oid).first_writes
        mine: dict[tuple[bytes, str], ovmod.Row] = {}
        step, seq = store.new_step(), store.next_seq(oid)
        rows: list[ovmod.Row] = []
        for p in payloads:
            if isinstance(p, O.SetField | O.ClearField) and (
                    p.resolves is not None or p.conflict is not None):
                p = attrs.evolve(p, resolves=None, conflict=None)  # tagged again at commit
            p.check()
            e = O.target_of(p.t, p.to_wire())
            skey: str | None = None
            bop = bval = btips = None
            if isinstance(p, O.SetField | O.ClearField):
                skey = self.proj.slot_of(p.facet, p.field)
                prev = first.get((p.e, skey)) or mine.get((p.e, skey))
                if prev is not None:
                    bop, bval, btips = prev.base_op_id, prev.base_value, prev.base_tips
                else:
                    bop, bval, btips = self._register(p.e, skey)
            elif e is not None:
                bop = self._latest_op(e)
            row = ovmod.Row(oid, seq, ids.new_id(), p, e, skey, bop, bval, btips, False, None,
                            step)
            if skey is not None and e is not None:
                mine.setdefault((e, skey), row)
            rows.append(row)
            seq += 1
        store.insert(rows)
        return Result(self.storage.head_seq(), None, created, facet, staged=True)

    def _after_canonical(self) -> None:
        """After a canonical change: re-check drift, only when some overlay stages ops.

        derive=False: the projections have not applied the change yet; the runtime's
        OverlayManager re-checks drift (through the writer) once they have."""
        if not self.derive:
            self.overlay_events = []
        elif self.overlays.has_rows():
            self.check_drift()
        else:
            self.overlay_events = []

    def _apply_staged(self, e: bytes, t: TableDef, vals: dict[str, Any],
                      ov: ovmod.OverlayState) -> tuple[list[str], list[str]]:
        staged: list[str] = []
        drifted: list[str] = []
        for f in t.fields:
            slot = self.proj.slot_of(f.facet, f.name)
            r = ov.writes.get((e, slot))
            if r is None:
                continue
            p = r.payload
            vals[f.name] = _read(self.views, p.value) if isinstance(p, O.SetField) else None
            staged.append(f.name)
            if (e, slot) in ov.drifted:
                drifted.append(f.name)
        return staged, drifted

    @contextlib.contextmanager
    def staging_into(self, oid: bytes) -> Iterator[None]:
        """Commands inside stage into overlay `oid` and read canonical + it, as if it were the
        active overlay, without changing which overlay the user has active (script runs)."""
        if not self.overlays.exists(oid):
            self.overlays.get(oid)  # raises OverlayNotFound
        prev = self.overlays.override
        self.overlays.override = oid
        try:
            yield
        finally:
            self.overlays.override = prev

    def create_overlay(self, name: str) -> bytes:
        """A new user overlay, made active (the current one is stashed)."""
        return self.overlays.create(name)

    def activate_overlay(self, oid: bytes | str) -> None:
        self.overlays.activate(_as_id(oid))

    def stash_overlay(self, oid: bytes | str) -> None:
        self.overlays.stash(_as_id(oid))

    def discard_overlay(self, oid: bytes | str) -> None:
        """Delete an overlay and its staged ops; no oplog write, not undoable."""
        o = _as_id(oid)
        self.overlays.discard(o)
        self.proposals.drop_context(o)

    def list_overlays(self) -> list[dict[str, Any]]:
        return self.overlays.list_all()

    @property
    def active_overlay(self) -> bytes | None:
        return self.overlays.active

    def overlay_changes(self, oid: bytes | str) -> list[dict[str, Any]]:
        """The staged ops of an overlay, in staging order."""
        o = _as_id(oid)
        self.overlays.get(o)
        return [{"local_op_id": r.local_op_id, "seq": r.seq, "t": r.payload.t,
                 "entity_id": r.entity_id, "field": r.skey, "drifted": r.drifted,
                 "drift_kind": r.drift_kind, "payload": r.payload}
                for r in self.overlays.rows(o)]

    def knockout(self, oid: bytes | str, local_op_id: bytes | str) -> list[bytes]:
        return self.overlays.knockout(_as_id(oid), _as_id(local_op_id))

    def knockout_field(self, oid: bytes | str, entity: bytes | str, field: str) -> list[bytes]:
        o, e = _as_id(oid), _as_id(entity)
        self.overlays.get(o)
        keys = {r.skey for r in self.overlays.rows(o) if r.entity_id == e
                and r.skey is not None and _field_matches(r.skey, field)}
        return self.overlays.knockout_field(o, e, keys)

    # --- drift (spec 02 §2.6) ----------------------------------------------------------------
    def check_drift(self) -> list[dict[str, Any]]:
        """Re-evaluate drift for every overlay; return (and keep in `overlay_events`) one
        `overlay_drift` event per overlay with newly drifted fields."""
        events = []
        for oid in self.overlays.overlay_ids():
            new = self._drift_of(oid)
            if new:
                events.append({"type": "overlay_drift", "overlay_id": oid, "fields": new})
        self.overlay_events = events
        return events

    def _drift_of(self, oid: bytes) -> list[dict[str, Any]]:
        store = self.overlays
        rows = store.rows(oid)
        created = {x for r in rows for x in ovmod._creates(r.payload)}
        found: dict[tuple[bytes, str], str] = {}  # (entity, skey or "$entity") -> kind
        for r in rows:
            if r.drifted or r.entity_id is None:
                continue
            p = r.payload
            kind: str | None = None
            if isinstance(p, O.DeleteEntity):
                if p.e not in created and self._latest_op(p.e) != r.base_op_id:
                    kind = "edited"
                key = (p.e, "$entity")
            else:
                key = (r.entity_id, r.skey or "$entity")
                if r.drift_kind != ovmod.KEPT_DELETED and not isinstance(p, O.RestoreEntity):
                    for x in ovmod.touched_entities(p) - created:
                        row = self.views.entity_row(x)
                        if row is not None and (row[0] or row[2] is not None):
                            kind, key = "deleted", (x, "$entity")
                            break
                if kind is None and r.skey is not None and r.entity_id not in created:
                    _op, val, tips = self._register(r.entity_id, r.skey)
                    if tips is not None and tips != r.base_tips and self._is_open(
                            r.entity_id, r.skey):
                        kind = "conflict"
                    elif val != r.base_value:
                        kind = "value"
            if kind is not None:
                found.setdefault(key, kind)
        if not found:
            return []
        for (x, k), kind in found.items():
            hit = [r.local_op_id for r in rows if not r.drifted and (
                (k == "$entity" and x in ovmod._touches(r.payload)) or
                (r.entity_id == x and r.skey == k))]
            store.mark_drift(oid, hit, kind)
        return [rec for rec in self.list_drift(oid) if (_as_id(rec["entity_id"]),
                rec["field_key"]) in found]

    def _is_open(self, e: bytes, slot: str) -> bool:
        rec = self._conflicts_now().get_raw(conflict_id(e, slot))
        return rec is not None and rec["status"] == "open"

    def list_drift(self, oid: bytes | str) -> list[dict[str, Any]]:
        """The drifted fields of an overlay: {entity_id, field, field_key, overlay_value,
        canonical_value, kind}; field "$entity" for a drift of the whole entity."""
        o = _as_id(oid)
        self.overlays.get(o)
        out: dict[tuple[bytes, str], dict[str, Any]] = {}
        for r in self.overlays.rows(o):
            if not r.drifted or r.entity_id is None:
                continue
            if r.drift_kind in ("deleted", "edited"):
                targets = ovmod.touched_entities(r.payload)
                e = next((x for x in sorted(targets) if not self.views.is_live(x)), r.entity_id)
                if r.drift_kind == "edited":
                    e = r.entity_id
                out.setdefault((e, "$entity"), {
                    "entity_id": ids.to_text(e), "field": "$entity", "field_key": "$entity",
                    "overlay_value": None, "canonical_value": None, "kind": r.drift_kind})
                continue
            assert r.skey is not None
            p = r.payload
            _op, val, _tips = self._register(r.entity_id, r.skey)
            facet, fname = values.split_field_key(r.skey)
            fdef = self.views.field_def(facet, fname)
            out[(r.entity_id, r.skey)] = {  # later staged writes overwrite: the shown value
                "entity_id": ids.to_text(r.entity_id), "field": fname,
                "field_key": r.skey, "field_label": fdef.label if fdef else fname,
                "overlay_value": _read(self.views, p.value) if isinstance(p, O.SetField)
                else None,
                "canonical_value": _read(self.views, codec.decode(val)) if val is not None
                else None,
                "kind": r.drift_kind, **self._last_writer(r.entity_id, r.skey)}
        return list(out.values())

    def _last_writer(self, e: bytes, slot: str) -> dict[str, Any]:
        """Who last changed a field and when (spec 05 J12: "Changed … by Alex at 14:05")."""
        for stamp, actor in self.proj.conn.execute(
            "SELECT stamp, actor FROM fields WHERE entity = ? AND slot = ?", (e, slot)
        ):
            actor = bytes(actor)
            return {"actor": actor.hex(), "actor_name": self.views.actor_name(actor),
                    "at_ms": hlcmod.wall_ms(bytes(stamp)[:12])}
        return {}

    def resolve_drift(self, oid: bytes | str, entity: bytes | str, field: str,
                      choice: str) -> None:
        """keep_mine: base := current canonical (a `deleted` entity is restored by the commit);
        use_canonical: knock out the staged writes to the field (`deleted`/`edited`: every
        staged op touching the entity)."""
        if choice not in ("keep_mine", "use_canonical"):
            raise ValidationError("choice must be keep_mine or use_canonical", choice=choice)
        o, e = _as_id(oid), _as_id(entity)
        store = self.overlays
        store.get(o)
        rows = [r for r in store.rows(o) if r.drifted]
        whole = [r for r in rows if r.drift_kind in ("deleted", "edited")
                 and e in ovmod._touches(r.payload)]
        if whole and (field == "$entity" or not any(
                r.skey is not None and _field_matches(r.skey, field) for r in rows
                if r.entity_id == e and r.drift_kind not in ("deleted", "edited"))):
            if choice == "use_canonical":
                store.knockout_entity(o, e)
            elif whole[0].drift_kind == "deleted":
                for r in whole:
                    store.update_base(o, [r.local_op_id], base_op_id=r.base_op_id,
                                      base_value=r.base_value, base_tips=r.base_tips,
                                      drift_kind=ovmod.KEPT_DELETED)
            else:
                store.update_base(o, [r.local_op_id for r in whole],
                                  base_op_id=self._latest_op(e), base_value=None,
                                  base_tips=None, drift_kind=None)
            return
        hit = [r for r in rows if r.entity_id == e and r.skey is not None
               and _field_matches(r.skey, field)]
        if not hit:
            raise NotFound(f"field {field!r} of record {ids.to_text(e)} has not drifted",
                           entity_id=ids.to_text(e), field=field)
        keys = {r.skey for r in hit if r.skey is not None}
        if choice == "use_canonical":
            store.knockout_field(o, e, keys)
            return
        for k in keys:
            op_id, val, tips = self._register(e, k)
            store.update_base(o, [r.local_op_id for r in hit if r.skey == k], base_op_id=op_id,
                              base_value=val, base_tips=tips, drift_kind=None)

    # --- commit (spec 02 §2.7) -----------------------------------------------------------------
    def commit_overlay(self, oid: bytes | str) -> bytes | None:
        """Commit an overlay (active or stashed) as one bundle; None if it staged nothing."""
        o = _as_id(oid)
        store = self.overlays
        info = store.get(o)
        self.check_drift()
        drift = self.list_drift(o)
        if drift:
            raise ovmod.UnresolvedDriftError(
                f"overlay {info['name']!r} has {len(drift)} drifted field(s)", drift)
        rows = store.rows(o)
        last: dict[tuple[bytes | None, str], int] = {}
        for r in rows:
            if r.skey is not None:
                last[(r.entity_id, r.skey)] = r.seq
        kept = [r for r in rows if r.skey is None or last[(r.entity_id, r.skey)] == r.seq]
        if not kept:
            store.drop(o)
            return None
        restore = sorted({r.entity_id for r in rows if r.drift_kind == ovmod.KEPT_DELETED
                          and r.entity_id is not None})
        restore = [x for x in {y for r in rows if r.drift_kind == ovmod.KEPT_DELETED
                               for y in ovmod.touched_entities(r.payload)} | set(restore)
                   if (row := self.views.entity_row(x)) is not None and row[0]]
        payloads = self._commit_payloads(sorted(restore), [r.payload for r in kept])
        payloads += self._blob_meta(payloads)
        source = info["source"]
        kind = {"script": "script", "import": "import"}.get(source[0], "overlay_commit")
        pre = undomod.preimage(self.views, payloads)
        meta: dict[str, Any] = {"source": source, "name": info["name"]}
        if kind == "script" and "script" in info["meta"]:
            meta["script"] = info["meta"]["script"]  # spec 04 §7.1 step 4
        bundle = self._seal(kind, payloads, meta)
        depth = int(info["meta"].get("depth", 0)) + 1  # what this commit fires runs deeper
        fired = self._match_triggers(payloads, depth)
        store.note_commit(o, bundle.bundle_id)
        try:
            self.storage.append([bundle])
        except BaseException:
            store.note_commit(o, None)
            raise
        store.drop(o)
        self.proposals.move_context(o, None)  # open questions now apply to canonical
        self._queue_fired(fired, depth, bundle.bundle_id)
        self._derive()
        if undomod.undoable(payloads):
            self.undo_stack.push(undomod.Entry(
                bundle.bundle_id, bundle.hlc, bundle.causal_vc, tuple(payloads), tuple(pre)))
        self.undo_stack.redo.clear()
        self._after_canonical()
        return bundle.bundle_id

    def _commit_payloads(self, restore: Sequence[bytes], staged: Sequence[O.Payload],
                         ) -> list[O.Payload]:
        """Validate staged ops against current canonical; recompute cascades; tag writes to
        open-conflict fields as resolutions."""
        v = self.views
        ctx = _Ctx()
        dead: set[bytes] = set()
        live_now: set[bytes] = set(restore)
        new_edges: dict[bytes, O.Payload] = {}
        out: list[O.Payload] = [O.RestoreEntity(e) for e in restore]

        def live(x: bytes) -> bool:
            return x not in dead and (x in ctx.created or x in live_now or v.is_live(x))

        def need(x: bytes) -> None:
            if not live(x):
                raise EntityDeleted(f"record {ids.to_text(x)} is not live",
                                    entity_id=ids.to_text(x))

        def edge_ok(g: bytes) -> None:
            if g not in new_edges and v.edge(g) is None:
                raise NotFound(f"no edge {ids.to_text(g)}", edge=ids.to_text(g))

        for p in staged:
            if isinstance(p, O.CreateEntity):
                ctx.created.add(p.e)
            elif isinstance(p, O.DeleteEntity):
                need(p.e)
                cascade = set(v.live_edges_of(p.e)) if p.e not in ctx.created else set()
                cascade |= {g for g, q in new_edges.items() if p.e in _ends(q)}
                p = O.DeleteEntity(p.e, sorted(cascade))
                dead.add(p.e)
            elif isinstance(p, O.RestoreEntity):
                if v.entity_row(p.e) is None and p.e not in ctx.created:
                    raise NotFound(f"no record {ids.to_text(p.e)}", entity_id=ids.to_text(p.e))
                dead.discard(p.e)
                live_now.add(p.e)
            elif isinstance(p, O.AttachFacet):
                need(p.e)
                ctx.attached.add((p.e, p.facet))
                ctx.detached.discard((p.e, p.facet))
            elif isinstance(p, O.DetachFacet):
                need(p.e)
                ctx.detached.add((p.e, p.facet))
                ctx.attached.discard((p.e, p.facet))
            elif isinstance(p, O.SetField | O.ClearField):
                need(p.e)
                a = (p.e, p.facet)
                if a in ctx.detached or (a not in ctx.attached and not v.is_attached(*a)):
                    raise ValidationError(f"record {ids.to_text(p.e)} is no longer in table "
                                          f"{p.facet}", entity_id=ids.to_text(p.e),
                                          table=p.facet)
                p = self._tag_if_open(p.e, self.proj.slot_of(p.facet, p.field), p, ctx)
            elif isinstance(p, O.CreateEdge | O.CreateOrderedEdge):
                need(p.src)
                need(p.dst)
                new_edges[p.edge] = p
            elif isinstance(p, O.DeleteEdge | O.RestoreEdge | O.SetEdgeProperty
                            | O.ClearEdgeProperty | O.MoveOrderedEdge):
                edge_ok(p.edge)
                if isinstance(p, O.SetEdgeProperty | O.ClearEdgeProperty):
                    p = self._tag_prop_if_open(p)
            out.append(p)
        return out

    # --- sync: ingest and catch-up -----------------------------------------------------------
    def ingest(self, records: Iterable[Any]) -> IngestReport:
        """Verify, admit and append remote bundles (whole), then project them.

        Integrity failures and drift are rejected unstored and unsettled; content failures of
        validly signed bundles are settled (spec 03 §3). Nothing bad is ever stored. Bundles
        are taken in the order given (no `prev` check: the caller vouches for the order).
        """
        return self.admit(check_records(list(records), self.ws, self.clock.check_drift))

    def admit(self, checked: Sequence[Checked],
              prev: Mapping[bytes, bytes] | None = None) -> IngestReport:
        """Admit checked records in order (spec 03 §6.1), append them in one transaction.

        With `prev` (an `ops` message's): an actor X whose `prev[X]` is beyond our `vc[X]` has
        all its bundles dropped (`gap`), so the VC never passes a hole. For every actor, the
        first unsettled rejection drops the rest of its bundles in this batch; a record whose
        actor cannot be read stops the whole rest of the batch.
        """
        report = IngestReport()
        good: list[O.Bundle] = []
        batch_ids: set[bytes] = set()
        blocked: set[bytes] = set()
        vc = self.storage.vclock()
        if prev is not None:
            for c in checked:
                x = c.actor
                if x is not None and x not in blocked and prev.get(x, hlcmod.ZERO) > vc.get(
                        x, hlcmod.ZERO):
                    blocked.add(x)
                    report.rejected.append((c.bundle_id, "gap", "bundles missing before these"))
        last: dict[bytes, bytes] = {}
        for c in checked:
            if c.actor is None:
                report.rejected.append((c.bundle_id, c.code or "malformed", c.message))
                break
            if c.actor in blocked:
                continue
            if prev is not None and c.hlc is not None and c.hlc <= last.get(c.actor,
                                                                             hlcmod.ZERO):
                blocked.add(c.actor)  # an actor's bundles must come in HLC order
                report.rejected.append((c.bundle_id, "gap", "bundles out of order"))
                continue
            if c.hlc is not None:
                last[c.actor] = c.hlc
            if c.bundle is None:
                if c.settled:
                    if c.bundle_id is not None and not self.storage.is_settled(c.bundle_id):
                        self.storage.record_rejection(c.bundle_id, c.actor, c.hlc, "content",
                                                      c.message, None, settled=True)
                else:
                    blocked.add(c.actor)
                    if c.code in INTEGRITY_CODES:  # kept (capped) for diagnosis, never applied
                        self.storage.record_rejection(
                            c.bundle_id or b"", c.actor, c.hlc, c.code or "malformed",
                            c.message, codec.encode(c.record), settled=False)
                report.rejected.append((c.bundle_id, c.code or "malformed", c.message))
                continue
            b = c.bundle
            if b.bundle_id in batch_ids:
                report.dup.append(b.bundle_id)  # repeated within this batch
                continue
            batch_ids.add(b.bundle_id)
            good.append(b)
        stale_before = self.clock.now() - self.clock.stale_ms
        # One transaction for the whole batch; an equivocating bundle aborts it, and then each
        # bundle is appended alone so the others still land.
        try:
            res = self.storage.append(good, origin="remote", stale_before_ms=stale_before)
            results = [(b, res.status[b.bundle_id]) for b in good]
        except EquivocationError:
            results = []
            for b in good:
                if b.actor in blocked:
                    continue
                try:
                    one = self.storage.append([b], origin="remote", stale_before_ms=stale_before)
                    results.append((b, one.status[b.bundle_id]))
                except EquivocationError as exc:
                    blocked.add(b.actor)
                    report.rejected.append((b.bundle_id, exc.code, exc.message))
        for b, st in results:
            if st == "dup" and b.bundle_id not in report.applied:
                report.dup.append(b.bundle_id)
            elif st != "dup":
                self.clock.receive(b.hlc)
                report.applied.append(b.bundle_id)
                if hlcmod.wall_ms(b.ops[0].hlc) < stale_before:
                    report.stale.append(b.bundle_id)
        if report.applied:
            self._derive()
            self._after_canonical()
        return attrs.evolve(report, seq=self.storage.head_seq())

    def ops_since(self, vc: Mapping[bytes, bytes]) -> list[list[Any]]:
        """Catch-up: every stored bundle the peer with clock vc lacks, in canonical order."""
        return list(self.storage.bundles_since(vc))

    def vclock(self) -> dict[bytes, bytes]:
        return self.storage.vclock()

    def genesis_hash(self) -> bytes | None:
        """BLAKE3 of the genesis record's canonical bytes (spec 03 §2); None before it arrived.

        The genesis is the first bundle in canonical order holding `CreateWorkspace`."""
        cached = self.storage.local_get("genesis_hash")
        if cached is not None:
            return bytes(cached)
        for (bid,) in self.storage.conn.execute(
                "SELECT bundle_id FROM ops WHERE t = 'CreateWorkspace' ORDER BY hlc, op_id"
                " LIMIT 1"):
            rec = self.storage.bundle_record(bytes(bid))
            if rec is None:
                return None
            from blake3 import blake3

            gh = blake3(codec.encode(rec)).digest()
            self.storage.local_set("genesis_hash", gh)
            return gh
        return None

    # --- digests and verification ------------------------------------------------------------
    def oplog_digest(self) -> bytes:
        return self.storage.oplog_digest()

    def state_hash(self) -> bytes:
        self.proj.catch_up()
        return compute_state_hash(self.proj.conn, self.storage.oplog_digest())

    def rebuild(self) -> bytes:
        self.proj.rebuild()
        return self.state_hash()

    def verify(self) -> dict[str, Any]:
        """Full replay in a scratch database; compare its state hash with the live one."""
        live = self.state_hash()
        scratch = db.connect(":memory:")
        try:
            scratch.execute("ATTACH DATABASE ? AS src", (str(self.path / OPLOG_FILE),))
            from openprod.storage.sqlite import SCHEMA as OPLOG_SCHEMA

            scratch.execute(OPLOG_SCHEMA)
            for table in ("bundles", "ops", "quarantine", "oplog_meta"):
                scratch.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table}")
            scratch.execute("DETACH DATABASE src")
            sp = StateProjection(scratch)
            sp.rebuild()
            count = sum(1 for _ in scratch.execute("SELECT 1 FROM ops"))
            dsum = 0
            for (h,) in scratch.execute("SELECT op_hash FROM ops"):
                dsum = (dsum + int.from_bytes(bytes(h), "big")) % 2**256
            digest = digest_of(count, dsum)
            replayed = compute_state_hash(scratch, digest)
        finally:
            scratch.close()
        return {"ok": replayed == live and digest == self.oplog_digest(),
                "state_hash": live.hex(), "replayed_state_hash": replayed.hex(),
                "oplog_digest": digest.hex()}

    # --- reads -------------------------------------------------------------------------------
    def list_tables(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.views.tables()]

    def list_records(self, table: str, *, canonical: bool = False) -> list[dict[str, Any]]:
        """A table's records; with an overlay active (and not canonical), as it shows them."""
        t = self.views.table(table)
        self._conflicts_now()  # the shown value of an open conflict is the conflict projection's
        ov = None if canonical else self._ov_state()
        if ov is None:
            return self.views.records(t)
        members = set(self.views.record_ids(t.facet))
        for (e, facet), att in ov.facets.items():
            if facet == t.facet:
                if att and (e in ov.created or self.views.is_live(e)):
                    members.add(e)
                else:
                    members.discard(e)
        out = []
        for e in sorted(members - ov.deleted):
            if e in ov.created:
                rec: dict[str, Any] = {"id": ids.to_text(e), "table": t.facet,
                                       "values": {f.name: None for f in t.fields},
                                       "conflicts": []}
            else:
                rec = self.views.record(e, t)
            rec["staged"], rec["drifted"] = self._apply_staged(e, t, rec["values"], ov)
            out.append(rec)
        return out

    def get_record(self, entity: bytes | str, *, canonical: bool = False) -> dict[str, Any]:
        """A record; with an overlay active (and not canonical), as the overlay shows it:
        staged values over canonical, plus `staged` and `drifted` field-name lists."""
        e = _as_id(entity)
        self._conflicts_now()  # the shown value of an open conflict is the conflict projection's
        ov = None if canonical else self._ov_state()
        if ov is None:
            return self.views.get_record(e)
        if e in ov.deleted:
            raise NotFound(f"no record {ids.to_text(e)}", entity_id=ids.to_text(e))
        if e not in ov.created:
            e = self.proj.resolve(e)
            if not self.views.is_live(e):
                raise NotFound(f"no record {ids.to_text(e)}", entity_id=ids.to_text(e))
        tables = self._tables_of(e)
        vals: dict[str, Any] = {}
        conflicts: list[str] = []
        staged: list[str] = []
        drifted: list[str] = []
        for t in tables:
            if e in ov.created:
                v: dict[str, Any] = {f.name: None for f in t.fields}
            else:
                v, c = self.views.record_values(e, t)
                conflicts += c
            s, d = self._apply_staged(e, t, v, ov)
            vals.update(v)
            staged += s
            drifted += d
        return {"id": ids.to_text(e), "tables": [t.facet for t in tables], "values": vals,
                "conflicts": conflicts, "staged": staged, "drifted": drifted}

    def list_edges(self, entity: bytes | str | None = None, etype: str | None = None,
                   direction: str = "both", *, canonical: bool = False,
                   ) -> list[dict[str, Any]]:
        """Visible edges; with an overlay active (and not canonical), canonical edges minus
        the ones it deletes (or hides by deleting an end) plus the ones it creates."""
        e = None if entity is None else _as_id(entity)
        out = self.views.list_edges(e, etype, direction)
        ov = None if canonical else self._ov_state()
        if ov is None:
            return out
        dead = {ids.to_text(x) for x in ov.deleted}
        gone = {ids.to_text(g) for g in ov.edges_deleted}
        out = [d for d in out if d["id"] not in gone and d["src"] not in dead
               and d["dst"] not in dead]
        for g, p in ov.edges_created.items():
            src, dst = _ends(p)
            if g in ov.edges_deleted or src in ov.deleted or dst in ov.deleted:
                continue
            if etype is not None and getattr(p, "type", None) != etype:
                continue
            if e is not None and not ((direction in ("both", "out") and src == e)
                                      or (direction in ("both", "in") and dst == e)):
                continue
            assert src is not None and dst is not None
            out.append({"id": ids.to_text(g), "type": getattr(p, "type", None),
                        "src": ids.to_text(src), "dst": ids.to_text(dst),
                        "index": getattr(p, "index", None),
                        "props": {k: values.to_user(v)
                                  for k, v in sorted((getattr(p, "props", None) or {}).items())},
                        "staged": True})
        return out

    def query(self, q: Mapping[str, Any], *, canonical: bool = False) -> list[str]:
        """Ids (as text) of the records a V1 query (spec 04 §5) matches, read through
        list_records/list_edges so values are the displayed ones; with an overlay active (and
        not canonical), in canonical + that overlay (spec 02 §2.5)."""
        checked = querymod.check(q, self.views)
        self._conflicts_now()
        ov = None if canonical else self._ov_state()

        def live(e: bytes) -> bool:
            if ov is not None and e in ov.deleted:
                return False
            return (ov is not None and e in ov.created) or self.views.is_live(e)

        reader = querymod.RecordReader(
            lambda f: self.list_records(f, canonical=canonical),
            lambda t: self.list_edges(etype=t, canonical=canonical),
            live, self.proj.resolve)
        return querymod.as_text(querymod.run(checked, reader))


def _ends(p: O.Payload) -> tuple[bytes | None, bytes | None]:
    return getattr(p, "src", None), getattr(p, "dst", None)


def _field_matches(skey: str, field: str) -> bool:
    """A staged field key named by its key or by its field name."""
    return field in (skey, skey.rpartition(".")[2])


def _owning_table(tables: Sequence[TableDef], ref: str) -> TableDef:
    hits = []
    for t in tables:
        try:
            t.field(ref)
            hits.append(t)
        except NotFound:
            pass
    if not hits:
        raise NotFound(f"the record has no field {ref!r}", field=ref)
    if len(hits) > 1:
        raise ValidationError(f"field {ref!r} is ambiguous; name the table", field=ref,
                              tables=[t.facet for t in hits])
    return hits[0]


def _label(x: Any, what: str) -> str:
    if not isinstance(x, str) or not x.strip() or len(x) > O.MAX_LABEL:
        raise ValidationError(f"a {what} needs a name of 1-{O.MAX_LABEL} characters",
                              label=repr(x)[:50])
    return x.strip()


def _parse_id(s: str) -> bytes:
    try:
        return ids.from_text(s)
    except (ValueError, TypeError, AttributeError):
        raise ValidationError(f"{s!r} is not a valid id", id=repr(s)[:50]) from None


def _as_id(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else _parse_id(x)


def _bundle_id_of(rec: Any) -> bytes | None:
    try:
        from openprod.core import codec

        h = codec.decode(rec[0])
        b = h.get("bundle")
        return b if ids.is_id(b) else None
    except Exception:
        return None
