"""HTTP routes for CSV import and export (spec 05 §4, issue 9). The conversions are
`openprod.engine.csvio`'s; this module owns the uploads, the import run and the streamed export.

Import is three steps:
- `POST /import/csv/upload?table=&name=` streams the raw file into `<home>/tmp/csv/<id>.csv`
  (not held in memory; the app's 16 MiB body limit does not apply, see `install`), detects the
  encoding while writing, then reads it once for the header, the row count, a sample and the
  suggested header → field mapping.
- `POST /import/csv/check` converts every row with the mapping the user confirmed and lists the
  bad cells (row numbers as a spreadsheet shows them: the header is row 1).
- `POST /import/csv` creates an overlay "Import <file>" (source `["import", <file>]`, so its
  commit is an `import` bundle) and stages the valid rows into it, ~500 rows per writer call
  (queries and other commands run between batches), publishing `import_progress`; rules fire
  as for any created record. At the end the overlay becomes the active one (stashing the
  user's) and `overlays_changed` is published.

An upload is deleted once imported or discarded (`POST /import/csv/discard`), and an hour after
it arrived otherwise (checked whenever a CSV route is used). Uploads are in-memory state of this
engine run: a restart forgets them, and their files go an hour after they were written. An
import a crash cut short leaves an overlay marked `running`: the next import discards it.

Export (`GET /export/csv?table=&columns=`, `POST /export/csv {table, columns, ids}`) answers
`text/csv` as the records are rendered, with the table's label as the file name. While an
overlay is active it exports what the grid shows (staged values), like `/records/list`.
"""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

from actors import blocking
from actors.api import (
    OBJ,
    STATUS,
    STR,
    ApiError,
    _after,
    _command,
    _field,
    _overlay_view,
    api,
    json_response,
    obj,
)
from actors.api_blobs import StreamedBody, StreamingConnection, content_disposition
from actors.node import Node
from openprod.core import ids
from openprod.core import ops as O
from openprod.core.errors import NotFound, OpenprodError, ValidationError
from openprod.engine import blobs as blobmod
from openprod.engine import csvio
from openprod.engine.views import FieldDef, TableDef, Views
from openprod.engine.workspace import Workspace

UPLOAD_PATH = "/import/csv/upload"
EXPORT_PATH = "/export/csv"
MAX_UPLOAD = 1 << 30  # 1 GiB of CSV
WRITE_CHUNK = 1 << 20
KEEP_S = 3600  # an upload not imported or discarded is deleted after an hour
BATCH = 500  # rows staged per writer call
PROGRESS_EVERY_S = 0.25
MAX_ERRORS = 1000  # error rows listed by check (the rest are counted)
MAX_IMPORT_ERRORS = 100  # listed by the import's answer


class UploadBusy(OpenprodError):
    code = "upload_busy"


STATUS.setdefault(UploadBusy.code, 409)


@attrs.define
class Upload:
    id: str
    path: Path
    name: str
    table: str
    ws_id: str
    encoding: str
    note: str | None
    delimiter: str
    scan: csvio.Scan
    created: float
    busy: bool = False


_UPLOADS: weakref.WeakKeyDictionary[Node, dict[str, Upload]] = weakref.WeakKeyDictionary()
_RUNNING: set[bytes] = set()  # overlays being filled by an import of this process


def _uploads(node: Node) -> dict[str, Upload]:
    return _UPLOADS.setdefault(node, {})


def _dir(node: Node) -> Path:
    d = node.home.path / "tmp" / "csv"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _sweep(node: Node) -> None:
    """Forget uploads older than KEEP_S, and delete stray files (earlier runs') as old."""
    now = time.time()
    reg = _uploads(node)
    for uid, up in list(reg.items()):
        if not up.busy and now - up.created > KEEP_S:
            del reg[uid]
            up.path.unlink(missing_ok=True)
    d = node.home.path / "tmp" / "csv"
    if not d.is_dir():
        return
    known = {up.path.name for up in reg.values()}
    for p in d.iterdir():
        try:
            if p.name not in known and now - p.stat().st_mtime > KEEP_S:
                p.unlink()
        except OSError:
            pass


