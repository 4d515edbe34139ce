"""The content-addressed blob store of one workspace (spec 03 §7). Synchronous: callers in the
runtime run every method in a worker thread.

Files live at `<workspace>/blobs/<hh>/<hash>` (0600), where `hash` is the BLAKE3 of the bytes in
64 hex (01's `blob_ref`). Bytes are written to `blobs/.tmp/` while they are hashed, fsynced, then
moved into place with `os.replace`; a file that is already in place is kept (dedupe) and the
temporary one dropped. Nothing is ever held whole in memory.

Two writers share that one verified path, `Upload`:
- an upload (`BlobStore.upload(name=, mime=)`): the hash is learnt at the end;
- a fetch from peers (`begin_part(hash)` … `commit_part(hash, part)`): the expected hash is
  known, and `commit_part` refuses bytes that do not hash to it (`BlobCorrupt`, part deleted).

What this node holds is the local table `blob_store(hash, size, state, stored_at, verified_at,
mime, name)` in `oplog.db` (never synced, never in the state hash, like the overlay tables).
`state` is present | fetching | missing | corrupt. `mime` and `name` are what the upload said;
the attaching bundle copies them into the synced `PutConfig("blob", hash, {size, mime, name})`
(read back with `read_meta`).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import apsw
import attrs
import blake3

from openprod.core import codec
from openprod.core.errors import NotFound, OpenprodError, ValidationError
from openprod.storage import db

MAX_SIZE = 2 * 1024 ** 3  # 2 GiB per blob (spec 03 §7)
TMP_MAX_AGE_S = 24 * 3600  # housekeeping deletes older temporary files at startup
READ_CHUNK = 1024 * 1024
STATES = ("present", "fetching", "missing", "corrupt")
DEFAULT_MIME = "application/octet-stream"
META_NS = "blob"  # the synced metadata: PutConfig("blob", hash, {size, mime, name})
MAX_NAME = 255

SCHEMA = """
CREATE TABLE IF NOT EXISTS blob_store(
  hash TEXT PRIMARY KEY, size INTEGER, state TEXT NOT NULL, stored_at INTEGER,
  verified_at INTEGER, mime TEXT, name TEXT);
"""

_HASH = re.compile(r"[0-9a-f]{64}")
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class BlobTooLarge(OpenprodError):
    """An upload over the size cap (HTTP 413)."""

    code = "blob_too_large"


class BlobCorrupt(OpenprodError):
    """Bytes that do not hash to the expected blob (a fetched part, or a stored file)."""

    code = "blob_corrupt"


class BlobUnknown(ValidationError):
    """A blob_ref to a hash this node never stored and no attachment describes (HTTP 400)."""

    code = "blob_unknown"


class BlobUnavailable(NotFound):
    """No such blob here (HTTP 404)."""

    code = "unavailable"


def is_hash(h: Any) -> bool:
    return isinstance(h, str) and _HASH.fullmatch(h) is not None


def check_hash(h: Any) -> str:
    """A blob hash as the API takes it (64 lowercase hex), else ValidationError."""
    if not is_hash(h):
        raise ValidationError("a blob hash is 64 lowercase hex characters (BLAKE3)",
                              field="hash")
    return str(h)


def hash_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def clean_name(name: str | None) -> str | None:
    """A file name as given by a browser or curl, reduced to its last path component without
    control characters (at most 255 characters); None when nothing is left."""
    if not name:
        return None
    base = re.split(r"[/\\]", name)[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    if base in ("", ".", ".."):
        return None
    return base[:MAX_NAME]


def clean_mime(content_type: str | None, name: str | None = None) -> str:
    """The media type of an upload: its Content-Type (type/subtype, lowercased, without
    parameters) unless missing, malformed or a form encoding (curl --data-binary sends
    x-www-form-urlencoded), then a guess from the name, else application/octet-stream."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct and ct not in _FORM_TYPES and _MIME.fullmatch(ct):
        return ct
    guessed = mimetypes.guess_type(name)[0] if name else None
    return guessed or DEFAULT_MIME


