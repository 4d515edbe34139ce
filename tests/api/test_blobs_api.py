"""Blobs through the API in-process (spec 05 §5 "Blobs", 03 §7, J9): upload, attach, download,
ranges, thumbnails, refusals, and a blob this node knows of but does not hold (202)."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import blake3
import pypdfium2 as pdfium
import pytest
import trio
import trio.testing
from PIL import Image

from actors import api_blobs
from openprod.core import codec, ids
from openprod.engine import blobs as blobmod
from openprod.engine import thumbnails
from openprod.engine.workspace import Workspace
from tests.api.conftest import HOST, Api, error_of


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


async def upload(api: Api, data: bytes, name: str | None = None,
                 mime: str | None = "application/octet-stream", *,
                 status: int = 200) -> dict[str, Any]:
    path = "/blobs/upload" + (f"?name={name}" if name is not None else "")
    headers = {"Content-Type": mime} if mime is not None else {"Content-Type": ""}
    resp = await api.request("POST", path, data=data, headers=headers)
    body: dict[str, Any] = await resp.get_json()
    assert resp.status_code == status, body
    return body


async def files_table(api: Api) -> tuple[str, str]:
    """A table with a file field: (table id, the field's name)."""
    r = await api.ok("POST", "/tables/create", {"label": "Plots", "fields": [
        {"label": "Name"}, {"label": "File", "type": "blob_ref"}]})
    tables = (await api.ok("GET", "/tables/list"))["tables"]
    t = next(x for x in tables if x["id"] == r["table"])
    return t["id"], next(f["name"] for f in t["fields"] if f["label"] == "File")


def _image(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    im = Image.new(mode, size, (10, 120, 200, 128)[:len(mode)])
    for x in range(0, size[0], 7):  # some detail, so the encoders have work to do
        im.putpixel((x, x % size[1]), (250, 250, 0, 255)[:len(mode)])
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _pdf(width: float, height: float) -> bytes:
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(width, height)
    pdf.new_page(height, width)  # only the first page is shown
    buf = io.BytesIO()
    pdf.save(buf)
    pdf.close()
    return buf.getvalue()


async def path_of(api: Api, path: str) -> str | None:
    """A concrete path for the parametrised blob routes (for tests/api/test_api.py)."""
    if path == "/blobs/<hash>/info":
        return f"/blobs/{(await upload(api, b'a file', 'a.txt', 'text/plain'))['hash']}/info"
    return None


async def _ops(api: Api, after: int) -> list[tuple[bytes, str, dict[str, Any]]]:
    def read(ws: Workspace) -> list[tuple[bytes, str, dict[str, Any]]]:
        return [(o.bundle_id, o.t, codec.decode(o.body)["p"]) for o in ws.storage.ops_after(after)]
    return await api.node.current.writer.call(read)


# --- upload, attach, download -----------------------------------------------------------------

async def test_upload_attach_download_round_trip(api: Api) -> None:
    table, field = await files_table(api)
    data = _image("PNG", (300, 200))
    up = await upload(api, data, quote("Stage plot.png"), "image/png")
    h = _b3(data)
    assert up == {"hash": h, "size": len(data), "mime": "image/png", "name": "Stage plot.png",
                  "deduped": False, "seq": up["seq"]}
    store = api.node.current.ws.blobs
    assert store.path_of(h).read_bytes() == data

    rec = await api.record(table, Name="Plot")
    head = await api.head()
    r = await api.ok("POST", "/records/update", {"id": rec, "values": {field: h}})
    ops = await _ops(api, head)
    assert {bid for bid, _, _ in ops} == {ids.from_text(r["bundle_id"])}  # one bundle
    assert [t for _, t, _ in ops] == ["SetField", "PutConfig"]
    assert ops[1][2] == {"ns": "blob", "key": h,
                         "value": {"size": len(data), "mime": "image/png",
                                   "name": "Stage plot.png"}}
    # reads keep the 64-hex value; the metadata is one GET away
    assert (await api.ok("GET", f"/records/{rec}"))["values"][field] == h
    info = await api.ok("GET", f"/blobs/{h}/info")
    assert info == {"hash": h, "size": len(data), "mime": "image/png",
                    "name": "Stage plot.png", "state": "present", "attached": True}

    resp = await api.get(f"/blobs/{h}")
    assert resp.status_code == 200
    assert await resp.get_data() == data
    hd = resp.headers
    assert hd["Content-Type"] == "image/png"
    assert hd["Content-Disposition"] == 'inline; filename="Stage plot.png"'
    assert hd["ETag"] == f'"{h}"' and hd["Accept-Ranges"] == "bytes"
    assert hd["Content-Length"] == str(len(data))
    assert hd["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in hd["Cache-Control"]
    # the browser's cached copy is still good
    again = await api.get(f"/blobs/{h}", headers={"If-None-Match": f'"{h}"'})
    assert again.status_code == 304 and await again.get_data() == b""

    # the same bytes again are stored once
    dup = await upload(api, data, "copy.png", "image/png")
    assert dup["deduped"] is True and dup["hash"] == h
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == [h]


async def test_big_upload_is_not_held_to_the_json_body_limit(api: Api) -> None:
    """20 MiB in one request: over the 16 MiB limit of JSON bodies, under the blob cap."""
    data = os.urandom(20 * 1024 * 1024)
    up = await upload(api, data, "video.mov", None)
    assert up["hash"] == _b3(data) and up["size"] == len(data)
    assert up["mime"] == "video/quicktime"  # guessed from the name
    resp = await api.get(f"/blobs/{up['hash']}", headers={"Range": "bytes=-5"})
    assert resp.status_code == 206 and await resp.get_data() == data[-5:]


async def test_upload_streams_in_chunks_with_backpressure(api: Api,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The server reads the socket only while less than 1 MiB of the body is unread: with the
    store stuck on its first write, the connection stops asking for more."""
    chunk = os.urandom(256 * 1024)
    n_chunks = 40
    asked = 0
    release = threading.Event()
    real_write = blobmod.Upload.write

    def slow_write(self: blobmod.Upload, data: bytes) -> None:
        release.wait(30)
        real_write(self, data)

    monkeypatch.setattr(blobmod.Upload, "write", slow_write)

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked <= n_chunks:
            return {"type": "http.request", "body": chunk, "more_body": asked < n_chunks}
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async with trio.open_nursery() as n:
        n.start_soon(api.app, _scope(api, "name=big.bin"), receive, send)
        try:
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            # the handler holds at most 1 MiB in the stuck write and 1 MiB gathered behind
            # it, and at most 1 MiB more waits in the body: 14 chunks of 256 KiB, far from 40
            held = api_blobs.HIGH_WATER + 2 * api_blobs.WRITE_CHUNK
            assert asked <= held // len(chunk) + 2
        finally:
            release.set()
        with trio.fail_after(30):
            while not any(m["type"] == "http.response.body" for m in sent):
                await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status == 200 and asked == n_chunks + 1
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body)["hash"] == _b3(chunk * n_chunks)


def _scope(api: Api, query: str) -> dict[str, Any]:
    return {"type": "http", "http_version": "1.1", "asgi": {"spec_version": "2.1"},
            "method": "POST", "scheme": "http", "path": "/blobs/upload",
            "raw_path": b"/blobs/upload", "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", HOST.encode()),
                        (b"authorization", f"Bearer {api.token}".encode()),
                        (b"content-type", b"application/octet-stream")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 0), "extensions": {}}


async def test_interrupted_upload_leaves_no_file(api: Api,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = api.node.current.ws.blobs
    wrote = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real_write = blobmod.Upload.write

    def write(self: blobmod.Upload, data: bytes) -> None:
        real_write(self, data)
        trio.from_thread.run_sync(wrote.set, trio_token=token)

    monkeypatch.setattr(blobmod.Upload, "write", write)
    part = os.urandom(api_blobs.WRITE_CHUNK + 1000)  # written at once, not held back
    msgs: list[dict[str, Any]] = [{"type": "http.request", "body": part, "more_body": True}]

    async def receive() -> dict[str, Any]:
        if msgs:
            return msgs.pop()
        await wrote.wait()  # the first part is in the temporary file: now the client leaves
        assert [p for p in store.tmp.iterdir()]
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    with trio.fail_after(10):
        await api.app(_scope(api, "name=cut.bin"), receive, send)
    assert sent == []  # nobody to answer
    assert list(store.tmp.iterdir()) == []
    assert store.state(_b3(part)) is None


# --- ranges -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "lo", "hi"), [
    ("bytes=0-99", 0, 99), ("bytes=900-", 900, 999), ("bytes=-10", 990, 999),
    ("bytes=990-5000", 990, 999), ("bytes=0-0", 0, 0), ("bytes= 5 - 9", 5, 9),
    ("bytes=-5000", 0, 999)])
async def test_range_requests(api: Api, spec: str, lo: int, hi: int) -> None:
    data = os.urandom(1000)
    h = (await upload(api, data, "cue.wav", "audio/wav"))["hash"]
    resp = await api.get(f"/blobs/{h}", headers={"Range": spec})
    assert resp.status_code == 206, spec
    assert await resp.get_data() == data[lo:hi + 1]
    assert resp.headers["Content-Range"] == f"bytes {lo}-{hi}/1000"
    assert resp.headers["Content-Length"] == str(hi - lo + 1)
    assert resp.headers["Content-Type"] == "audio/wav"
    # a range for another version of the file (If-Range) gets the whole file
    whole = await api.get(f"/blobs/{h}", headers={"Range": spec, "If-Range": '"other"'})
    assert whole.status_code == 200 and await whole.get_data() == data
    same = await api.get(f"/blobs/{h}", headers={"Range": spec, "If-Range": f'"{h}"'})
    assert same.status_code == 206


async def test_bad_and_ignored_ranges(api: Api) -> None:
    data = os.urandom(1000)
    h = (await upload(api, data))["hash"]
    for spec in ("bytes=1000-", "bytes=5-2", "bytes=abc", "bytes=-0", "bytes=-", "bytes=1-2-3"):
        resp = await api.get(f"/blobs/{h}", headers={"Range": spec})
        err = await error_of(resp, 416, "range_not_satisfiable")
        assert err["details"] == {"size": 1000}
        assert resp.headers["Content-Range"] == "bytes */1000"
    # several ranges, or another unit: the whole file (a server may ignore Range)
    for spec in ("bytes=0-1,5-6", "items=0-1"):
        resp = await api.get(f"/blobs/{h}", headers={"Range": spec})
        assert resp.status_code == 200 and await resp.get_data() == data
    empty = (await upload(api, b"", "empty.txt"))["hash"]
    resp = await api.get(f"/blobs/{empty}")
    assert resp.status_code == 200 and await resp.get_data() == b""
    await error_of(await api.get(f"/blobs/{empty}", headers={"Range": "bytes=0-"}), 416,
                   "range_not_satisfiable")


# --- refusals -----------------------------------------------------------------------------------

async def test_bad_and_unknown_hashes(api: Api) -> None:
    unknown = _b3(b"nobody has this")
    for path in ("/blobs/xyz", f"/blobs/{unknown.upper()}", f"/blobs/{unknown[:-1]}",
                 "/blobs/xyz/info", "/blobs/xyz/thumbnail", "/blobs/upload"):
        err = await error_of(await api.get(path), 400, "invalid")
        assert err["details"] == {"field": "hash"}
    for path in (f"/blobs/{unknown}", f"/blobs/{unknown}/info", f"/blobs/{unknown}/thumbnail"):
        err = await error_of(await api.get(path), 404, "unavailable")
        assert err["details"] == {"hash": unknown}
    await error_of(await api.request("DELETE", f"/blobs/{unknown}"), 405, "method_not_allowed")


async def test_attaching_an_unknown_hash_is_400(api: Api) -> None:
    table, field = await files_table(api)
    rec = await api.record(table, Name="x")
    head = await api.head()
    unknown = _b3(b"never uploaded")
    for path, body in (("/records/update", {"id": rec, "values": {field: unknown}}),
                       ("/records/create", {"table": table, "values": {field: unknown}})):
        err = await error_of(await api.post(path, body), 400, "blob_unknown")
        assert err["details"] == {"field": field, "hash": unknown}
        assert "upload" in err["message"]
    err = await error_of(await api.post("/records/update", {"id": rec, "values": {
        field: "not-a-hash"}}), 400, "invalid")
    assert await api.head() == head


async def test_upload_size_cap_is_413(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    store = api.node.current.ws.blobs
    # announced too big: refused before a byte is read
    async with api.client.request("/blobs/upload", method="POST", headers={
            **api.headers, "Content-Length": str(blobmod.MAX_SIZE + 1)}) as conn:
        await conn.send_complete()
    err = await error_of(await conn.as_response(), 413, "blob_too_large")
    assert err["details"]["limit"] == blobmod.MAX_SIZE
    # too big as it streams (a lower cap keeps the test small): nothing stays behind
    monkeypatch.setattr(store, "max_size", 1000)
    async with api.client.request("/blobs/upload?name=big.bin", method="POST",
                                  headers=api.headers) as conn:
        for _ in range(3):
            await conn.send(b"z" * 400)
        await conn.send_complete()
    err = await error_of(await conn.as_response(), 413, "blob_too_large")
    assert err["details"] == {"limit": 1000}
    assert list(store.tmp.iterdir()) == [] and store.state(_b3(b"z" * 1200)) is None
    assert (await upload(api, b"z" * 1000))["size"] == 1000  # exactly the cap


async def test_blob_routes_need_the_token_and_this_host(api: Api) -> None:
    h = (await upload(api, _image("PNG", (20, 20)), "a.png", "image/png"))["hash"]
    routes = [("POST", "/blobs/upload"), ("GET", f"/blobs/{h}"), ("GET", f"/blobs/{h}/info"),
              ("GET", f"/blobs/{h}/thumbnail")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = await api.request(method, path, data=b"x", headers=headers, auth=False)
            await error_of(resp, 401, "unauthorized")
        resp = await api.request(method, path, data=b"x", headers={"Host": "evil.example"})
        await error_of(resp, 403, "forbidden")
        resp = await api.request(method, path, data=b"x",
                                 headers={"Origin": "http://evil.example"})
        await error_of(resp, 403, "forbidden")
    # an <img src> in the web UI sends the session cookie
    cookie = await api.get(f"/?token={api.token}", auth=False)
    assert cookie.status_code == 303
    resp = await api.get(f"/blobs/{h}/thumbnail", auth=False,
                         headers={"Cookie": f"openprod_token={api.token}"})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/png"
    assert list(api.node.current.ws.blobs.tmp.iterdir()) == []


async def test_active_content_is_never_shown_inline(api: Api) -> None:
    """An uploaded page must not run in the engine's origin (it would hold the token cookie)."""
    for data, mime, name in ((b"<script>alert(1)</script>", "text/html", "x.html"),
                             (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml",
                              "x.svg")):
        h = (await upload(api, data, name, mime))["hash"]
        resp = await api.get(f"/blobs/{h}")
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(mime)
        assert resp.headers["Content-Disposition"].startswith("attachment")
        assert "sandbox" in resp.headers["Content-Security-Policy"]
    png = (await upload(api, _image("PNG", (8, 8)), "p.png", "image/png"))["hash"]
    resp = await api.get(f"/blobs/{png}?download=1")
    assert resp.headers["Content-Disposition"] == 'attachment; filename="p.png"'


async def test_synced_metadata_is_not_trusted_into_headers(api: Api) -> None:
    """Metadata comes from any peer: malformed values fall back instead of reaching headers."""
    data = b"<html>hello</html>"
    h = _b3(data)
    hostile = {"size": "big", "mime": "text/plain\r\nSet-Cookie: x=1", "name": "../x\r\ny.html"}
    await api.node.current.writer.call(lambda ws: ws.put_config("blob", h, hostile))
    await upload(api, data, "local.html", "text/html")
    resp = await api.get(f"/blobs/{h}")
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    assert resp.headers["Content-Type"] == "text/html"  # guessed from the cleaned name
    assert resp.headers["Content-Disposition"] == 'attachment; filename="xy.html"'
    assert (await api.ok("GET", f"/blobs/{h}/info"))["size"] == len(data)


async def test_head_answers_headers_only(api: Api) -> None:
    data = os.urandom(5000)
    h = (await upload(api, data, "a.bin"))["hash"]
    sent: list[dict[str, Any]] = []
    msgs = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if msgs:
            return msgs.pop()
        await trio.sleep_forever()  # the client waits for the answer
        raise AssertionError  # pragma: no cover

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {**_scope(api, ""), "method": "HEAD", "path": f"/blobs/{h}",
             "raw_path": f"/blobs/{h}".encode()}
    with trio.fail_after(10):
        await api.app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"content-length"] == b"5000" and headers[b"etag"] == f'"{h}"'.encode()
    assert b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body") == b""


async def test_file_names_survive_the_headers(api: Api) -> None:
    """Header values are Latin-1: other names travel as RFC 6266 filename* (UTF-8)."""
    name = 'Plan 日本 "v2".pdf'
    h = (await upload(api, b"%PDF-1.4", quote(name), "application/pdf"))["hash"]
    assert (await api.ok("GET", f"/blobs/{h}/info"))["name"] == name
    resp = await api.get(f"/blobs/{h}")
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"] == (
        "inline; filename=\"Plan __ _v2_.pdf\"; filename*=UTF-8''" + quote(name, safe=""))


# --- thumbnails -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "make", "mime", "size"), [
    ("png", lambda: _image("PNG", (1200, 600), "RGBA"), "image/png", (256, 128)),
    ("jpeg", lambda: _image("JPEG", (640, 960)), "image/jpeg", (171, 256)),
    ("pdf", lambda: _pdf(300, 400), "application/pdf", (192, 256)),
])
async def test_thumbnails(api: Api, monkeypatch: pytest.MonkeyPatch, kind: str,
                          make: Callable[[], bytes], mime: str, size: tuple[int, int]) -> None:
    data = make()
    h = (await upload(api, data, f"file.{kind}", mime))["hash"]
    resp = await api.get(f"/blobs/{h}/thumbnail")
    assert resp.status_code == 200, await resp.get_data()
    assert resp.headers["Content-Type"] == "image/png"
    png = await resp.get_data(as_text=False)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == size
    assert (api.node.current.ws.blobs.root / ".thumbs" / f"{h}.png").read_bytes() == png

    def never(*a: Any) -> bool:
        raise AssertionError("a cached thumbnail is never made again")

    monkeypatch.setattr(thumbnails, "render", never)
    again = await api.get(f"/blobs/{h}/thumbnail")
    assert again.status_code == 200 and await again.get_data() == png
    cached = await api.get(f"/blobs/{h}/thumbnail", headers={"If-None-Match": again.headers[
        "ETag"]})
    assert cached.status_code == 304