async def _get_upload(node: Node, raw: str) -> Upload:
    await blocking.run_sync(_sweep, node)
    up = _uploads(node).get(raw)
    if up is None or up.ws_id != node.current.ws_id:
        raise NotFound("no such upload here (uploads are kept for an hour): upload the file "
                       "again", upload_id=raw)
    return up


def _file_name(raw: str | None) -> str:
    name = blobmod.clean_name(raw) or "import.csv"
    return name[:150]


# --- upload -----------------------------------------------------------------------------------

async def upload_csv(node: Node) -> Response:
    session = node.current
    table_ref = request.args.get("table")
    if not table_ref:
        raise ValidationError("missing query parameter 'table'", field="table")
    name = _file_name(request.args.get("name"))
    await _after(node)
    table = await session.reader.read(lambda v: v.table(table_ref))
    length = request.content_length
    if length is not None and length > MAX_UPLOAD:
        raise ApiError("too_large", f"a CSV file may be at most {MAX_UPLOAD} bytes",
                       limit=MAX_UPLOAD, size=length)
    await blocking.run_sync(_sweep, node)
    uid = ids.to_text(ids.new_id())
    path = await blocking.run_sync(_dir, node) / f"{uid}.csv"
    det = csvio.EncodingDetector()
    try:
        f = await blocking.run_sync(lambda: open(path, "wb"))  # noqa: SIM115
        try:
            parts: list[bytes] = []
            size = total = 0

            def write(data: bytes) -> None:
                det.feed(data)
                f.write(data)

            async for chunk in request.body:
                parts.append(chunk)
                size += len(chunk)
                total += len(chunk)
                if total > MAX_UPLOAD:
                    raise ApiError("too_large", f"a CSV file may be at most {MAX_UPLOAD} "
                                   "bytes", limit=MAX_UPLOAD)
                if size >= WRITE_CHUNK:
                    await blocking.run_sync(write, b"".join(parts))
                    parts.clear()
                    size = 0
            if parts:
                await blocking.run_sync(write, b"".join(parts))
        finally:
            await blocking.run_sync(f.close)
        if det.size == 0:
            raise csvio.CsvFormatError("the file is empty: it needs a header row naming its "
                                       "columns")
        encoding, note = det.result()

        def read_all() -> tuple[str, csvio.Scan]:
            with csvio.open_text(path, encoding) as t:
                sample = t.read(csvio.SNIFF_CHARS)
            delim = csvio.sniff_delimiter(sample)
            return delim, csvio.scan(path, encoding, delim)

        delimiter, sc = await blocking.run_sync(read_all)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    up = Upload(uid, path, name, table.facet, session.ws_id, encoding, note, delimiter, sc,
                time.time())
    _uploads(node)[uid] = up
    mapping, skipped = csvio.match_headers(sc.headers, table)
    return json_response({
        "upload_id": uid, "name": name, "table": table.facet, "headers": sc.headers,
        "rows": sc.rows, "mapping": mapping, "skipped": skipped, "sample": sc.sample,
        "encoding": csvio.ENCODING_LABELS.get(encoding, encoding), "encoding_note": note,
        "delimiter": csvio.delimiter_name(delimiter),
        "unimportable": {f.name: r for f in table.fields
                         if (r := csvio.unimportable(f)) is not None},
        "seq": session.writer.appended})


# --- check and import -------------------------------------------------------------------------

def _options(up: Upload) -> csvio.Options:
    return csvio.Options(decimal_comma=up.delimiter == ";", month_first=up.scan.month_first)


async def _plan(node: Node, up: Upload, body: dict[str, Any]) -> csvio.Plan:
    table_ref = _field(body, "table", str)
    mapping = _field(body, "mapping", dict)
    await _after(node)

    def build(v: Views) -> csvio.Plan:
        plan = csvio.Plan(v.table(table_ref), up.scan.headers, mapping, _options(up))
        for f in plan.link_fields():
            plan.links[f.name] = csvio.link_index(v, f)
        return plan
    return await node.current.reader.read(build)


