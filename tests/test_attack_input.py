"""Hostile input that once reached a 500, a 503 or a token that never expires: each is now a
4xx naming what is wrong, on the frontend and again on the helper's side of the socket."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import socket
import struct
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from protocol import framing
from tests.conftest import Tokens, World

pytestmark = pytest.mark.security
DEEP = b"[" * 50_000


def strict_json(text: str) -> Any:
    """RFC 8259 JSON only: Python's json would read Infinity and NaN."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "failed unexpectedly" not in caplog.text and "Traceback" not in caplog.text


# -- nesting ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,method", [("/api/v1/containers", "PUT"),
                                         ("/api/v1/containers/c1", "POST"),
                                         ("/api/v1/tokens", "POST")])
async def test_deeply_nested_json_from_a_read_token_is_403_before_it_is_parsed(
        api: Any, tokens: Tokens, caplog: pytest.LogCaptureFixture, path: str,
        method: str) -> None:
    with caplog.at_level(logging.ERROR):
        r = await api.request(method, path, data=DEEP, headers={"private-token": tokens.read})
        assert r.status == 403, await r.text()
    no_traceback(caplog)


@pytest.mark.parametrize("body", [DEEP, b'{"action": ' + b"[" * 50_000,
                                  b'{"name": [[[[[[[[[["x"]]]]]]]]]]}'])
async def test_deeply_nested_json_from_an_allowed_token_is_400_naming_the_depth(
        api: Any, tokens: Tokens, caplog: pytest.LogCaptureFixture, body: bytes) -> None:
    with caplog.at_level(logging.ERROR):
        r = await api.put("/api/v1/containers", data=body,
                          headers={"private-token": tokens.admin})
        assert r.status == 400
        assert "nests arrays and objects more than 8 deep" in (await r.json())["error"]
    no_traceback(caplog)


async def test_brackets_inside_strings_are_not_nesting(api: Any, tokens: Tokens) -> None:
    r = await api.post("/api/v1/containers/t-nonexistent",
                       data=json.dumps({"action": "[" * 100 + "{" * 100}),
                       headers={"private-token": tokens.operate})
    assert r.status == 400 and "action: must be one of" in (await r.json())["error"]


# -- the token header --------------------------------------------------------------------------

async def raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\n" + head +
                 b"Connection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_a_non_utf8_token_header_is_a_counted_401_not_a_503(world: World) -> None:
    server = TestServer(make_app(dataclasses.replace(world.frontend, auth_failures_burst=2)))
    await server.start_server(access_log_class=AccessLogger)
    try:
        answers = [await raw_request(server.port, b"private-token: \xff\xfe\x80token\r\n")
                   for _ in range(3)]
    finally:
        await server.close()
    statuses = [a.split(b"\r\n", 1)[0] for a in answers]
    assert statuses[:2] == [b"HTTP/1.1 401 Unauthorized"] * 2, statuses
    assert statuses[2] == b"HTTP/1.1 429 Too Many Requests", statuses  # the limiter counted


async def test_a_non_ascii_token_in_the_query_is_401(api: Any) -> None:
    r = await api.get("/api/v1/containers?private_token=%FF%FE%E2%82%AC")
    assert r.status == 401


# -- audit query -----------------------------------------------------------------------------------

@pytest.mark.parametrize("actor", ["²", "١٢", "1²", "３"])
async def test_an_audit_actor_of_non_ascii_digits_is_400(
        api: Any, admin: dict[str, str], caplog: pytest.LogCaptureFixture, actor: str) -> None:
    with caplog.at_level(logging.ERROR):
        r = await api.get("/api/v1/audit", params={"actor": actor}, headers=admin)
        assert r.status == 400, await r.text()
        assert "actor: a token id is written with the digits 0-9" in (await r.json())["error"]
    no_traceback(caplog)


async def test_an_audit_actor_of_ascii_digits_or_text_is_still_a_filter(
        api: Any, admin: dict[str, str]) -> None:
    for actor in ("1", "test admin", "x²"):
        r = await api.get("/api/v1/audit", params={"actor": actor}, headers=admin)
        assert r.status == 200, await r.text()


# -- token expiry ----------------------------------------------------------------------------------

@pytest.mark.parametrize("expires", ["1e999", "-1e999", "Infinity", "NaN", "1" + "0" * 400,
                                     "253402300800"])
async def test_an_expiry_that_is_not_a_finite_time_before_10000_is_400(
        api: Any, admin: dict[str, str], expires: str) -> None:
    r = await api.post("/api/v1/tokens", data=f'{{"scope": "read", "expires": {expires}}}',
                       headers={**admin, "Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert (await r.json())["error"].startswith(("expires:", "body:"))
    listed = await api.get("/api/v1/tokens", headers=admin)
    records = strict_json(await listed.text())  # still valid JSON
    assert all(t["expires"] is None or math.isfinite(t["expires"]) for t in records)


async def test_an_expiry_in_range_is_kept(api: Any, admin: dict[str, str]) -> None:
    r = await api.post("/api/v1/tokens", json={"scope": "read", "expires": 253402300799},
                       headers=admin)
    assert r.status == 200, await r.text()


def raw_frame(world: World, args: dict[str, Any]) -> dict[str, Any]:
    frame = {"id": "raw-expires", "op": "create_token", "token": None, "client": "test",
             "args": args}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(world.socket)
        s.sendall(framing.encode_frame(frame))
        (length,) = struct.unpack(">I", s.recv(4))
        reply: dict[str, Any] = framing.decode_untrusted_body(s.recv(length))
    return reply


@pytest.mark.parametrize("expires", [math.inf, -math.inf, math.nan, 1e300, 0.0])
def test_the_helper_refuses_a_raw_frame_whose_expiry_is_not_a_finite_time(
        world: World, expires: float) -> None:
    reply = raw_frame(world, {"token": None, "description": "raw", "scope": "read",
                              "expires": expires})
    assert reply["ok"] is False and reply["code"] == "invalid-request", reply
    assert reply["error"].startswith("expires:")


def test_the_helper_refuses_a_raw_audit_query_with_non_ascii_digits(world: World) -> None:
    frame = {"id": "raw-actor", "op": "query_audit", "token": None, "client": "test",
             "args": {"actor": "²"}}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(world.socket)
        s.sendall(framing.encode_frame(frame))
        (length,) = struct.unpack(">I", s.recv(4))
        reply = framing.decode_untrusted_body(s.recv(length))
    assert reply["ok"] is False and reply["code"] == "invalid-request", reply