async def test_no_thumbnail_for_other_files(api: Api) -> None:
    for data, mime in ((b"just text", "text/plain"),
                       (b"\x89PNG\r\n\x1a\n" + b"broken" * 10, "image/png"),
                       (b"%PDF-1.7 not really a pdf", "application/pdf")):
        h = (await upload(api, data, None, mime))["hash"]
        err = await error_of(await api.get(f"/blobs/{h}/thumbnail"), 404, "no_thumbnail")
        assert err["details"] == {"hash": h}
        assert not (api.node.current.ws.blobs.root / ".thumbs" / f"{h}.png").exists()


# --- known here, but not on this device ---------------------------------------------------------

async def test_metadata_without_the_file_is_202(api: Api,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A teammate attached a file this device has not fetched: 202 with its state."""
    elsewhere = _image("PNG", (64, 64))
    h = _b3(elsewhere)
    meta = {"size": len(elsewhere), "mime": "image/png", "name": "their.png"}
    await api.node.current.writer.call(lambda ws: ws.put_config("blob", h, meta))
    table, field = await files_table(api)
    rec = await api.record(table, Name="shared")
    await api.ok("POST", "/records/update", {"id": rec, "values": {field: h}})  # it is known

    for path in (f"/blobs/{h}", f"/blobs/{h}/thumbnail"):
        resp = await api.get(path)
        assert resp.status_code == 202, await resp.get_data()
        assert await resp.get_json() == {"hash": h, "state": "missing", **meta}
    assert await api.ok("GET", f"/blobs/{h}/info") == {
        "hash": h, **meta, "state": "missing", "attached": True}
    assert api.node.current.ws.blobs.state(h) == "missing"

    # the BlobFetcher takes over at this hook
    async def fetching(node: Any, hh: str, m: Any) -> str:
        assert hh == h and m == meta
        return "fetching"

    monkeypatch.setattr(api_blobs, "blob_missing", fetching)
    assert (await (await api.get(f"/blobs/{h}")).get_json())["state"] == "fetching"
    monkeypatch.undo()

    # once the bytes arrive (here: uploaded), the file is served
    assert (await upload(api, elsewhere, "mine.png", "image/png"))["hash"] == h
    resp = await api.get(f"/blobs/{h}")
    assert resp.status_code == 200 and await resp.get_data() == elsewhere
    # the synced metadata names it, not this upload
    assert resp.headers["Content-Disposition"] == 'inline; filename="their.png"'
    assert (await api.get(f"/blobs/{h}/thumbnail")).status_code == 200
