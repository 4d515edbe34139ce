"""The per-user module install store: `<home>/modules/<id>/<version>/` (spec 04 §4 Install).

Installing is local (no ops): validate the package with `openprod.engine.manifest.load_package`,
copy only what a package may contain (module.toml, views/, scripts/, assets/, README*/LICENSE*)
into a temporary folder next to its destination, validate that copy again (the source could have
changed between the two reads), then rename it into place, so a reader never sees a half-copied
version. A `.zip` is unpacked with the same path rules the validator applied (no absolute paths,
`..`, symlinks, or more than the declared size per entry). Reinstalling a version with the same
`module.toml` is a no-op; different content under an installed version number is refused.

Built-in modules ship in the repository's `modules/` folder (next to `web/`), not in the Python
package; they are installed from there on demand.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from openprod.core import values
from openprod.core.errors import NotFound, OpenprodError, ValidationError
from openprod.engine.manifest import (
    DEFAULT_LIMITS,
    TOP_LEVEL_DIRS,
    VERSION_RE,
    ManifestError,
    Package,
    load_package,
    relpath_problem,
    zip_prefix,
)
from openprod.engine.modules import version_tuple

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "modules"
COPY_CHUNK = 1 << 20
_TMP_PREFIX = ".install-"


class ModuleNotInstalled(NotFound):
    """Adopting or serving a module (version) this user has not installed."""

    code = "module_not_installed"


class ModuleVersionConflict(OpenprodError):
    """A package whose version is installed already with a different module.toml."""

    code = "module_version_conflict"


def valid_id(mid: object) -> bool:
    return values.is_module(mid)


def valid_version(v: object) -> bool:
    return isinstance(v, str) and VERSION_RE.fullmatch(v) is not None


def _kept(rel: str) -> bool:
    """Whether a package entry is copied: exactly what the validator reads or tolerates."""
    first, _, rest = rel.partition("/")
    if not rest:
        return first == "module.toml" or first.startswith(("README", "LICENSE"))
    return first in TOP_LEVEL_DIRS


class ModuleStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def version_dir(self, mid: str, version: str) -> Path:
        if not valid_id(mid) or not valid_version(version):
            raise ValidationError("not a module id and X.Y.Z version", id=mid, version=version)
        return self.root / mid / version

    # --- install -------------------------------------------------------------------------------
    def install(self, src: Path) -> tuple[Package, bool]:
        """Validate and install a folder or `.zip`; (package, False) if it was already there."""
        pkg = load_package(src)
        dest = self.version_dir(pkg.id, pkg.version)
        done = self._existing(dest, pkg)
        if done is not None:
            return done, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=dest.parent))
        try:
            if src.is_dir():
                _copy_folder(src, tmp)
            else:
                _unpack_zip(src, tmp)
            copied = load_package(tmp)
            if copied.manifest_hash != pkg.manifest_hash:
                raise ManifestError([{"path": "module.toml", "code": "changed",
                                      "message": "the package changed while it was installed"}])
            try:
                os.rename(tmp, dest)  # atomic; fails if a concurrent install got there first
            except OSError:
                done = self._existing(dest, pkg)
                if done is None:
                    raise
                return done, False
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return pkg, True  # the source's reading: it carries the warnings (skipped entries)

    def _existing(self, dest: Path, pkg: Package) -> Package | None:
        if not (dest / "module.toml").is_file():
            return None
        have = load_package(dest)
        if have.manifest_hash != pkg.manifest_hash:
            raise ModuleVersionConflict(
                f"{pkg.id} {pkg.version} is installed with a different module.toml; "
                "give the changed package a new version", id=pkg.id, version=pkg.version)
        return have

    # --- reading ---------------------------------------------------------------------------------
    def versions(self, mid: str) -> list[str]:
        d = self.root / mid
        if not valid_id(mid) or not d.is_dir():
            return []
        found = [v.name for v in d.iterdir()
                 if valid_version(v.name) and (v / "module.toml").is_file()]
        return sorted(found, key=version_tuple)

    def installed(self) -> list[dict[str, Any]]:
        """[{id, version, name, description, views, path}] per installed version."""
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            for v in self.versions(d.name):
                try:
                    pkg = load_package(d / v)
                except ManifestError:
                    continue  # damaged by hand: not offered, never adopted
                out.append(describe(pkg, d / v))
        return out

    def load(self, mid: str, version: str | None = None) -> Package:
        """An installed package: the given version, else the newest one installed."""
        versions = self.versions(mid)
        if not versions or (version is not None and version not in versions):
            raise ModuleNotInstalled(
                f"module {mid!r}{' ' + version if version else ''} is not installed; "
                "install it first", id=mid, version=version, installed=versions)
        return load_package(self.version_dir(mid, version or versions[-1]))


def describe(pkg: Package, path: Path) -> dict[str, Any]:
    return {
        "id": pkg.id, "version": pkg.version, "name": pkg.name, "description": pkg.description,
        "path": str(path),
        "views": [{"name": n, "label": v.label or n, "entry": v.entry, "table": v.table,
                   "url": f"/m/{pkg.id}/{pkg.version}/{v.entry}"}
                  for n, v in pkg.manifest.views.items()],
        "tables": [f"{pkg.id}.{t}" for t in pkg.manifest.tables],
    }


def builtin_modules(root: Path = BUILTIN_DIR) -> dict[str, tuple[Package, Path]]:
    """id → (package, folder) of the modules shipped with openprod (invalid ones skipped:
    a broken built-in is a bug the tests catch, not something to offer)."""
    out: dict[str, tuple[Package, Path]] = {}
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d / "module.toml").is_file():
            try:
                pkg = load_package(d)
            except ManifestError:
                continue
            out[pkg.id] = (pkg, d)
    return out


# --- copying -----------------------------------------------------------------------------------

def _copy_folder(src: Path, dest: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel_dir = Path(dirpath).relative_to(src).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames.sort()
        for name in sorted(filenames):
            rel = rel_dir + name
            path = Path(dirpath) / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or not _kept(rel):
                continue  # the validator refused symlinks and specials already; skip, never follow
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as fin, target.open("xb") as fout:
                _copy_capped(fin, fout, DEFAULT_LIMITS.max_unpacked)


def _unpack_zip(src: Path, dest: Path) -> None:
    with zipfile.ZipFile(src) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        prefix = zip_prefix([i.filename for i in infos])
        budget = DEFAULT_LIMITS.max_unpacked
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16
            if relpath_problem(name) is not None or stat.S_ISLNK(mode) or not name.startswith(
                    prefix):
                continue  # load_package refused these already; never write outside dest
            rel = name[len(prefix):]
            if not _kept(rel) or re.search(r"(^|/)\.\.?(/|$)", rel):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, target.open("xb") as fout:
                budget -= _copy_capped(fin, fout, min(info.file_size, budget))


def _copy_capped(fin: Any, fout: Any, cap: int) -> int:
    """Copy at most `cap` bytes; more means the source lied about its size: refuse."""
    n = 0
    while True:
        chunk = fin.read(COPY_CHUNK)
        if not chunk:
            return n
        n += len(chunk)
        if n > cap:
            raise ManifestError([{"path": ".", "code": "too_large",
                                  "message": "package grew past its size limit while copying"}])
        fout.write(chunk)