def _check(plan: csvio.Plan, up: Upload) -> dict[str, Any]:
    rows = ok = bad = 0
    errors: list[dict[str, Any]] = []
    for row, cells in csvio.iter_records(up.path, up.encoding, up.delimiter):
        rows += 1
        _vals, errs = plan.convert(row, cells)
        if errs:
            bad += 1
            for e in errs:
                if len(errors) < MAX_ERRORS:
                    errors.append(e.to_json())
        else:
            ok += 1
    return {"rows": rows, "ok": ok, "error_rows": bad, "errors": errors,
            "more_errors": bad > 0 and len(errors) >= MAX_ERRORS}


@api("/import/csv/check", "POST", "Convert every row of an uploaded CSV with a column → "
     "field mapping ({header: field name or null}) and list the bad cells (row 1 is the "
     "header); writes nothing", body=obj(["upload_id", "table", "mapping"], upload_id=STR,
                                         table=STR, mapping=OBJ))
async def check_import(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    up = await _get_upload(node, _field(body, "upload_id", str))
    plan = await _plan(node, up, body)
    out = await blocking.run_sync(_check, plan, up)
    return {**out, "seq": node.current.writer.appended}


def _discard_interrupted(ws: Workspace) -> None:
    """Import overlays a crash or cancelled run left half filled are thrown away."""
    for o in ws.overlays.list_all():
        if (list(o["source"][:1]) == ["import"] and o["meta"].get("running")
                and o["id"] not in _RUNNING):
            ws.discard_overlay(o["id"])


def _batches(plan: csvio.Plan, up: Upload, errors: list[csvio.RowError], counts: list[int],
             ) -> Generator[list[tuple[int, dict[str, Any]]], None, None]:
    """Valid rows in batches of BATCH; bad rows go to errors; counts = [rows read, bad]."""
    batch: list[tuple[int, dict[str, Any]]] = []
    for row, cells in csvio.iter_records(up.path, up.encoding, up.delimiter):
        counts[0] += 1
        vals, errs = plan.convert(row, cells)
        if errs:
            counts[1] += 1
            if len(errors) < MAX_IMPORT_ERRORS:
                errors.extend(errs)
            continue
        batch.append((row, vals))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


@api("/import/csv", "POST", "Import an uploaded CSV into a new overlay \"Import <file>\" (the "
     "valid rows, in batches, with import_progress events); the overlay becomes the active "
     "one (the current one is stashed) for review and commit",
     body=obj(["upload_id", "table", "mapping"], upload_id=STR, table=STR, mapping=OBJ,
              name=STR))
async def import_csv(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    up = await _get_upload(node, _field(body, "upload_id", str))
    name = _file_name(_field(body, "name", str, required=False) or up.name)
    if up.busy:
        raise UploadBusy("this file is being imported already", upload_id=up.id)
    plan = await _plan(node, up, body)
    if up.scan.rows == 0:
        raise ValidationError("the file has a header row but no rows to import",
                              upload_id=up.id)
    title = f"Import {name}"[:O.MAX_LABEL]
    facet = plan.table.facet
    meta = {"import": {"file": name, "table": facet, "rows": up.scan.rows}}
    up.busy = True
    oid: bytes | None = None
    try:
        def start(ws: Workspace) -> bytes:
            _discard_interrupted(ws)
            o = ws.overlays.create(title, ("import", name), active=False,
                                   meta={**meta, "running": True})
            _RUNNING.add(o)
            return o
        oid = await _command(node, start)
        created, errors, bad = await _stage_rows(node, plan, up, oid)
        done_oid = oid
        if not created:
            raise ValidationError(f"none of the {up.scan.rows} rows can be imported: "
                                  f"{bad} have errors (see Check)", errors=bad)

        def finish(ws: Workspace) -> None:
            ws.overlays.set_meta(done_oid, {"import": {**meta["import"], "created": created,
                                                       "errors": bad}})
            ws.activate_overlay(done_oid)
        await _command(node, finish, overlays_changed=True)
        _RUNNING.discard(oid)
        oid = None
    except BaseException:
        if oid is not None:
            failed = oid
            _RUNNING.discard(failed)
            with trio.CancelScope(shield=True), contextlib.suppress(OpenprodError):
                await node.current.writer.call(lambda ws: ws.discard_overlay(failed))
        raise
    finally:
        up.busy = False
    _uploads(node).pop(up.id, None)
    await blocking.run_sync(lambda: up.path.unlink(missing_ok=True))
    return {"overlay_id": ids.to_text(done_oid), "name": title, "created": created,
            "errors": bad, "error_details": [e.to_json() for e in errors],
            "rows": up.scan.rows, "seq": node.current.writer.appended}


async def _stage_rows(node: Node, plan: csvio.Plan, up: Upload, oid: bytes,
                      ) -> tuple[int, list[csvio.RowError], int]:
    """Stage the valid rows batch by batch; (records created, first errors, bad rows)."""
    errors: list[csvio.RowError] = []
    counts = [0, 0]
    created = 0
    gen = _batches(plan, up, errors, counts)
    facet = plan.table.facet
    last = 0.0

    def progress() -> None:
        node.hub.publish({"type": "import_progress", "import_id": up.id,
                          "overlay_id": ids.to_text(oid), "done": counts[0],
                          "total": up.scan.rows, "created": created, "errors": counts[1]})

    try:
        while True:
            batch = await blocking.run_sync(next, gen, None)
            if batch is None:
                break

            def stage(ws: Workspace, rows: list[tuple[int, dict[str, Any]]] = batch,
                      ) -> tuple[int, list[csvio.RowError]]:
                n = 0
                errs: list[csvio.RowError] = []
                with ws.overlays.deferred(), ws.staging_into(oid):
                    for row, vals in rows:
                        try:
                            ws.create_record(facet, vals)
                        except OpenprodError as exc:  # what the engine refuses: that row only
                            errs.append(csvio.RowError(row, None, None, "", exc.message))
                            continue
                        n += 1
                return n, errs
            n, errs = await _command(node, stage)
            created += n
            if errs:
                counts[1] += len({e.row for e in errs})
                errors.extend(errs[:max(0, MAX_IMPORT_ERRORS - len(errors))])
            now = trio.current_time()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                progress()
    finally:
        await blocking.run_sync(gen.close)
    progress()
    return created, sorted(errors, key=lambda e: e.row), counts[1]


@api("/import/csv/discard", "POST", "Forget an uploaded CSV that will not be imported (its "
     "file is deleted)", body=obj(["upload_id"], upload_id=STR))
async def discard_upload(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    up = await _get_upload(node, _field(body, "upload_id", str))
    if up.busy:
        raise UploadBusy("this file is being imported", upload_id=up.id)
    _uploads(node).pop(up.id, None)
    await blocking.run_sync(lambda: up.path.unlink(missing_ok=True))
    return {"upload_id": up.id, "discarded": True, "seq": node.current.writer.appended}


# --- export -----------------------------------------------------------------------------------

def _columns(t: TableDef, raw: Any) -> list[FieldDef]:
    if raw is None or raw == "" or raw == []:
        return list(t.fields)
    names = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationError("columns must be field names", field="columns")
    out = []
    for n in names:
        f = t.field(n.strip())  # NotFound names the missing field
        if f not in out:
            out.append(f)
    return out


EXPORT_CHUNK = 1000  # records read and rendered per step of a streamed export


def _title_of(tables: list[TableDef], rec: dict[str, Any]) -> str | None:
    for t in tables:
        name = csvio.record_title(t, rec["values"])
        if name:
            return name
    return None


class _Renderer:
    """Renders records as CSV rows: links as the linked records' names and files as their
    names, both remembered across the chunks of one export."""

    def __init__(self, cols: list[FieldDef]) -> None:
        self.cols = cols
        self.names: dict[str, str | None] = {}
        self.files: dict[str, str | None] = {}

    def rows(self, views: Views, records: list[dict[str, Any]],
             get_record: Callable[[bytes], dict[str, Any] | None]) -> list[list[str]]:
        by_id = {x.facet: x for x in views.tables()}

        def name_of(rid: str) -> str | None:
            if rid not in self.names:
                try:
                    rec = get_record(ids.from_text(rid))
                except (ValueError, OpenprodError):
                    rec = None
                self.names[rid] = None if rec is None else _title_of(
                    [by_id[x] for x in rec.get("tables", []) if x in by_id], rec)
            return self.names[rid]

        def file_name(h: str) -> str | None:
            if h not in self.files:
                meta = blobmod.read_meta(views.conn, h) or {}
                n = meta.get("name")
                self.files[h] = n if isinstance(n, str) else None
            return self.files[h]

        return [[csvio.render_cell(f, r["values"].get(f.name), name_of=name_of,
                                   file_name=file_name) for f in self.cols] for r in records]


def _select(records: list[dict[str, Any]], want: list[str] | None) -> list[dict[str, Any]]:
    if want is None:
        return records
    by = {r["id"]: r for r in records}
    return [by[x] for x in want if x in by]


def _views_get(v: Views) -> Callable[[bytes], dict[str, Any] | None]:
    def get(e: bytes) -> dict[str, Any] | None:
        try:
            return v.get_record(e)
        except OpenprodError:
            return None
    return get


async def _export(node: Node, table_ref: str, raw_cols: Any, want: list[str] | None,
                  ) -> Response:
    """Canonical: the ids first, then EXPORT_CHUNK records per read while the answer streams
    (memory stays flat; a record deleted meanwhile is left out). While an overlay is active the
    overlay's view is built whole in the writer, as `/records/list` does."""
    await _after(node)
    session = node.current
    chunks: AsyncIterator[list[list[str]]]

    if _overlay_view(node):
        def from_ws(ws: Workspace) -> tuple[TableDef, list[FieldDef], list[list[str]]]:
            t = ws.views.table(table_ref)
            cols = _columns(t, raw_cols)

            def get(e: bytes) -> dict[str, Any] | None:
                try:
                    return ws.get_record(e)
                except OpenprodError:
                    return None
            recs = _select(ws.list_records(t.facet), want)
            return t, cols, _Renderer(cols).rows(ws.views, recs, get)

        t, cols, rows = await session.writer.call(from_ws)

        async def whole() -> AsyncIterator[list[list[str]]]:
            for i in range(0, len(rows), EXPORT_CHUNK):
                yield rows[i:i + EXPORT_CHUNK]
        chunks = whole()
    else:
        def plan(v: Views) -> tuple[TableDef, list[FieldDef], list[bytes]]:
            t = v.table(table_ref)
            members = v.record_ids(t.facet)
            if want is None:
                return t, _columns(t, raw_cols), members
            inside = set(members)
            order = [e for e in (ids.from_text(x) for x in want) if e in inside]
            return t, _columns(t, raw_cols), order

        t, cols, order = await session.reader.read(plan)
        renderer = _Renderer(cols)

        async def streamed() -> AsyncIterator[list[list[str]]]:
            for i in range(0, len(order), EXPORT_CHUNK):
                part = order[i:i + EXPORT_CHUNK]

                def read(v: Views, part: list[bytes] = part) -> list[list[str]]:
                    recs = [v.record(e, t) for e in part
                            if v.is_live(e) and v.is_attached(e, t.facet)]
                    return renderer.rows(v, recs, _views_get(v))
                yield await session.reader.read(read)
        chunks = streamed()

    async def body() -> AsyncIterator[bytes]:
        head: list[list[str]] | None = [[f.label for f in cols]]
        async for part in chunks:
            rows = head + part if head is not None else part
            yield "".join(csvio.write_csv(rows, bom=head is not None)).encode("utf-8")
            head = None
        if head is not None:  # no records
            yield "".join(csvio.write_csv(head)).encode("utf-8")

    resp = Response(body(), status=200, content_type="text/csv; charset=utf-8")
    resp.timeout = None
    resp.headers["Content-Disposition"] = content_disposition(
        "text/csv", f"{t.label}.csv", download=True)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def export_table(node: Node) -> Response:
    table = request.args.get("table")
    if not table:
        raise ValidationError("missing query parameter 'table'", field="table")
    return await _export(node, table, request.args.get("columns"), None)


async def export_view(node: Node) -> Response:
    raw = await request.get_data()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError("malformed_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    table = _field(body, "table", str)
    cols = _field(body, "columns", list, required=False)
    raw_ids = _field(body, "ids", list, required=False)
    want = None
    if raw_ids is not None:
        want = []
        for x in raw_ids:
            if not isinstance(x, str):
                raise ValidationError("ids must be record ids", field="ids")
            try:
                want.append(ids.to_text(ids.from_text(x)))
            except (ValueError, TypeError):
                raise ValidationError(f"ids: {x!r} is not a record id", field="ids") from None
    return await _export(node, table, cols, want)


# --- installation -----------------------------------------------------------------------------

class CsvStreamingConnection(StreamingConnection):
    """api_blobs' streaming connection, which also streams `POST /import/csv/upload`."""

    def _create_request_from_scope(self, send: Any) -> Any:
        req = super()._create_request_from_scope(send)
        if self.scope["method"] == "POST" and req.path == UPLOAD_PATH:
            req.body = StreamedBody(req.content_length)
        return req


def install(app: QuartTrio, node: Node) -> None:
    """Register the non-JSON CSV routes (after `api_blobs.install`)."""
    app.asgi_http_class = CsvStreamingConnection

    async def upload_view() -> Response:
        return await upload_csv(node)

    async def export_get() -> Response:
        return await export_table(node)

    async def export_post() -> Response:
        return await export_view(node)

    app.add_url_rule(UPLOAD_PATH, endpoint="upload_csv", view_func=upload_view,
                     methods=["POST"])
    app.add_url_rule(EXPORT_PATH, endpoint="export_table_csv", view_func=export_get,
                     methods=["GET"])
    app.add_url_rule(EXPORT_PATH, endpoint="export_view_csv", view_func=export_post,
                     methods=["POST"])


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI description of the routes `install` registers."""
    sec: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]
    err = {"description": "{error: {code, message, details}}"}
    csv_body = {"description": "the CSV file (UTF-8 with a BOM)",
                "content": {"text/csv": {"schema": {"type": "string"}}}}
    q = [{"name": "table", "in": "query", "required": True, "schema": {"type": "string"}}]
    return {
        UPLOAD_PATH: {"post": {
            "summary": "Upload a CSV file to import: the raw request body, streamed (at most "
                       "1 GiB); ?table= names the table, ?name= the file. Returns {upload_id, "
                       "headers, rows, mapping, skipped, sample, encoding, delimiter}",
            "operationId": "upload_csv", "security": sec,
            "parameters": [*q, {"name": "name", "in": "query", "schema": {"type": "string"}}],
            "x-raw-body": True,
            "requestBody": {"required": True, "content": {
                "text/csv": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "uploaded"}, "413": err, "4XX": err}}},
        EXPORT_PATH: {
            "get": {
                "summary": "A whole table as CSV (?columns=a,b: these fields in this order)",
                "operationId": "export_table_csv", "security": sec,
                "parameters": [*q, {"name": "columns", "in": "query",
                                    "schema": {"type": "string"}}],
                "responses": {"200": csv_body, "4XX": err}},
            "post": {
                "summary": "The current view as CSV: {table, columns, ids} (these records in "
                           "this order, these fields)",
                "operationId": "export_view_csv", "security": sec,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": obj(["table"], table=STR,
                                  columns={"type": "array", "items": STR},
                                  ids={"type": "array", "items": STR})}}},
                "responses": {"200": csv_body, "4XX": err}}},
    }


__all__ = ["CsvStreamingConnection", "install", "openapi_paths"]
