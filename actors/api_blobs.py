"""HTTP routes for blobs (spec 05 §5 "Blobs", spec 03 §7, J9): upload, download, thumbnail, info.

`GET /blobs/<hash>/info` is an ordinary JSON route (`actors.api.api`). The other three are not
JSON, so `install` registers them on the app itself (like the module views) and `openapi_paths`
describes them:

- `POST /blobs/upload` streams the raw request body into the workspace's BlobStore, written
  1 MiB at a time in a worker thread. The app's 16 MiB MAX_CONTENT_LENGTH does not apply to it:
  the connection class below gives that one path a body without Quart's size limit and with
  backpressure (Quart's own body buffers whatever arrives, unbounded, however slowly the
  handler reads; here reading from the socket waits while 1 MiB is unread), so memory stays
  flat whatever the size; the store's 2 GiB cap answers 413 `blob_too_large`.
- `GET /blobs/<hash>` streams a stored file (ETag = the hash, single byte ranges → 206).
  A blob this node knows of but does not hold answers 202 {state}; `blob_missing` starts (or
  joins) the BlobFetcher's fetch of it.
- `GET /blobs/<hash>/thumbnail`: a 256 px PNG of an image or a PDF's first page, made once in a
  worker thread and cached next to the blobs.

Every route goes through the app's Host/Origin/token guard; browsers authenticate `<img src>`
GETs with the session cookie the page got from `/?token=`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import hypercorn.trio.tcp_server as hypercorn_tcp
import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import EventWrapper, TrioBody

from actors import blocking
from actors.api import ApiError, _after, api, error_body, json_response
from actors.node import Node
from openprod.engine import blobs as blobmod
from openprod.engine.blobs import BlobInfo, BlobStore, BlobTooLarge, BlobUnavailable

UPLOAD_PATH = "/blobs/upload"
HIGH_WATER = 1024 * 1024  # unread upload bytes at which reading from the socket pauses
SEND_CHUNK = 256 * 1024
WRITE_CHUNK = 1024 * 1024
RECV_SIZE = 1024 * 1024  # bytes Hypercorn asks of a connection's socket per read (see install)
THUMBNAILS_AT_ONCE = 2
# types a browser may show inline; anything else (HTML, SVG, scripts…) downloads
INLINE = re.compile(r"image/(png|jpeg|gif|webp|avif|bmp)|audio/.+|video/.+|text/plain"
                    r"|application/pdf")
# a document opened from a blob runs in an opaque origin with no scripts (never the engine's)
SANDBOX = "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; " \
          "style-src 'unsafe-inline'"
CACHE = "private, max-age=31536000, immutable"  # content-addressed: the bytes never change
_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


# --- streaming request bodies ---------------------------------------------------------------

class StreamedBody(TrioBody):
    """A request body with no size limit that the handler consumes as it arrives
    (`async for chunk in request.body`); `room` is clear while HIGH_WATER bytes are unread."""

    def __init__(self, expected_content_length: int | None) -> None:
        super().__init__(expected_content_length, None)
        self.room = EventWrapper()
        self.room.set()

    def append(self, data: bytes) -> None:
        super().append(data)
        if len(self._data) >= HIGH_WATER:
            self.room.clear()

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        finally:
            self.room.set()


class StreamingConnection(TrioASGIHTTPConnection):
    """Quart-Trio's HTTP connection, except that `POST /blobs/upload` gets a StreamedBody and
    the server is read only while that body has room (Hypercorn's bounded queue then stops
    reading the socket: TCP flow control slows the client)."""

    def _create_request_from_scope(self, send: Any) -> Any:
        req = super()._create_request_from_scope(send)
        if self.scope["method"] == "POST" and req.path == UPLOAD_PATH:
            req.body = StreamedBody(req.content_length)
        return req

    async def handle_messages(self, nursery: trio.Nursery, request: Any,  # type: ignore[override]
                              receive: Any) -> None:
        body = request.body
        if not isinstance(body, StreamedBody):
            await super().handle_messages(nursery, request, receive)
            return
        while True:
            await body.room.wait()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


# --- helpers --------------------------------------------------------------------------------

def _store(node: Node) -> BlobStore:
    return node.current.ws.blobs


async def _meta(node: Node, h: str) -> dict[str, Any] | None:
    """The synced metadata of blob h (an attachment wrote it), read from the state."""
    return await node.current.reader.read(lambda v: blobmod.read_meta(v.conn, h))


def _described(h: str, meta: dict[str, Any] | None, row: BlobInfo | None) -> dict[str, Any]:
    """{size, mime, name}: the synced metadata, else this node's record of the upload. The
    synced values come from any peer: only well-formed ones are used (they end up in headers)."""
    base: dict[str, Any] = row.meta() if row is not None else {
        "size": None, "mime": blobmod.DEFAULT_MIME, "name": blobmod.default_name(h)}
    if meta:
        size, mime, name = meta.get("size"), meta.get("mime"), meta.get("name")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            base["size"] = size
        if isinstance(name, str) and blobmod.clean_name(name):
            base["name"] = blobmod.clean_name(name)
        if isinstance(mime, str):
            base["mime"] = blobmod.clean_mime(mime, base["name"])
    return base


async def blob_missing(node: Node, h: str, meta: dict[str, Any] | None) -> str:
    """A GET asked for an attachment whose file is not here: the BlobFetcher starts (or joins)
    its fetch from the peers that hold it (spec 03 §7 Fetch) → `fetching`. With no peer
    connected it is `missing` ("Not on this device yet"); the fetcher tries again when a peer
    connects and every 60 s."""
    size = meta.get("size") if meta else None
    if not isinstance(size, int) or isinstance(size, bool):
        size = None
    fetcher = node.current.sync.blobs
    if fetcher.request(h, size):
        return "fetching"
    store = _store(node)
    await blocking.run_sync(lambda: store.set_state(h, "missing", size=size))
    return "missing"


async def _not_here(node: Node, h: str, row: BlobInfo | None) -> Response:
    """202 {state} for a blob this workspace describes (or this node awaits), else 404."""
    meta = await _meta(node, h)
    if meta is None and row is None:
        raise BlobUnavailable(f"no file with hash {h} is known here", hash=h)
    state = await blob_missing(node, h, meta)
    return json_response({"hash": h, "state": state, **_described(h, meta, row)}, 202)


def content_disposition(mime: str, name: str, download: bool) -> str:
    """`inline` for the types a browser may show, else `attachment`, with the file name: an
    ASCII fallback and, when that differs, the UTF-8 name (RFC 6266; headers are Latin-1)."""
    kind = "inline" if not download and INLINE.fullmatch(mime) is not None else "attachment"
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", name)
    value = f'{kind}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range [start, end] (inclusive) a Range header asks for, None to send the
    whole file (no header, another unit, several ranges), ValueError when unsatisfiable."""
    if header is None or not header.strip().lower().startswith("bytes="):
        return None
    specs = header.strip()[6:].split(",")
    if len(specs) != 1:
        return None  # multipart/byteranges is not offered: the whole file (RFC 9110 §14.2)
    m = _RANGE.fullmatch(specs[0])
    if m is None or (not m[1] and not m[2]):
        raise ValueError("malformed range")
    if not m[1]:  # the last n bytes
        n = int(m[2])
        if n == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size - 1
    start = int(m[1])
    end = int(m[2]) if m[2] else size - 1
    if start > end or start >= size:
        raise ValueError("range outside the file")
    return start, min(end, size - 1)