def read_meta(conn: apsw.Connection, h: str) -> dict[str, Any] | None:
    """The synced metadata {size, mime, name} of blob h from the state projection's `config`
    table (conn: a connection to oplog.db), or None when no attachment wrote it."""
    for (raw,) in conn.execute("SELECT value FROM config WHERE ns = ? AND key = ?",
                               (META_NS, h)):
        if raw is None:
            return None
        v = codec.decode(bytes(raw))
        return dict(v) if isinstance(v, dict) else None
    return None


# the canonical CBOR of a blob_ref value ["blob_ref", <32 bytes>] starts with these bytes
_BLOB_REF_PREFIX = codec.encode(["blob_ref", bytes(32)])[:10]


def referenced(conn: apsw.Connection) -> list[str]:
    """Every blob hash a field value of the state projection references (conn: oplog.db)."""
    out: set[str] = set()
    for (raw,) in conn.execute("SELECT DISTINCT value FROM fields WHERE substr(value, 1, ?) = ?",
                               (len(_BLOB_REF_PREFIX), _BLOB_REF_PREFIX)):
        v = codec.decode(bytes(raw))
        if isinstance(v, list) and len(v) == 2 and v[0] == "blob_ref":
            out.add(bytes(v[1]).hex())
    return sorted(out)


@attrs.frozen
class BlobInfo:
    """One row of `blob_store`."""

    hash: str
    size: int | None
    state: str
    stored_at: int | None = None
    verified_at: int | None = None
    mime: str | None = None
    name: str | None = None

    def meta(self) -> dict[str, Any]:
        """The synced metadata an attachment writes for this blob."""
        return {"size": self.size if self.size is not None else 0,
                "mime": self.mime or DEFAULT_MIME, "name": self.name or default_name(self.hash)}


def default_name(h: str) -> str:
    return f"blob-{h[:12]}"


@attrs.frozen
class Stored:
    """What `Upload.finish` / `commit_part` stored."""

    info: BlobInfo
    deduped: bool  # the file was already in place; the new bytes were dropped

    def to_json(self) -> dict[str, Any]:
        i = self.info
        return {"hash": i.hash, "size": i.size, "mime": i.mime or DEFAULT_MIME,
                "name": i.name or default_name(i.hash), "deduped": self.deduped}


class Upload:
    """A temporary file in `blobs/.tmp/` being written and hashed; `finish()` moves it into
    place. With `expected` (a fetch's part file) `finish()` refuses other bytes.

    Use as a context manager, or call `abort()` on failure: an unfinished upload leaves no
    file behind."""

    def __init__(self, store: BlobStore, path: Path, *, expected: str | None, limit: int,
                 name: str | None, mime: str | None) -> None:
        self.store = store
        self.path = path
        self.expected = expected
        self.limit = limit
        self.name = name
        self.mime = mime
        self.size = 0
        self._hasher = blake3.blake3()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")  # closed by finish() or abort()
        self.done = False

    @property
    def offset(self) -> int:
        """Bytes written so far (where a resumed fetch continues)."""
        return self.size

    def write(self, data: bytes) -> None:
        """Append bytes, hashing them in order. Over the cap: the upload is aborted and
        BlobTooLarge raised."""
        if self._file is None:
            raise ValidationError("this upload is closed")
        if self.size + len(data) > self.limit:
            self.abort()
            raise BlobTooLarge(f"a file may be at most {self.limit} bytes",
                               limit=self.limit)
        self._file.write(data)
        self._hasher.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def finish(self) -> Stored:
        """fsync, verify (when a hash is expected), move into place (or drop the temporary
        file when that blob is already stored) and record the blob as present."""
        if self._file is None:
            raise ValidationError("this upload is closed")
        h = self._hasher.hexdigest()
        if self.expected is not None and h != self.expected:
            self.abort()
            raise BlobCorrupt(f"the bytes hash to {h}, not {self.expected}",
                              expected=self.expected, got=h)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        try:
            stored = self.store._place(self.path, h, self.size, mime=self.mime,
                                       name=self.name)
        finally:
            self.path.unlink(missing_ok=True)
        self.done = True
        return stored

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.done:
            self.abort()


