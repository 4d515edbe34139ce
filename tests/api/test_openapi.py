"""/api/openapi.json describes exactly the routes the app serves (and is a valid OpenAPI 3.1)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from openapi_spec_validator import validate

from actors.api import ROUTES, STATUS, create_app, openapi
from tests.api.conftest import Api

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _oa_path(rule: str) -> str:
    """Werkzeug `<conv:name>` / `<name>` to OpenAPI `{name}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _served(app: Any) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) of the app's HTTP rules, and the paths of its WebSocket rules."""
    http: set[tuple[str, str]] = set()
    ws: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.websocket:
            ws.add(_oa_path(rule.rule))
            continue
        for m in set(rule.methods or ()) - IGNORED_METHODS:
            http.add((m.lower(), _oa_path(rule.rule)))
    return http, ws


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, item in doc["paths"].items() for m in item
            if m in {"get", "post", "put", "patch", "delete"}}


async def test_document_is_served_without_token(api: Api) -> None:
    resp = await api.get("/api/openapi.json", auth=False)
    assert resp.status_code == 200
    assert resp.content_type == "application/json"
    doc = await resp.get_json()
    assert doc == openapi()
    assert re.fullmatch(r"3\.\d+\.\d+", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]


async def test_document_is_valid_openapi(api: Api) -> None:
    doc = await (await api.get("/api/openapi.json")).get_json()
    validate(doc)  # raises on any schema violation


async def test_every_served_route_is_documented_and_back(api: Api) -> None:
    http, ws = _served(api.app)
    doc = openapi()
    documented = _documented(doc)
    assert http - documented == set(), "served but not in the OpenAPI document"
    assert documented - http == set(), "documented but not served"
    # the WebSocket is described in the x-websocket extension (OpenAPI has no WebSocket)
    assert ws == set(doc["x-websocket"]) == {"/events"}


def test_document_matches_the_route_registry() -> None:
    doc = openapi()
    for r in ROUTES:
        op = doc["paths"][_oa_path(r.path)][r.method.lower()]
        assert op["summary"] == r.summary
        assert op["operationId"] == r.handler.__name__
        assert op["security"], f"{r.path} should require the token"
        params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
        assert {(q, "query") for q in r.query} <= params
        for name in re.findall(r"<([^<>]+)>", r.path):
            assert (name, "path") in params
        if r.method == "POST":
            body = op["requestBody"]
            assert body["required"] is True
            schema = body["content"]["application/json"]["schema"]
            assert schema["type"] == "object"
            assert schema == (r.body or {"type": "object", "properties": {}})
        else:
            assert "requestBody" not in op
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()
              if "operationId" in op]
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"


def test_every_post_has_a_request_body() -> None:
    doc = openapi()
    posts = [(p, item["post"]) for p, item in doc["paths"].items() if "post" in item]
    assert posts
    for path, op in posts:
        assert "requestBody" in op, path
        if op.get("x-raw-body"):  # the blob and CSV uploads take the file itself
            assert path in ("/blobs/upload", "/import/csv/upload")
            assert op["requestBody"]["required"] is True
            continue
        assert "application/json" in op["requestBody"]["content"], path


def test_open_paths_need_no_security() -> None:
    doc = openapi()
    for path in ("/", "/api/openapi.json", "/static/{path}"):
        assert doc["paths"][path]["get"]["security"] == []
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "cookie"}


def test_a_second_app_documents_the_same_routes() -> None:
    """ROUTES is a module-level registry: building another app must not duplicate it."""
    before = len(ROUTES)
    app = create_app(None)  # type: ignore[arg-type]  # routes only; no request is served
    assert len(ROUTES) == before
    http, _ = _served(app)
    assert http == _documented(openapi())


def test_api_doc_covers_every_route_and_error_code() -> None:
    """docs/api.md documents every route and every error code the API can answer."""
    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    for r in ROUTES:
        assert f"`{r.method} {r.path}`" in doc, f"{r.method} {r.path} is not in docs/api.md"
    for code, status in {**STATUS, "invalid": 400, "malformed_json": 400,
                         "internal": 500}.items():
        assert f"| {status} | `{code}` |" in doc, f"error {code} ({status}) is not documented"
    assert "`WS /events`" in doc and "since=" in doc and "resync" in doc
