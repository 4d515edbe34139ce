"""HTTP routes for rules and their proposals (spec 05 §5 "Rules", spec 04 §6, J4).

Rule documents are workspace config (`PutConfig("rule", id)`) written through the single
writer; the rules of adopted modules this user has installed are listed as `offered` (switched
off) until someone enables one. Proposals are local to this user and answered here.
"""

from __future__ import annotations

from typing import Any

from actors import blocking
from actors.api import BOOL, OBJ, STR, _command, _field, _result, api, obj
from actors.module_store import ModuleStore
from actors.node import Node
from openprod.engine import modules as modmod
from openprod.engine import rules as rulemod
from openprod.engine.manifest import Package, RuleDef
from openprod.engine.workspace import Workspace

RULE_BODY = obj(
    None, id=STR, label=STR, source=STR, target=STR, when=OBJ, action=STR,
    set={"type": "array", "items": OBJ}, auto_accept=BOOL, on_condition_lost=STR,
    enabled=BOOL, apply_existing=BOOL)
JSON_TYPES: dict[str, type] = {"string": str, "object": dict, "boolean": bool, "array": list}


def module_rule_doc(mid: str, rd: RuleDef) -> dict[str, Any]:
    """A manifest rule as the rule document enabling it would store (tables qualified)."""
    sets = []
    for s in rd.set:
        e: dict[str, Any] = {"field": s.field, "mode": s.mode}
        if s.copy_from is not None:
            e["copy_from"] = s.copy_from
        else:
            e["value"] = s.value
        sets.append(e)
    return {"label": rd.label or rd.source, "source": rd.source, "target": rd.target,
            "when": rd.when, "action": rd.action, "set": sets, "auto_accept": rd.auto_accept,
            "on_condition_lost": rd.on_condition_lost, "enabled": False}


def _offers(store: ModuleStore, adopted: dict[str, dict[str, Any]],
            ) -> dict[str, dict[str, Any]]:
    """Rules of the adopted modules whose adopted version this user has installed."""
    out: dict[str, dict[str, Any]] = {}
    for mid, doc in sorted(adopted.items()):
        try:
            pkg: Package = store.load(mid, doc["version"])
        except Exception:  # not installed here (peers without the install see no offers)
            continue
        for name, rd in sorted(pkg.manifest.rules.items()):
            out[f"{mid}.{name}"] = module_rule_doc(mid, rd)
    return out


async def _offered(node: Node) -> dict[str, dict[str, Any]]:
    # the writer's view: the reader's projection may not have applied an adoption just made
    adopted = await node.current.writer.call(lambda ws: modmod.module_configs(ws.views))
    return await blocking.run_sync(_offers, node.home.modules, adopted)


@api("/rules/list", "GET", "Rules: every rule document with its status (active, disabled, "
     "dormant, suspended, invalid) and the adopted modules' rules offered switched off")
async def list_rules(node: Node, body: Any) -> dict[str, Any]:
    offered = await _offered(node)
    rules = await _command(node, lambda ws: ws.list_rules())
    have = {r["id"] for r in rules}
    for rid, doc in offered.items():
        if rid not in have:
            rules.append({"id": rid, **doc, "status": "offered", "reason": None})
    return {"rules": sorted(rules, key=lambda r: r["id"]), "seq": node.current.writer.appended}


@api("/rules/put", "POST", "Create or change a rule (keys left out keep their value; a "
     "module rule's document comes from its manifest). Enabling one that would close a cycle "
     "of automations is refused (409 cycle_detected); apply_existing adds current matches",
     body=RULE_BODY)
async def put_rule(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    rid = _field(body, "id", str, required=False)
    apply_existing = _field(body, "apply_existing", bool, required=False) or False
    if rid is not None and not rulemod.valid_rule_id(rid):
        raise rulemod.RuleError("a rule id is `module.rule` or 32 hex digits", "id")
    for key, schema in RULE_BODY["properties"].items():  # JSON types first: 400 invalid
        if body.get(key) is not None:
            _field(body, key, JSON_TYPES[schema["type"]])
    offered = await _offered(node) if rid is not None else {}
    patch = {k: v for k, v in body.items() if k not in ("id", "apply_existing")}

    def put(ws: Workspace) -> tuple[str, Any]:
        base: dict[str, Any] = {}
        if rid is not None:
            current = rulemod.read_docs(ws.views).get(rid)
            base = dict(current) if current is not None else dict(offered.get(rid, {}))
        return ws.put_rule(rid, {**base, **patch}, apply_existing=apply_existing)

    new_id, r = await _command(node, put)
    # `rules_changed` comes from the StateDeriver once the document is applied (as for a
    # delete, or a rule arriving by sync): publishing it here too would send it twice
    return _result(r, id=new_id)


@api("/rules/delete", "POST", "Delete a rule document (its proposals go too)",
     body=obj(["id"], id=STR))
async def delete_rule(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    rid = _field(body, "id", str)
    r = await _command(node, lambda ws: ws.delete_rule(rid))
    return _result(r, id=rid)


@api("/rules/apply", "POST", "Apply an active rule to existing records: every current match "
     "not yet in the target is added, in one change", body=obj(["id"], id=STR))
async def apply_rule(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    rid = _field(body, "id", str)
    r = await _command(node, lambda ws: ws.apply_rule(rid))
    return _result(r, id=rid, changed=r.bundle_id is not None or r.staged)


@api("/rules/proposals", "GET", "Open rule proposals (this user's), re-checked against the "
     "current state")
async def list_proposals(node: Node, body: Any) -> dict[str, Any]:
    props = await _command(node, lambda ws: ws.list_proposals())
    return {"proposals": props, "seq": node.current.writer.appended}


@api("/rules/proposals/accept", "POST", "Accept a proposal: the condition is checked again, "
     "then one change adds (or removes) the record (409 proposal_stale if it no longer "
     "applies)", body=obj(["id"], id=STR))
async def accept_proposal(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    pid = _field(body, "id", str)
    r = await _command(node, lambda ws: ws.accept_proposal(pid))
    return _result(r, id=pid)


@api("/rules/proposals/dismiss", "POST", "Dismiss a proposal; it stays dismissed until the "
     "rule's condition for that record changes", body=obj(["id"], id=STR))
async def dismiss_proposal(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    pid = _field(body, "id", str)
    await _command(node, lambda ws: ws.dismiss_proposal(pid))
    return {"id": pid, "seq": node.current.writer.appended}
