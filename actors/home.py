"""The engine's home directory: identity, engine lock, launch token and workspace folders.

Layout (spec 03 §2): `<home>/identity.json` (0600), `<home>/engine.lock`, `<home>/api-token`
(0600, this launch's token), `<home>/session-secret` (0600, the browser session cookie, kept across
launches), `<home>/workspaces/<ws>/` (0700) holding `workspace.toml` and
`oplog.db`, `<home>/node.json` remembering the last opened workspace, and
`<home>/modules/<id>/<version>/`, this user's module install store (actors.module_store).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from actors.module_store import ModuleStore
from openprod.core import hlc as hlcmod
from openprod.core import identity as identmod
from openprod.core import ids
from openprod.core.errors import NotFound, OpenprodError, ValidationError
from openprod.engine.manifest import Package
from openprod.engine.workspace import OPLOG_FILE, Workspace

# the name a replica joined by id or address has until its genesis (and real name) arrives
JOINING_NAME = "Joining workspace"


class HomeError(OpenprodError):
    code = "home"


def default_home() -> Path:
    env = os.environ.get("OPENPROD_HOME")
    if env:
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "openprod"
    if sys.platform == "win32":  # pragma: no cover - not a supported test platform
        return Path(os.environ.get("APPDATA", str(Path.home()))) / "openprod"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openprod"


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid TOML basic string


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()
        self._lock: IO[bytes] | None = None

    # --- setup -------------------------------------------------------------------------------
    def ensure(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
            (self.path / "workspaces").mkdir(exist_ok=True)
        except OSError as exc:
            raise HomeError(f"cannot use {self.path} as the data directory: {exc.strerror}",
                            path=str(self.path)) from exc

    def identity(self, display_name: str = "") -> identmod.Identity:
        return identmod.load_or_create(self.path, display_name)

    def save_identity(self, ident: identmod.Identity) -> None:
        """Persist a changed display or device name (the key itself never changes)."""
        identmod.save(self.path, ident)

    def lock(self) -> None:
        """One engine per home, so two processes never sign as one actor (spec 03 §1)."""
        f = open(self.path / "engine.lock", "a+b")  # noqa: SIM115 - held for the process life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise HomeError(f"another openprod engine is already running on {self.path}",
                            path=str(self.path)) from None
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        path = self.path / "api-token"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
        return token

    def read_token(self) -> str:
        return (self.path / "api-token").read_text().strip()

    def session_secret(self) -> str:
        """The browser session's cookie value: made once per home (0600) and kept across
        launches, so an open page survives an engine restart while the `?token=` link still
        changes per launch. Deleting the file signs every browser out at the next start."""
        path = self.path / "session-secret"
        try:
            secret = path.read_text().strip()
        except FileNotFoundError:
            secret = ""
        if len(secret) >= 32:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            return secret
        secret = secrets.token_urlsafe(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return secret

    # --- modules (spec 04 §4: install is per user, no ops) -------------------------------------
    @property
    def modules(self) -> ModuleStore:
        return ModuleStore(self.path / "modules")

    def install_module(self, path: Path) -> Package:
        """Validate a package folder or `.zip` and copy it to `modules/<id>/<version>/`
        atomically; the same version again is a no-op. Raises ManifestError (every problem)."""
        return self.modules.install(path)[0]

    def installed_modules(self) -> list[dict[str, Any]]:
        return self.modules.installed()

    # --- workspaces --------------------------------------------------------------------------
    def workspace_dir(self, ws_id: str) -> Path:
        return self.path / "workspaces" / ws_id

    def list_workspaces(self) -> list[dict[str, Any]]:
        out = []
        root = self.path / "workspaces"
        for d in sorted(root.iterdir()) if root.exists() else []:
            meta = d / "workspace.toml"
            if not meta.exists() or not (d / OPLOG_FILE).exists():
                continue
            try:
                doc = tomllib.loads(meta.read_text())
            except (tomllib.TOMLDecodeError, OSError):
                continue
            out.append({"id": d.name, "name": doc.get("name", d.name),
                        "state": doc.get("state", "active"), "path": str(d)})
        return out

    def create_workspace(self, ident: identmod.Identity, name: str, *,
                         now: Callable[[], int] = hlcmod.system_ms) -> Workspace:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError("a workspace needs a name of 1-200 characters")
        ws_id = ids.new_id()
        path = self.workspace_dir(ids.to_text(ws_id))
        ws = Workspace.create(path, ident, name.strip(), ws=ws_id, now=now)
        self.write_meta(ids.to_text(ws_id), name=name.strip(), state="active")
        if ws.recovery_secret is not None:
            self.save_recovery(ids.to_text(ws_id), ws.recovery_secret)
        self.set_last(ids.to_text(ws_id))
        return ws

    def save_recovery(self, ws_id: str, secret: bytes) -> None:
        """Keep the workspace recovery secret for the local owner: secrets/<ws>.recovery, 0600."""
        d = self.path / "secrets"
        d.mkdir(mode=0o700, exist_ok=True)
        path = d / f"{ws_id}.recovery"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def fork_workspace(self, ident: identmod.Identity, ws_id: str, name: str, *,
                       source: Workspace | None = None) -> tuple[Workspace, dict[str, Any]]:
        """Fork workspace `ws_id` into `workspaces/<new id>` (state=active); see
        `Workspace.fork`. `source` is that workspace already open (the writer's, so the source's
        `fork` record goes through the single writer); else it is opened here for the call.
        Like `create_workspace`, the fork's recovery secret is saved under `secrets/` and left
        on the returned workspace (`recovery_secret`) to be shown once."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError("a workspace needs a name of 1-200 characters", field="name")
        new_id = ids.new_id()
        src = source if source is not None else Workspace.open(self.workspace_path(ws_id), ident)
        try:
            ws, report = src.fork(self.workspace_dir(ids.to_text(new_id)), name.strip(),
                                  ws=new_id)
        finally:
            if source is None:
                src.close()
        self.write_meta(ids.to_text(new_id), name=name.strip(), state="active")
        if ws.recovery_secret is not None:
            self.save_recovery(ids.to_text(new_id), ws.recovery_secret)
        return ws, report

    def join_workspace(self, ident: identmod.Identity, ws_id: str, name: str = "") -> Workspace:
        """An empty replica of workspace `ws_id` (state=joining) for catch-up to fill (§2 Join)."""
        try:
            ws_bytes = ids.from_text(ws_id)
        except (ValueError, TypeError, AttributeError):
            raise ValidationError(f"{ws_id!r} is not a workspace id", field="id") from None
        path = self.workspace_dir(ids.to_text(ws_bytes))
        if (path / OPLOG_FILE).exists():
            raise ValidationError(f"workspace {ws_id} is already on this device", workspace=ws_id)
        ws = Workspace.join(path, ident, ws_bytes)
        os.chmod(path, 0o700)
        self.write_meta(ids.to_text(ws_bytes), name=name or JOINING_NAME, state="joining")
        return ws

    def read_meta(self, ws_id: str) -> dict[str, Any]:
        try:
            return tomllib.loads((self.workspace_dir(ws_id) / "workspace.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return {}

    def write_meta(self, ws_id: str, *, name: str | None = None, state: str | None = None,
                   manual_peers: list[str] | None = None, access_code: str | None = None,
                   clear_access_code: bool = False) -> None:
        """Rewrite workspace.toml, changing only what is given (atomically, 0600).

        `access_code` is the code a joiner typed for a workspace in access-code mode: kept
        until the join completes (`clear_access_code`), so a restart mid-join carries on."""
        doc = self.read_meta(ws_id)
        sync = dict(doc.get("sync") or {})
        name = name if name is not None else str(doc.get("name", ws_id))
        state = state if state is not None else str(doc.get("state", "active"))
        if manual_peers is not None:
            sync["manual_peers"] = manual_peers
        if access_code is not None:
            sync["access_code"] = access_code
        if clear_access_code:
            sync.pop("access_code", None)
        peers = [p for p in sync.get("manual_peers", []) if isinstance(p, str)]
        code = sync.get("access_code")
        text = (f"name = {_toml_str(name)}\nstate = {_toml_str(state)}\n\n[sync]\n"
                f"enabled = {'false' if sync.get('enabled') is False else 'true'}\n"
                f"manual_peers = [{', '.join(_toml_str(p) for p in peers)}]\n"
                + (f"access_code = {_toml_str(code)}\n" if isinstance(code, str) else ""))
        path = self.workspace_dir(ws_id) / "workspace.toml"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def workspace_path(self, ws_id: str) -> Path:
        path = self.workspace_dir(ws_id)
        if "/" in ws_id or not (path / OPLOG_FILE).exists():
            raise NotFound(f"no workspace {ws_id!r} in {self.path}", workspace=ws_id)
        return path

    def set_last(self, ws_id: str) -> None:
        (self.path / "node.json").write_text(json.dumps({"last_workspace": ws_id}))

    def last(self) -> str | None:
        try:
            doc = json.loads((self.path / "node.json").read_text())
        except (OSError, ValueError):
            return None
        last = doc.get("last_workspace")
        return last if isinstance(last, str) else None

    def default_workspace(self, ident: identmod.Identity) -> str:
        """The last opened workspace, else the first one, else a new 'My Workspace'."""
        known = {w["id"] for w in self.list_workspaces()}
        last = self.last()
        if last is not None and last in known:
            return last
        if known:
            first: str = sorted(known)[0]
            self.set_last(first)
            return first
        ws = self.create_workspace(ident, "My Workspace")
        ws_id = ids.to_text(ws.ws)
        ws.close()
        return ws_id
