"""GET /api/v1/openapi.json: served to any valid token; its paths and methods are exactly the
routes the app serves (both are made from one route table), every error in the one error shape,
and each operation answers a refused request as it documents."""
from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from frontend import openapi
from frontend.api import ROUTES
from frontend.app import make_app
from frontend.errors import STATUS
from frontend.pages import Pages
from protocol import ops, rules
from protocol.errors import CODES
from tests.conftest import Tokens, World


def served_routes(world: World) -> set[tuple[str, str]]:
    """(METHOD, path) the app routes, trailing-slash twins folded (each path has both)."""
    app = make_app(world.frontend)
    panel = {(r.method, r.path) for r in Pages().routes() if isinstance(r, web.RouteDef)}
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        # aiohttp answers HEAD for every GET by itself; the document need not list it. The
        # panel's pages (frontend/pages.py) are no part of the API.
        if route.method != "HEAD" and (route.method, path) not in panel:
            routes.add((route.method, path.rstrip("/") or "/"))
    return routes


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method != "parameters"}


def test_the_document_lists_exactly_the_served_routes(world: World) -> None:
    served = served_routes(world)
    documented = documented_routes(openapi.document())
    assert served - documented == set(), "served but undocumented"
    assert documented - served == set(), "documented but not served"


def test_every_route_answers_with_and_without_a_trailing_slash(world: World) -> None:
    app = make_app(world.frontend)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for path in (p for p in paths if p.startswith("/api/")):  # the pages are no API
        twin = path[:-1] if path.endswith("/") else path + "/"
        assert twin in paths, path


# A value each path parameter accepts, to reach the handler behind it.
SAMPLE = {"name": "c1", "token": "t" * 40, "id": "7"}


async def test_every_documented_operation_refuses_as_documented(
        world: World, tokens: Tokens, aiohttp_client: Any) -> None:
    """Each operation of the document, on both slash forms: anonymous is a documented 401 (400
    for sign-in, whose credential is the body's), and a read token is a documented 403
    wherever the route's operations all need more."""
    api = await aiohttp_client(make_app(world.frontend))
    needs_more = {(row.method, row.path) for row in ROUTES if row.ops and not any(
        rules.scope_allows("read", ops.OP_OF_REQUEST[op].scope) for op in row.ops)}
    assert needs_more, "no operation a read token is refused: the test would prove nothing"
    for path, item in openapi.document()["paths"].items():
        url = re.sub(r"{(\w+)}", lambda m: SAMPLE[m.group(1)], path)
        for method, op in item.items():
            if method == "parameters":
                continue
            body = b"{}" if "requestBody" in op else None
            for target in (url, url + "/"):
                # Sign-in (`security: []`) takes its credential in the body: {} is a 400.
                cases = [({}, 400 if op.get("security") == [] else 401)]
                if (method.upper(), path) in needs_more:
                    cases.append(({"private-token": tokens.read}, 403))
                for headers, status in cases:
                    r = await api.request(method, target, headers=headers, data=body)
                    assert r.status == status, (method, target, r.status)
                    assert str(status) in op["responses"], (method, path, status)
                    assert (await r.json())["status"] == "error"
                    assert r.headers["X-Request-Id"]


def test_every_operation_documents_its_errors_in_the_one_error_shape() -> None:
    doc = openapi.document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            responses = op["responses"]
            assert "401" in responses and "429" in responses, (method, path)
            for status, response in responses.items():
                if status == "200" and "application/json" not in response["content"]:
                    continue  # the event stream and the scrape are text, not JSON
                schema = response["content"]["application/json"]["schema"]["$ref"]
                assert (schema == "#/components/schemas/Error") == (status != "200"), (path, status)
                assert response["headers"]["X-Request-Id"]["required"] is True
            assert responses["429"]["headers"]["Retry-After"]["required"] is True
    # Every code the API can answer with is one the document's Error schema admits.
    assert doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"] == sorted(CODES)
    assert set(STATUS) == set(CODES)


def test_the_document_states_this_installations_token_minimum(world: World) -> None:
    token = openapi.document(33)["components"]["schemas"]["CreateToken"]["properties"]["token"]
    assert token["minLength"] == 33


def test_every_schema_reference_resolves() -> None:
    doc = openapi.document()
    text = repr(doc)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in doc["components"]["schemas"], name


async def test_the_document_is_served_to_any_valid_token_and_to_nobody_else(
        world: World, tokens: Tokens, aiohttp_client: Any) -> None:
    api = await aiohttp_client(make_app(world.frontend))
    r = await api.get("/api/v1/openapi.json")
    assert r.status == 401
    for token in (tokens.read, tokens.operate, tokens.admin):
        r = await api.get("/api/v1/openapi.json/", headers={"private-token": token})
        assert r.status == 200 and r.content_type == "application/json"
        body = await r.json()
        assert body == openapi.document(world.frontend.token_min_length)
        assert body["openapi"].startswith("3.1")