async def _chunks(store: BlobStore, h: str, start: int, length: int) -> AsyncIterator[bytes]:
    """The bytes [start, start+length) of a stored blob, read in worker threads."""
    f = await blocking.run_sync(store.open, h)
    try:
        await blocking.run_sync(f.seek, start)
        left = length
        while left > 0:
            chunk = await blocking.run_sync(f.read, min(SEND_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        f.close()


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


# --- routes ---------------------------------------------------------------------------------

@api("/blobs/<hash>/info", "GET", "A blob's metadata {hash, size, mime, name} and its state "
     "here: present, fetching, missing or corrupt (404 unavailable when unknown)",
     query=("after",))
async def blob_info(node: Node, body: Any, hash: str) -> dict[str, Any]:
    h = blobmod.check_hash(hash)
    await _after(node)
    meta = await _meta(node, h)
    row = await blocking.run_sync(_store(node).info, h)
    if meta is None and row is None:
        raise BlobUnavailable(f"no file with hash {h} is known here", hash=h)
    state = row.state if row is not None else "missing"
    if state != "present" and h in node.current.sync.blobs.jobs:
        state = "fetching"  # a fetch job runs (its part file may not be opened yet)
    return {"hash": h, **_described(h, meta, row), "state": state,
            "attached": meta is not None}


async def upload_blob(node: Node) -> Response:
    session = node.current
    store = session.ws.blobs
    name = blobmod.clean_name(request.args.get("name"))
    mime = blobmod.clean_mime(request.headers.get("Content-Type"), name)
    length = request.content_length
    if length is not None and length > store.max_size:
        raise BlobTooLarge(f"a file may be at most {store.max_size} bytes",
                           limit=store.max_size, size=length)
    up = await blocking.run_sync(lambda: store.upload(name=name, mime=mime))
    with up:  # an upload that fails or is cut off leaves no file behind
        try:
            await _write_behind(up)
        except BaseExceptionGroup as eg:  # the writer's error (e.g. BlobTooLarge) as itself
            if len(eg.exceptions) == 1:
                raise eg.exceptions[0] from None
            raise
        stored = await blocking.run_sync(up.finish)
    return json_response({**stored.to_json(), "seq": session.writer.appended})


async def _write_behind(up: blobmod.Upload) -> None:
    """Copy the request body into the upload: small network reads are joined into WRITE_CHUNK
    pieces, each hashed and written in a worker thread while the next one is received (one
    piece in the thread, one being gathered, at most HIGH_WATER unread in the body)."""
    send, recv = trio.open_memory_channel[bytes](0)

    async def writer() -> None:
        async with recv:
            async for data in recv:
                await blocking.run_sync(up.write, data)

    async with trio.open_nursery() as n:
        n.start_soon(writer)
        async with send:
            parts: list[bytes] = []
            size = 0
            async for chunk in request.body:
                parts.append(chunk)
                size += len(chunk)
                if size >= WRITE_CHUNK:
                    await send.send(b"".join(parts))
                    parts.clear()
                    size = 0
            if parts:
                await send.send(b"".join(parts))


async def get_blob(node: Node, hash: str) -> Response:
    h = blobmod.check_hash(hash)
    store = _store(node)
    row = await blocking.run_sync(store.info, h)
    if row is None or row.state != "present" or row.size is None:
        return await _not_here(node, h, row)
    etag = f'"{h}"'
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        resp = Response(b"", status=304)
        resp.headers["ETag"] = etag
        return resp
    size = row.size
    rng_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        rng_header = None  # the client's copy is another file: send this one whole
    try:
        rng = parse_range(rng_header, size)
    except ValueError:
        resp = json_response(error_body("range_not_satisfiable",
                                        f"the range {rng_header!r} is not within this file "
                                        f"of {size} bytes", {"size": size}), 416)
        resp.headers["Content-Range"] = f"bytes */{size}"
        return resp
    info = _described(h, await _meta(node, h), row)
    mime = str(info["mime"])
    start, end = rng if rng is not None else (0, size - 1)
    length = end - start + 1 if size else 0
    body: Any = b"" if request.method == "HEAD" else _chunks(store, h, start, length)
    resp = Response(body, status=206 if rng else 200, content_type=mime)
    resp.timeout = None  # a big file on a slow link takes its time
    resp.headers["Content-Disposition"] = content_disposition(
        mime, str(info["name"]), request.args.get("download") in ("1", "true"))
    resp.headers["Content-Length"] = str(length)
    resp.headers["ETag"] = etag
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["Cache-Control"] = CACHE
    resp.headers["X-Content-Type-Options"] = "nosniff"
    if mime != "application/pdf":  # the browsers' PDF viewers do not run in a sandbox
        resp.headers["Content-Security-Policy"] = SANDBOX
    if rng is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return resp


async def get_thumbnail(node: Node, hash: str, limiter: trio.CapacityLimiter) -> Response:
    h = blobmod.check_hash(hash)
    store = _store(node)
    path = store.thumbnail_path(h)
    if not await blocking.run_sync(path.is_file):
        row = await blocking.run_sync(store.info, h)
        if row is None or row.state != "present":
            return await _not_here(node, h, row)
        try:
            made = await blocking.run_sync(store.thumbnail, h, limiter=limiter)
        except BlobUnavailable:
            return await _not_here(node, h, await blocking.run_sync(store.info, h))
        if made is None:
            raise ApiError("no_thumbnail", "this file has no thumbnail (only images and PDFs "
                           "have one)", hash=h)
        path = made
    etag = f'"{h}-thumb"'
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        resp = Response(b"", status=304)
        resp.headers["ETag"] = etag
        return resp
    data = await blocking.run_sync(path.read_bytes)
    resp = Response(data, status=200, content_type="image/png")
    resp.headers["ETag"] = etag
    resp.headers["Cache-Control"] = CACHE
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def install(app: QuartTrio, node: Node) -> None:
    """Register the non-JSON blob routes and the streaming connection class on an app."""
    app.asgi_http_class = StreamingConnection
    # Hypercorn reads every connection 64 KiB at a time: a raw upload then pays one trip
    # through h11, the ASGI queue and the body per 64 KiB, half of the engine's CPU for it.
    # Reads of up to 1 MiB double the upload rate; a small request costs ~15 µs more.
    hypercorn_tcp.MAX_RECV = max(hypercorn_tcp.MAX_RECV, RECV_SIZE)
    limiter = trio.CapacityLimiter(THUMBNAILS_AT_ONCE)

    async def upload_view() -> Response:
        return await upload_blob(node)

    async def blob_view(hash: str) -> Response:
        return await get_blob(node, hash)

    async def thumbnail_view(hash: str) -> Response:
        return await get_thumbnail(node, hash, limiter)

    app.add_url_rule(UPLOAD_PATH, endpoint="upload_blob", view_func=upload_view,
                     methods=["POST"])
    app.add_url_rule("/blobs/<hash>", endpoint="get_blob", view_func=blob_view,
                     methods=["GET"])
    app.add_url_rule("/blobs/<hash>/thumbnail", endpoint="get_thumbnail",
                     view_func=thumbnail_view, methods=["GET"])


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI description of the routes `install` registers."""
    sec: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]
    h = [{"name": "hash", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}]
    binary = {"schema": {"type": "string", "format": "binary"}}
    err = {"description": "{error: {code, message, details}}"}
    pending = {"description": "Known but not on this device: {hash, state: fetching|missing, "
                              "size, mime, name}"}
    return {
        "/blobs/upload": {"post": {
            "summary": "Upload a file: the raw request body (at most 2 GiB), streamed; "
                       "?name= and Content-Type give its name and type. Returns "
                       "{hash, size, mime, name, deduped}; attach it by writing the hash "
                       "to a file field",
            "operationId": "upload_blob", "security": sec,
            "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
            "x-raw-body": True,
            "requestBody": {"required": True, "content": {"*/*": binary}},
            "responses": {"200": {"description": "stored"}, "413": err, "4XX": err}}},
        "/blobs/{hash}": {"get": {
            "summary": "A file's bytes (Range: bytes=… answers 206); 202 while it is not "
                       "on this device, 404 unavailable when unknown",
            "operationId": "get_blob", "security": sec,
            "parameters": [*h, {"name": "download", "in": "query",
                                "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file", "content": {"*/*": binary}},
                          "206": {"description": "a byte range"}, "202": pending,
                          "416": err, "4XX": err}}},
        "/blobs/{hash}/thumbnail": {"get": {
            "summary": "A PNG thumbnail (at most 256 px) of an image or a PDF's first page; "
                       "404 no_thumbnail for other files, 202 while the file is not here",
            "operationId": "get_thumbnail", "security": sec, "parameters": h,
            "responses": {"200": {"description": "PNG",
                                  "content": {"image/png": binary}},
                          "202": pending, "4XX": err}}},
    }


__all__ = ["StreamedBody", "StreamingConnection", "blob_missing", "content_disposition",
           "install", "openapi_paths", "parse_range"]