class BlobStore:
    """The blobs of one workspace: `root` is `<workspace>/blobs`, `conn` a connection to its
    `oplog.db` used only for the `blob_store` table. Methods may run in several worker threads
    at once when the runtime gives the store a `lock` (the connection is used under it)."""

    def __init__(self, root: Path, conn: apsw.Connection, *, max_size: int = MAX_SIZE,
                 now_ms: Callable[[], int] | None = None) -> None:
        self.root = Path(root)
        self.conn = conn
        self.max_size = max_size
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        # The runtime shares a store between worker threads (API streams, the fetcher): it sets
        # `lock` to a re-entrant lock; plain single-threaded use needs none.
        self.lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        # PDFium is not thread-safe: the runtime sets one lock for every thumbnail render
        self.render_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        with self.lock, db.transaction(conn):
            conn.execute(SCHEMA)

    @classmethod
    def for_workspace(cls, workspace: Path, **kw: Any) -> BlobStore:
        """The store of the workspace folder `workspace`, on its own connection."""
        return cls(Path(workspace) / "blobs", db.connect(Path(workspace) / "oplog.db"), **kw)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # --- paths ------------------------------------------------------------------------------
    @property
    def tmp(self) -> Path:
        return self.root / ".tmp"

    @property
    def thumbs(self) -> Path:
        return self.root / ".thumbs"

    def path_of(self, h: str) -> Path:
        check_hash(h)
        return self.root / h[:2] / h

    def _dir(self, p: Path) -> Path:
        """Make a store folder (0700) and its parents under root when missing."""
        if not p.is_dir():
            for d in (self.root, p):
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, 0o700)
        return p

    def _temp(self, prefix: str, suffix: str) -> Path:
        return self._dir(self.tmp) / f"{prefix}.{secrets.token_hex(8)}{suffix}"

    # --- rows -------------------------------------------------------------------------------
    def _row(self, h: str) -> BlobInfo | None:
        with self.lock:
            for row in self.conn.execute(
                    "SELECT hash, size, state, stored_at, verified_at, mime, name"
                    " FROM blob_store WHERE hash = ?", (h,)):
                return BlobInfo(*row)
        return None

    def _put(self, h: str, *, size: int | None, state: str, mime: str | None = None,
             name: str | None = None, stored_at: int | None = None,
             verified_at: int | None = None) -> None:
        """Insert or update a row; mime and name given replace the old ones (the latest
        upload names the file), None keeps them."""
        assert state in STATES, state
        with self.lock, db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO blob_store(hash, size, state, stored_at, verified_at, mime, name)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(hash) DO UPDATE SET"
                " size = coalesce(excluded.size, size), state = excluded.state,"
                " stored_at = coalesce(excluded.stored_at, stored_at),"
                " verified_at = coalesce(excluded.verified_at, verified_at),"
                " mime = coalesce(excluded.mime, mime), name = coalesce(excluded.name, name)",
                (h, size, state, stored_at, verified_at, mime, name))

    def info(self, h: str) -> BlobInfo | None:
        """This node's record of blob h (None: never seen here). A file in place without a
        row (a fork's hard link, a restored backup) is recorded as present."""
        check_hash(h)
        row = self._row(h)
        try:
            size: int | None = self.path_of(h).stat().st_size
        except FileNotFoundError:
            size = None
        if size is not None and (row is None or row.state in ("missing", "fetching")):
            self._put(h, size=size, state="present", stored_at=self.now_ms())
        elif size is None and row is not None and row.state == "present":
            self._put(h, size=None, state="missing")  # deleted by hand: fetch it again
        else:
            return row
        return self._row(h)

    def synced_meta(self, h: str) -> dict[str, Any] | None:
        """`read_meta` through this store's connection, under its lock (an apsw connection
        refuses concurrent use from two threads)."""
        check_hash(h)
        with self.lock:
            return read_meta(self.conn, h)

    def state(self, h: str) -> str | None:
        """present | fetching | missing | corrupt, or None for a hash never seen here."""
        row = self.info(h)
        return row.state if row is not None else None

    def set_state(self, h: str, state: str, *, size: int | None = None) -> None:
        """Record a blob this node knows of but does not hold (fetching / missing), e.g. when
        a GET asks for an attachment whose file is elsewhere."""
        check_hash(h)
        if state == "present":
            if not self.path_of(h).is_file():
                raise ValidationError(f"blob {h} is not stored here")
            size = self.path_of(h).stat().st_size
        self._put(h, size=size, state=state)

    def open(self, h: str) -> IO[bytes]:
        """The stored file for reading; BlobUnavailable when it is not here."""
        row = self.info(h)
        if row is None or row.state != "present":
            raise BlobUnavailable(f"blob {h} is not stored on this device", hash=h,
                                  state=row.state if row else None)
        try:
            return open(self.path_of(h), "rb")
        except FileNotFoundError:
            self._put(h, size=row.size, state="missing")
            raise BlobUnavailable(f"blob {h} is not stored on this device", hash=h,
                                  state="missing") from None

    # --- writing ----------------------------------------------------------------------------
    def upload(self, *, name: str | None = None, mime: str | None = None) -> Upload:
        """A new upload (temporary file in `.tmp/`); write(), then finish()."""
        return Upload(self, self._temp("upload", ".part"), expected=None,
                      limit=self.max_size, name=clean_name(name), mime=mime)

    def put_bytes(self, data: bytes, *, name: str | None = None,
                  mime: str | None = None) -> Stored:
        """Store small bytes in one call (tests, generated files)."""
        with self.upload(name=name, mime=mime) as up:
            up.write(data)
            return up.finish()

    def begin_part(self, h: str, size: int | None = None) -> Upload:
        """A fetch's part file `.tmp/<hash>.<rand>.part` (spec 03 §7 Fetch 3); the blob is
        `fetching` until `commit_part` or `abort_part`. `size` (the recorded size) caps it."""
        check_hash(h)
        limit = self.max_size if size is None else min(size, self.max_size)
        part = Upload(self, self._temp(h, ".part"), expected=h, limit=limit, name=None,
                      mime=None)
        if self.state(h) != "present":
            self._put(h, size=size, state="fetching")
        return part

    def commit_part(self, h: str, part: Upload) -> Stored:
        """Verify the part hashes to h, then move it into place: present. On a mismatch the
        part is deleted, the blob is `missing` again and BlobCorrupt raised."""
        if part.expected != h:
            raise ValidationError("this part file belongs to another blob")
        try:
            return part.finish()
        except BlobCorrupt:
            self._put(h, size=None, state="missing")
            raise

    def abort_part(self, h: str, part: Upload, state: str = "missing") -> None:
        """Give up a fetch: delete the part file; the blob is `state` (missing) again."""
        part.abort()
        if self.state(h) != "present":
            self._put(h, size=None, state=state)

    def _place(self, tmp: Path, h: str, size: int, *, mime: str | None,
               name: str | None) -> Stored:
        """Move a verified, fsynced temporary file to blobs/<hh>/<hash> (or keep the one in
        place), and record it present."""
        dest = self.path_of(h)
        d = self._dir(dest.parent)
        deduped = dest.is_file() and dest.stat().st_size == size
        if not deduped:
            os.replace(tmp, dest)
            _fsync_dir(d)
        now = self.now_ms()
        row = self._row(h)
        kept = deduped and row is not None and row.stored_at is not None
        self._put(h, size=size, state="present", mime=mime, name=name,
                  stored_at=None if kept else now, verified_at=now)
        info = self._row(h)
        assert info is not None
        return Stored(info, deduped)

    # --- thumbnails -------------------------------------------------------------------------
    def thumbnail_path(self, h: str) -> Path:
        check_hash(h)
        return self.thumbs / f"{h}.png"

    def thumbnail(self, h: str) -> Path | None:
        """The cached thumbnail of a stored blob (made on first call, never again), or None
        when it has none (not an image or a PDF). BlobUnavailable when the blob is not here."""
        from openprod.engine import thumbnails

        dest = self.thumbnail_path(h)
        if dest.is_file():
            return dest
        self.open(h).close()  # raises BlobUnavailable unless present
        tmp = self._temp(h, ".png")
        try:
            if not thumbnails.render(self.path_of(h), tmp, pdf_lock=self.render_lock):
                return None
            os.chmod(tmp, 0o600)
            self._dir(self.thumbs)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    # --- maintenance ------------------------------------------------------------------------
    def housekeep(self, *, max_age_s: float = TMP_MAX_AGE_S) -> dict[str, int]:
        """At startup: delete temporary files older than max_age_s, and turn `fetching` rows
        (no fetch survives a restart) back into `missing`."""
        removed = 0
        cutoff = time.time() - max_age_s
        if self.tmp.is_dir():
            for p in self.tmp.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if p.is_file() and p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
        with self.lock, db.transaction(self.conn):
            reset = self.conn.execute(
                "UPDATE blob_store SET state = 'missing' WHERE state = 'fetching'"
                " RETURNING hash").fetchall()
        return {"tmp_removed": removed, "fetching_reset": len(reset)}

    def stored_files(self) -> Iterator[tuple[str, Path]]:
        """(hash, path) of every file in place."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for p in sorted(sub.iterdir()):
                if is_hash(p.name) and p.name[:2] == sub.name and p.is_file():
                    yield p.name, p

    def verify(self) -> dict[str, Any]:
        """Re-hash every stored file (spec 03 §7 Housekeeping). A file whose bytes do not hash
        to its name is deleted and its blob marked `corrupt` (a fetch or a new upload of the
        same content restores it); a `present` row without its file becomes `missing`."""
        ok: list[str] = []
        corrupt: list[str] = []
        seen: set[str] = set()
        for h, path in self.stored_files():
            seen.add(h)
            hasher = blake3.blake3()
            size = 0
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
            if hasher.hexdigest() == h:
                self._put(h, size=size, state="present", verified_at=self.now_ms())
                ok.append(h)
            else:
                path.unlink(missing_ok=True)
                self._put(h, size=None, state="corrupt")
                corrupt.append(h)
        with self.lock:
            rows = [h for (h,) in self.conn.execute(
                "SELECT hash FROM blob_store WHERE state = 'present'")]
        missing = sorted(h for h in rows if h not in seen)
        for h in missing:
            self._put(h, size=None, state="missing")
        return {"checked": len(seen), "ok": len(ok), "corrupt": corrupt, "missing": missing}

    def link_into(self, other: BlobStore, hashes: list[str]) -> int:
        """Hard-link (copy when linking fails) these stored blobs into another store (a fork);
        returns how many were added there."""
        added = 0
        for h in hashes:
            row = self.info(h)
            src = self.path_of(h)
            if row is None or row.state != "present" or not src.is_file():
                continue
            dest = other.path_of(h)
            if dest.is_file():
                continue
            other._dir(dest.parent)
            tmp = other._temp(h, ".link")
            try:
                try:
                    os.link(src, tmp)
                except OSError:
                    _copy(src, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            other._put(h, size=row.size, state="present", mime=row.mime, name=row.name,
                       stored_at=other.now_ms())
            added += 1
        return added


def _copy(src: Path, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["MAX_SIZE", "BlobCorrupt", "BlobInfo", "BlobStore", "BlobTooLarge",
           "BlobUnavailable", "BlobUnknown", "Stored", "Upload", "check_hash", "clean_mime",
           "clean_name", "hash_bytes", "is_hash", "read_meta", "referenced"]
