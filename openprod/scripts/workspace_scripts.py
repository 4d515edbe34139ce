"""Workspace scripts: Lua scripts kept in the workspace itself (spec 04 §7.1).

Owns the stored form of a workspace script document (`PutConfig("script", id, doc)`): its
checks (label, source, typed manual args, capabilities, limits), reading the live documents
from the projection, and the `ScriptInfo` the runner and the API see for one. A workspace
script writes `workspace.*` tables (the tables people made here) unless granted
`data.write:<module>`. Capability decisions are keyed to the script id and a hash of its
source, so editing the source asks again (spec 04 §8.20). Pure: no I/O beyond the projection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from openprod.core import codec, ids, values
from openprod.core.errors import ValidationError
from openprod.engine import manifest as mf
from openprod.engine.views import Views
from openprod.scripts.catalog import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MEMORY_MIB,
    DEFAULT_TIMEOUT_S,
    ScriptInfo,
)

SCRIPT_NS = "script"
WORKSPACE = "workspace"  # the module name of a workspace script (its write scope)
MAX_SOURCE = 256 * 1024
MAX_LABEL = 80
MAX_ARGS = 32
DOC_KEYS = frozenset(["label", "source", "trigger", "args", "capabilities", "limits"])
LIMIT_BOUNDS: dict[str, float] = {"timeout_s": mf.MAX_TIMEOUT_S,
                                  "memory_mib": mf.MAX_MEMORY_MIB,
                                  "max_instructions": mf.MAX_INSTRUCTIONS}


class BadScript(ValidationError):
    code = "invalid"


def new_script_id() -> str:
    return ids.to_text(ids.new_id())


def check_id(sid: object) -> str:
    """A workspace script id is a hyphenated UUID (module scripts are `module.script`)."""
    if not isinstance(sid, str):
        raise BadScript("a script id is a string", field="id")
    try:
        return ids.to_text(ids.from_text(sid))
    except ValueError:
        raise BadScript(f"{sid!r} is not a workspace script id", field="id") from None


def normalize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Check a workspace script document and return its stored form (defaults filled in)."""
    if not isinstance(doc, Mapping):
        raise BadScript("a script is an object")
    extra = sorted(set(doc) - DOC_KEYS)
    if extra:
        raise BadScript(f"unknown key {extra[0]!r} (a script has {', '.join(sorted(DOC_KEYS))})",
                        field=extra[0])
    label = doc.get("label")
    if not isinstance(label, str) or not label.strip() or len(label.strip()) > MAX_LABEL:
        raise BadScript(f"label must be 1 to {MAX_LABEL} characters", field="label")
    source = doc.get("source")
    if not isinstance(source, str) or not source.strip():
        raise BadScript("source must be the script's Lua text", field="source")
    if len(source.encode("utf-8")) > MAX_SOURCE:
        raise BadScript(f"source is larger than {MAX_SOURCE // 1024} KiB", field="source")
    trigger = doc.get("trigger", "manual")
    if trigger == "on_change":
        # watch/when/writes and their cycle check exist for module scripts only in V1
        raise BadScript("on-change workspace scripts are not supported in V1: use a module "
                        "script for on-change work", field="trigger").with_code("unsupported_in_v1")
    if trigger != "manual":
        raise BadScript("trigger is 'manual'", field="trigger")
    return {"label": label.strip(), "source": source, "trigger": "manual",
            "args": _args(doc.get("args", {})), "capabilities": _caps(doc.get("capabilities", [])),
            "limits": _limits(doc.get("limits", {}))}


def _args(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise BadScript("args is an object of name → field type", field="args")
    if len(raw) > MAX_ARGS:
        raise BadScript(f"at most {MAX_ARGS} args", field="args")
    out: dict[str, str] = {}
    for name, ftype in raw.items():
        if not values.is_local_name(name):
            raise BadScript(f"argument name {name!r} must match {values.LOCAL_RE.pattern}",
                            field=f"args.{name}")
        if ftype not in values.FTYPES or ftype == "enum":
            raise BadScript(f"argument type {ftype!r} is not a field type (choice arguments "
                            "have no choices)", field=f"args.{name}")
        out[str(name)] = str(ftype)
    return dict(sorted(out.items()))


def _caps(raw: object) -> list[str]:
    if not isinstance(raw, list):
        raise BadScript("capabilities is a list", field="capabilities")
    out: list[str] = []
    for cap in raw:
        problem = mf.capability_problem(cap)
        if problem is not None:
            raise BadScript(problem, field="capabilities")
        if cap in out:
            raise BadScript(f"{cap!r} listed twice", field="capabilities")
        out.append(cap)
    return sorted(out)


def _limits(raw: object) -> dict[str, float | int]:
    if not isinstance(raw, Mapping):
        raise BadScript("limits is an object", field="limits")
    out: dict[str, float | int] = {}
    for key, val in raw.items():
        if key not in LIMIT_BOUNDS:
            raise BadScript(f"unknown limit {key!r} ({', '.join(LIMIT_BOUNDS)})",
                            field=f"limits.{key}")
        if isinstance(val, bool) or not isinstance(val, (int, float)) \
                or not 0 < val <= LIMIT_BOUNDS[key]:
            raise BadScript(f"{key} must be a number in (0, {LIMIT_BOUNDS[key]:g}]",
                            field=f"limits.{key}")
        out[key] = float(val) if key == "timeout_s" else int(val)
    return dict(sorted(out.items()))


def read_docs(views: Views) -> dict[str, dict[str, Any]]:
    """The live workspace script documents by id (deleted or malformed ones skipped: a peer's
    document from a later version must not break this one's list)."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in views.conn.execute(
        "SELECT key, value FROM config WHERE ns = ? ORDER BY key", (SCRIPT_NS,)
    ):
        if raw is None:
            continue
        try:
            out[str(key)] = normalize(codec.decode(bytes(raw)))
        except (ValidationError, ValueError, TypeError):
            continue
    return out


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def info(sid: str, doc: Mapping[str, Any]) -> ScriptInfo:
    """The runner's view of a workspace script. Its `version` is `<id>@<source hash>`: the key
    capability decisions are remembered under, so a changed source asks again."""
    lim = doc.get("limits", {})
    return ScriptInfo(
        id=sid, module=WORKSPACE, version=f"{sid}@{source_hash(doc['source'])}", name=sid,
        label=doc["label"], trigger="manual", args=dict(doc.get("args", {})),
        capabilities=tuple(doc.get("capabilities", ())),
        timeout_s=float(lim.get("timeout_s", DEFAULT_TIMEOUT_S)),
        memory_mib=int(lim.get("memory_mib", DEFAULT_MEMORY_MIB)),
        max_instructions=int(lim.get("max_instructions", DEFAULT_INSTRUCTIONS)),
        file="<workspace>", source=doc["source"])
