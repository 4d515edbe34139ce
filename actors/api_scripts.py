"""HTTP routes for scripts (spec 05 §5 "Scripts", spec 04 §7): list, run, cancel, recent runs,
capability decisions and on-change triggers. Runs go to the session's ScriptRunner; their
overlays are reviewed, committed or discarded with the overlay routes.
"""

from __future__ import annotations

from typing import Any

from quart import request

from actors.api import OBJ, STR, _command, _field, _result, api, obj
from actors.node import Node
from actors.script_runner import ScriptRunner
from openprod.core.errors import ValidationError
from openprod.engine.workspace import Workspace

BOOL: dict[str, Any] = {"type": "boolean"}


def _runner(node: Node) -> ScriptRunner:
    scripts = node.current.scripts
    if scripts is None:  # pragma: no cover - every Node session has one
        raise ValidationError("scripts are not available in this engine")
    return scripts


@api("/scripts/list", "GET", "Scripts of the installed, adopted modules: trigger, typed args, "
     "capabilities and this user's decisions, on-change triggers switched on or off")
async def list_scripts(node: Node, body: Any) -> dict[str, Any]:
    r = _runner(node)
    return {"scripts": await r.list_scripts(), "queued": sum(
        1 for x in r.runs.values() if x.status == "queued"),
        "running": r.current.run_id if r.current is not None else None}


@api("/scripts/put", "POST", "Create (no id) or replace a workspace script: label, Lua source, "
     "typed args, capabilities, limits; every member may edit it (spec 04 §7.1)",
     body=obj(["label", "source"], id=STR, label=STR, source=STR, trigger=STR, args=OBJ,
              capabilities={"type": "array", "items": STR}, limits=OBJ))
async def put_script(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    sid = _field(body, "id", str, required=False)
    doc = {k: v for k, v in body.items() if k != "id"}
    out: dict[str, Any] = {}

    def put(ws: Workspace) -> Any:
        out["id"], r = ws.put_script(sid, doc)
        return r

    r = await _command(node, put)
    return _result(r, id=out["id"])


@api("/scripts/delete", "POST", "Delete a workspace script (module scripts go with their module)",
     body=obj(["id"], id=STR))
async def delete_script(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    sid = _field(body, "id", str)
    return _result(await _command(node, lambda ws: ws.delete_script(sid)))


@api("/scripts/run", "POST", "Run a manual script with its typed args; undecided capabilities "
     "answer 409 capability_required (send grants {capability: once|always|never})",
     body=obj(["script"], script=STR, args=OBJ, grants=OBJ))
async def run_script(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    script = _field(body, "script", str)
    args = _field(body, "args", dict, required=False)
    grants = _field(body, "grants", dict, required=False)
    run = await _runner(node).submit(script, args, grants)
    return {"run_id": run.run_id, "status": run.status, "script": script,
            "seq": node.current.writer.appended}


@api("/scripts/cancel", "POST", "Cancel a queued or running run; its overlay is discarded",
     body=obj(["run_id"], run_id=STR))
async def cancel_run(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    run = await _runner(node).cancel(_field(body, "run_id", str))
    return {"run_id": run.run_id, "status": run.status,
            "cancel_requested": run.cancel_requested, "seq": node.current.writer.appended}


@api("/scripts/runs", "GET", "Recent runs (newest last) with status, log, error and overlay; "
     "?run_id= for one", query=("run_id",))
async def list_runs(node: Node, body: Any) -> dict[str, Any]:
    r = _runner(node)
    rid = request.args.get("run_id")
    if rid is not None:
        run = r.runs.get(rid)
        if run is None:
            from actors.script_runner import RunNotFound

            raise RunNotFound(f"no run {rid!r}", run_id=rid)
        return {"run": run.to_json()}
    return {"runs": [x.to_json() for x in r.runs.values()]}


@api("/scripts/triggers", "POST", "Switch this user's on-change trigger of a script on or off "
     "(409 cycle_detected if it would trigger itself through rules or other scripts)",
     body=obj(["script", "enabled"], script=STR, enabled=BOOL))
async def set_trigger(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    script = _field(body, "script", str)
    enabled = _field(body, "enabled", bool)
    await _runner(node).set_trigger(script, enabled)
    return {"script": script, "enabled": enabled, "seq": node.current.writer.appended}


@api("/scripts/capabilities", "POST", "Remember (always / never) or forget (null) this user's "
     "decision on a capability a script asks for",
     body=obj(["script", "capability"], script=STR, capability=STR, decision=STR))
async def decide_capability(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    script = _field(body, "script", str)
    cap = _field(body, "capability", str)
    decision = _field(body, "decision", str, required=False)
    await _runner(node).decide(script, cap, decision)
    return {"script": script, "capability": cap, "decision": decision,
            "seq": node.current.writer.appended}
