"""Which scripts exist and what each may do (spec 04 §7.1, §7.4, §7.5).

Owns `ScriptInfo`: a module script (from an installed package) as the runner and the API see it
— id `module.script`, label, trigger, typed args, watch/when/writes, declared capabilities,
limits, source — plus the checks made before a run starts: typed manual args (all required),
the capabilities still to decide, and the automation keys of an on-change trigger for the
cycle check. Pure: reading package files is the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from openprod.core import values
from openprod.core.errors import NotFound, ValidationError
from openprod.engine.manifest import EVENTS, Package, ScriptDef

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_MIB = 16
DEFAULT_INSTRUCTIONS = 200_000_000


class ScriptNotFound(NotFound):
    code = "script_not_found"


class BadScriptArgs(ValidationError):
    code = "invalid_args"


@attrs.frozen
class ScriptInfo:
    id: str  # module.script
    module: str
    version: str
    name: str
    label: str
    trigger: str  # manual | on_change
    args: dict[str, str]
    capabilities: tuple[str, ...]
    timeout_s: float
    memory_mib: int
    max_instructions: int
    file: str
    source: str
    watch_table: str | None = None
    watch_fields: tuple[str, ...] = ()
    watch_events: tuple[str, ...] = ()
    when: dict[str, Any] | None = None
    writes: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "module": self.module, "version": self.version, "name": self.name,
            "label": self.label, "trigger": self.trigger, "args": dict(self.args),
            "capabilities": list(self.capabilities),
            "limits": {"timeout_s": self.timeout_s, "memory_mib": self.memory_mib,
                       "max_instructions": self.max_instructions}}
        if self.trigger == "on_change":
            d["watch"] = {"table": self.watch_table, "fields": list(self.watch_fields),
                          "events": list(self.watch_events)}
            d["when"] = self.when
            d["writes"] = list(self.writes or ())
        return d

    def limits_wire(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s, "memory_mib": self.memory_mib,
                "max_instructions": self.max_instructions}

    def automation_keys(self, table_fields: Sequence[str] = ()) -> tuple[set[str], set[str]]:
        """(writes, watches) for the cycle check, as field keys and @member keys (04 §6);
        `table_fields` are the watched table's field names (an empty `fields` watches all)."""
        writes: set[str] = set()
        for w in self.writes or ():
            if w.startswith("edge:"):
                writes.add(f"@edge:{w[5:]}")
            elif w.count(".") == 1:
                writes.add(f"@member:{w}")
            else:
                writes.add(w)
        watches: set[str] = set()
        events = set(self.watch_events) or set(EVENTS)
        if self.watch_table is not None:
            if "field_changed" in events:
                watches |= {f"{self.watch_table}.{f}"
                            for f in (self.watch_fields or tuple(table_fields))}
            if events & {"record_added", "record_removed"}:
                watches.add(f"@member:{self.watch_table}")
        return writes, watches


def scripts_of(pkg: Package, sources: Mapping[str, str]) -> list[ScriptInfo]:
    """The package's scripts; `sources` maps each script file to its text."""
    out = []
    for name, sd in sorted(pkg.manifest.scripts.items()):
        out.append(_info(pkg, name, sd, sources.get(sd.file, "")))
    return out


def _info(pkg: Package, name: str, sd: ScriptDef, source: str) -> ScriptInfo:
    lim = sd.limits
    w = sd.watch
    return ScriptInfo(
        id=f"{pkg.id}.{name}", module=pkg.id, version=pkg.version, name=name,
        label=sd.label or name.replace("_", " ").capitalize(), trigger=sd.trigger,
        args=dict(sd.args), capabilities=tuple(sd.capabilities),
        timeout_s=float(lim.timeout_s) if lim and lim.timeout_s else DEFAULT_TIMEOUT_S,
        memory_mib=int(lim.memory_mib) if lim and lim.memory_mib else DEFAULT_MEMORY_MIB,
        max_instructions=int(lim.max_instructions) if lim and lim.max_instructions
        else DEFAULT_INSTRUCTIONS,
        file=sd.file, source=source,
        watch_table=w.table if w else None, watch_fields=tuple(w.fields) if w else (),
        watch_events=tuple(w.events) if w else (), when=sd.when,
        writes=tuple(sd.writes) if sd.writes is not None else None)


def check_args(info: ScriptInfo, given: Any) -> dict[str, Any]:
    """Manual args typed per `args` and all required (04 §7.4), in their Lua forms."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise BadScriptArgs("args must be an object", script=info.id)
    extra = sorted(set(given) - set(info.args))
    if extra:
        raise BadScriptArgs(f"{info.label} takes no argument {extra[0]!r}", script=info.id,
                            arg=extra[0])
    out: dict[str, Any] = {}
    for k, ftype in sorted(info.args.items()):
        if given.get(k) is None or given.get(k) == "":
            raise BadScriptArgs(f"{info.label} needs {k!r} ({ftype})", script=info.id, arg=k)
        try:
            out[k] = values.to_user(values.from_user(ftype, given[k]))
        except ValidationError as exc:
            raise BadScriptArgs(f"{k}: {exc.message}", script=info.id, arg=k) from None
    return out
