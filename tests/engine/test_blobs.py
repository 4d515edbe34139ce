"""The blob store (spec 03 §7) and blob metadata on the write path, without a runtime.

Store: streamed round trip, dedupe, the size cap, interrupted uploads, the fetcher's verified
part files, verify, housekeeping. Workspace: an attachment writes `PutConfig("blob", …)` in the
same bundle, unknown hashes are refused, overlays and forks carry blobs along.
"""

from __future__ import annotations

import io
import itertools
import os
import stat
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from openprod.core import codec
from openprod.core.errors import ValidationError
from openprod.engine import blobs as blobmod
from openprod.engine.blobs import BlobCorrupt, BlobStore, BlobTooLarge, BlobUnknown
from openprod.engine.workspace import Workspace
from openprod.storage import db
from tests.helpers import Net, Peer


def _store(tmp_path: Path, **kw: object) -> BlobStore:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return BlobStore(tmp_path / "blobs", db.connect(tmp_path / "oplog.db"), **kw)  # type: ignore[arg-type]


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the store -----------------------------------------------------------------------------------

def test_streamed_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    with store.upload(name="../../etc/Show plan.pdf", mime="application/pdf") as up:
        for i in range(0, len(data), 64 * 1024):  # the API writes chunk by chunk
            up.write(data[i:i + 64 * 1024])
        assert up.offset == len(data)
        stored = up.finish()
    h = _b3(data)
    assert stored.info.hash == h and not stored.deduped
    assert stored.to_json() == {"hash": h, "size": len(data), "mime": "application/pdf",
                                "name": "Show plan.pdf", "deduped": False}
    path = store.path_of(h)
    assert path == tmp_path / "blobs" / h[:2] / h
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "blobs").stat().st_mode) == 0o700
    assert store.state(h) == "present"
    with store.open(h) as f:
        assert f.read() == data
    assert _files(store.tmp) == []  # the temporary file was moved, not copied
    info = store.info(h)
    assert info is not None and info.size == len(data) and info.stored_at is not None


@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=6))
def test_chunking_never_changes_the_hash(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                         cuts: list[int]) -> None:
    store = _store(tmp_path_factory.mktemp("chunks"))
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    with store.upload() as up:
        for a, b in itertools.pairwise(bounds):
            up.write(data[a:b])
        stored = up.finish()
    assert stored.info.hash == _b3(data)
    assert store.path_of(stored.info.hash).read_bytes() == data
    store.close()


def test_dedupe_stores_identical_content_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = store.put_bytes(b"same bytes", name="a.txt", mime="text/plain")
    inode = store.path_of(first.info.hash).stat().st_ino
    second = store.put_bytes(b"same bytes", name="b.txt", mime="text/plain")
    assert second.deduped and second.info.hash == first.info.hash
    assert store.path_of(first.info.hash).stat().st_ino == inode  # the first file was kept
    assert _files(store.root) == [store.path_of(first.info.hash)]
    assert second.info.name == "b.txt"  # the latest upload names it (for the next attachment)
    assert second.info.stored_at == first.info.stored_at
    other = store.put_bytes(b"other bytes")
    assert not other.deduped and len(_files(store.root)) == 2
    assert other.to_json()["name"] == f"blob-{other.info.hash[:12]}"
    assert other.to_json()["mime"] == "application/octet-stream"


def test_size_cap(tmp_path: Path) -> None:
    store = _store(tmp_path, max_size=100)
    assert store.put_bytes(b"x" * 100).info.size == 100  # exactly the cap is fine
    up = store.upload()
    up.write(b"y" * 60)
    with pytest.raises(BlobTooLarge) as exc:
        up.write(b"y" * 41)
    assert exc.value.code == "blob_too_large" and exc.value.details["limit"] == 100
    assert _files(store.tmp) == []  # the upload was aborted
    assert store.state(_b3(b"y" * 60)) is None and store.state(_b3(b"y" * 101)) is None
    assert blobmod.MAX_SIZE == 2 * 1024 ** 3


def test_interrupted_upload_leaves_no_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(200_000)
    with pytest.raises(ConnectionError), store.upload(name="cut.bin") as up:
        up.write(data[:100_000])
        assert len(_files(store.tmp)) == 1
        raise ConnectionError("client went away")
    assert _files(store.root) == []
    assert store.state(_b3(data)) is None and store.state(_b3(data[:100_000])) is None
    up.abort()  # idempotent
    with pytest.raises(ValidationError, match="closed"):
        up.write(b"more")


