"""This user's script settings (spec 04 §7.1, §7.4, §7.5): local, never synced.

Owns `<home>/scripts.json` (0600): capability decisions keyed to module id + version
(`always` / `never`; "Allow once" is never stored) and, per workspace, the on-change triggers
this user switched on. Written atomically (temp file + rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors import private_json

FILE = "scripts.json"
DECISIONS = ("always", "never")


class ScriptSettings:
    def __init__(self, home: Path) -> None:
        self.path = home / FILE

    def _load(self) -> dict[str, Any]:
        data = private_json.load(self.path)
        if not isinstance(data, dict):
            return {"grants": {}, "triggers": {}}
        data.setdefault("grants", {})
        data.setdefault("triggers", {})
        return data

    def _save(self, data: dict[str, Any]) -> None:
        private_json.save(self.path, data)

    @staticmethod
    def grant_key(module: str, version: str) -> str:
        return f"{module}@{version}"

    def decisions(self, module: str, version: str) -> dict[str, str]:
        got = self._load()["grants"].get(self.grant_key(module, version), {})
        return {k: v for k, v in got.items() if v in DECISIONS} if isinstance(got, dict) else {}

    def decide(self, module: str, version: str, capability: str, decision: str | None) -> None:
        """Remember always/never for a capability (None forgets: ask again)."""
        data = self._load()
        key = self.grant_key(module, version)
        got = data["grants"].setdefault(key, {})
        if decision is None:
            got.pop(capability, None)
        else:
            got[capability] = decision
        self._save(data)

    def triggers(self, ws_id: str) -> set[str]:
        got = self._load()["triggers"].get(ws_id, [])
        return {x for x in got if isinstance(x, str)} if isinstance(got, list) else set()

    def set_trigger(self, ws_id: str, script: str, enabled: bool) -> None:
        data = self._load()
        cur = set(data["triggers"].get(ws_id, []))
        if enabled:
            cur.add(script)
        else:
            cur.discard(script)
        data["triggers"][ws_id] = sorted(cur)
        self._save(data)