def test_fetch_parts_are_verified(tmp_path: Path) -> None:
    """The BlobFetcher's path: begin_part → write (resumable at `offset`) → commit_part."""
    store = _store(tmp_path)
    data = os.urandom(300_000)
    h = _b3(data)
    part = store.begin_part(h, size=len(data))
    assert store.state(h) == "fetching"
    assert part.path.parent == store.tmp and part.path.name.startswith(h)
    part.write(data[:120_000])
    part.write(data[part.offset:])  # another peer continues at the same offset
    stored = store.commit_part(h, part)
    assert stored.info.state == "present" and store.path_of(h).read_bytes() == data

    # a peer sending wrong bytes: the part is deleted, the blob is missing again
    good = os.urandom(50_000)
    g = _b3(good)
    bad = store.begin_part(g, size=len(good))
    bad.write(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(BlobCorrupt):
        store.commit_part(g, bad)
    assert store.state(g) == "missing"
    assert not store.path_of(g).exists() and _files(store.tmp) == []
    # more bytes than the recorded size are refused at once
    over = store.begin_part(g, size=len(good))
    with pytest.raises(BlobTooLarge):
        over.write(good + b"!")
    assert _files(store.tmp) == []
    # giving up leaves the blob missing; a part of another blob cannot be committed
    p2 = store.begin_part(g)
    with pytest.raises(ValidationError, match="another blob"):
        store.commit_part(h, p2)
    store.abort_part(g, p2)
    assert store.state(g) == "missing" and _files(store.tmp) == []


def test_verify_detects_corruption(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a = store.put_bytes(b"alpha" * 1000).info.hash
    b = store.put_bytes(b"bravo" * 1000).info.hash
    c = store.put_bytes(b"charlie").info.hash
    clean = store.verify()
    assert clean == {"checked": 3, "ok": 3, "corrupt": [], "missing": []}
    path = store.path_of(b)
    raw = bytearray(path.read_bytes())
    raw[1234] ^= 0xFF  # one flipped bit on disk
    path.write_bytes(bytes(raw))
    store.path_of(c).unlink()  # and one file deleted by hand
    report = store.verify()
    assert report == {"checked": 2, "ok": 1, "corrupt": [b], "missing": [c]}
    assert store.state(a) == "present" and store.state(b) == "corrupt"
    assert store.state(c) == "missing"
    assert not path.exists()  # never served again
    with pytest.raises(blobmod.BlobUnavailable):
        store.open(b)
    info = store.info(a)
    assert info is not None and info.verified_at is not None
    # the same content uploaded again repairs it
    assert store.put_bytes(b"bravo" * 1000).info.state == "present"
    assert store.verify()["corrupt"] == []


def test_housekeeping(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.tmp.mkdir(parents=True)
    old, fresh = store.tmp / "upload.old.part", store.tmp / "upload.new.part"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"an upload in progress")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    h = _b3(b"wanted")
    store.begin_part(h).abort()  # a fetch that did not survive the restart
    assert store.state(h) == "fetching"
    assert store.housekeep() == {"tmp_removed": 1, "fetching_reset": 1}
    assert not old.exists() and fresh.exists()
    assert store.state(h) == "missing"


def test_a_file_without_a_row_is_present(tmp_path: Path) -> None:
    """A file put in place by other means (a fork's hard link, a backup) counts."""
    store = _store(tmp_path)
    data = b"restored from a backup"
    h = _b3(data)
    assert store.state(h) is None
    store.path_of(h).parent.mkdir(parents=True)
    store.path_of(h).write_bytes(data)
    assert store.state(h) == "present"
    info = store.info(h)
    assert info is not None and info.size == len(data)
    assert info.meta() == {"size": len(data), "mime": "application/octet-stream",
                           "name": f"blob-{h[:12]}"}


def test_names_types_and_hashes() -> None:
    assert blobmod.clean_name("C:\\Users\\me\\cue sheet.xlsx") == "cue sheet.xlsx"
    assert blobmod.clean_name("a\x00b\n.txt") == "ab.txt"
    assert blobmod.clean_name("..") is None and blobmod.clean_name("") is None
    assert len(blobmod.clean_name("x" * 1000) or "") == 255
    assert blobmod.clean_mime("Image/PNG; q=1") == "image/png"
    assert blobmod.clean_mime("application/x-www-form-urlencoded", "plot.pdf") \
        == "application/pdf"
    assert blobmod.clean_mime(None, "notes.unknownext") == "application/octet-stream"
    assert blobmod.clean_mime("not a type", None) == "application/octet-stream"
    assert blobmod.is_hash(_b3(b"x"))
    for bad in (None, "", "AB" * 32, "ab" * 31, "zz" * 32, "ab" * 33):
        assert not blobmod.is_hash(bad)


# --- thumbnails -----------------------------------------------------------------------------------

def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_thumbnail_is_made_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    h = store.put_bytes(_png(1024, 512), mime="image/png").info.hash
    path = store.thumbnail(h)
    assert path == tmp_path / "blobs" / ".thumbs" / f"{h}.png"
    with Image.open(path) as im:
        assert im.size == (256, 128)
    made = path.read_bytes()
    path.write_bytes(b"marker")  # a second call that made it again would overwrite this
    assert store.thumbnail(h) == path and path.read_bytes() == b"marker"
    path.write_bytes(made)
    small = store.put_bytes(_png(40, 30)).info.hash
    small_path = store.thumbnail(small)
    assert small_path is not None
    with Image.open(small_path) as im:
        assert im.size == (40, 30)  # never enlarged
    assert store.thumbnail(store.put_bytes(b"plain text").info.hash) is None
    with pytest.raises(blobmod.BlobUnavailable):
        store.thumbnail(_b3(b"never stored"))
    assert _files(store.tmp) == []


# --- the write path -------------------------------------------------------------------------------

def _files_table(p: Peer) -> str:
    p.ws.create_table("Files", [{"label": "Name"}, {"label": "File", "type": "blob_ref"}])
    return "Files"


def _bundle_ops(ws: Workspace, after: int) -> list[tuple[bytes, str, dict[str, object]]]:
    return [(o.bundle_id, o.t, codec.decode(o.body)["p"]) for o in ws.storage.ops_after(after)]


def test_attaching_writes_the_metadata_in_the_same_bundle(net: Net) -> None:
    a, b = net.add_peer("a"), net.add_peer("b")
    t = _files_table(a)
    stored = a.ws.blobs.put_bytes(b"%PDF-1.4 lighting plot", name="plot.pdf",
                                  mime="application/pdf")
    h = stored.info.hash
    head = a.ws.storage.head_seq()
    rec = a.ws.create_record(t, {"Name": "Plot", "File": h})
    ops = _bundle_ops(a.ws, head)
    assert len({bid for bid, _, _ in ops}) == 1  # one bundle
    configs = [p for _, kind, p in ops if kind == "PutConfig"]
    assert configs == [{"ns": "blob", "key": h, "value": {
        "size": stored.info.size, "mime": "application/pdf", "name": "plot.pdf"}}]
    assert a.ws.get_record(rec.id)["values"][a.ws.views.table(t).field("File").name] == h
    assert blobmod.read_meta(a.ws.views.conn, h) == configs[0]["value"]
    # the second attachment of the same file writes no metadata again
    head = a.ws.storage.head_seq()
    a.ws.create_record(t, {"Name": "Copy", "File": h})
    assert [kind for _, kind, _ in _bundle_ops(a.ws, head)].count("PutConfig") == 0
    # a teammate sees the metadata without the file, and may attach it elsewhere too
    net.sync(a, b)
    assert blobmod.read_meta(b.ws.views.conn, h) == configs[0]["value"]
    assert b.ws.blobs.synced_meta(h) == configs[0]["value"]  # the fetcher's recorded size
    assert b.ws.blobs.state(h) is None
    b.ws.create_record(t, {"Name": "Linked", "File": h})


def test_unknown_hash_is_refused(net: Net) -> None:
    a = net.add_peer("a")
    t = _files_table(a)
    head = a.ws.storage.head_seq()
    with pytest.raises(BlobUnknown) as exc:
        a.ws.create_record(t, {"Name": "x", "File": _b3(b"never uploaded")})
    assert exc.value.code == "blob_unknown" and exc.value.details["field"]
    rec = a.ws.create_record(t, {"Name": "y"}).id
    head = a.ws.storage.head_seq()
    with pytest.raises(BlobUnknown):
        a.ws.update_record(rec, {"File": _b3(b"never uploaded")})
    assert a.ws.storage.head_seq() == head
    a.ws.update_record(rec, {"File": None})  # detaching is always fine


def test_overlay_commit_carries_the_metadata(net: Net) -> None:
    a = net.add_peer("a")
    t = _files_table(a)
    rec = a.ws.create_record(t, {"Name": "Set model"}).id
    h = a.ws.blobs.put_bytes(b"model", name="model.glb").info.hash
    oid = a.ws.create_overlay("Staging")
    head = a.ws.storage.head_seq()
    assert a.ws.update_record(rec, {"File": h}).staged
    assert a.ws.storage.head_seq() == head and blobmod.read_meta(a.ws.views.conn, h) is None
    a.ws.commit_overlay(oid)
    ops = _bundle_ops(a.ws, head)
    assert len({bid for bid, _, _ in ops}) == 1
    assert [p["key"] for _, kind, p in ops if kind == "PutConfig"] == [h]
    assert blobmod.read_meta(a.ws.views.conn, h) == {
        "size": 5, "mime": "application/octet-stream", "name": "model.glb"}


def test_fork_links_referenced_blobs(net: Net, tmp_path: Path) -> None:
    a = net.add_peer("a")
    t = _files_table(a)
    kept = a.ws.blobs.put_bytes(b"referenced", name="r.txt", mime="text/plain").info.hash
    loose = a.ws.blobs.put_bytes(b"uploaded but never attached").info.hash
    a.ws.create_record(t, {"Name": "r", "File": kept})
    fork, _ = a.ws.fork(tmp_path / "fork", "Fork")
    try:
        assert fork.blobs.state(kept) == "present" and fork.blobs.state(loose) is None
        src, dest = a.ws.blobs.path_of(kept), fork.blobs.path_of(kept)
        assert dest.read_bytes() == b"referenced"
        assert dest.stat().st_ino == src.stat().st_ino  # a hard link, not a copy
        assert blobmod.read_meta(fork.views.conn, kept) == {
            "size": 10, "mime": "text/plain", "name": "r.txt"}
        assert blobmod.referenced(fork.views.conn) == [kept]
    finally:
        fork.close()
