"""Test-only reverse proxy in front of a live frontend: a path prefix (as nginx's `location
/lwp/ { proxy_pass http://127.0.0.1:5000/; }`) and, while the frontend has no session endpoints
of its own, a stand-in for them that holds the pasted token server-side behind an HttpOnly cookie.

The stand-in is never shipped and is used only when `frontend` has no /api/v1/session route
(issue #15's sign-in half); then every panel test runs against the real frontend unchanged.
"""
from __future__ import annotations

import asyncio
import secrets
import threading
from typing import Any

from aiohttp import ClientSession, web
from multidict import CIMultiDict

from frontend.auth import TokenReader

# Hop-by-hop headers (RFC 9110 7.6.1) and the length aiohttp sets itself. Host goes through,
# as `proxy_set_header Host $host` does: the frontend compares a change's Origin with it.
DROPPED = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
           "proxy-authorization", "proxy-authenticate", "content-length"}
COOKIE = "lwp_standin"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"status": "error", "error": message, "code": code}, status=status)


class Proxy:
    def __init__(self, upstream: str, prefix: str = "", state_dir: str | None = None) -> None:
        self.upstream = upstream
        self.prefix = prefix
        self.reader = TokenReader(state_dir) if state_dir else None
        self.sessions: dict[str, str] = {}  # session id -> the token it stands for
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}/"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        # auto_decompress off: the browser gets the frontend's bytes as they were sent.
        self._client = ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # noqa: SLF001 — the only way to learn the port aiohttp chose
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        assert self._client is not None and self._runner is not None
        await self._client.close()
        await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if not path.startswith(self.prefix + "/"):
            return _error(404, "not-found", "outside the proxy's prefix")
        rest = path[len(self.prefix):]
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in DROPPED)
        if self.reader is not None and rest.startswith("/api/"):
            if rest.rstrip("/") == "/api/v1/session":
                return await self.session(request)
            refused = self.authorize(request, headers)
            if refused is not None:
                return refused
        target = self.upstream + rest + (f"?{request.rel_url.raw_query_string}"
                                         if request.rel_url.raw_query_string else "")
        assert self._client is not None
        async with self._client.request(request.method, target, headers=headers,
                                        data=await request.read(),
                                        allow_redirects=False) as reply:
            body = await reply.read()
            out = CIMultiDict((k, v) for k, v in reply.headers.items()
                              if k.lower() not in DROPPED)
            return web.Response(status=reply.status, body=body, headers=out)

    def authorize(self, request: web.Request, headers: CIMultiDict[str]) -> web.Response | None:
        """The contract of the real session: the cookie, and the CSRF header on a change."""
        token = self.sessions.get(request.cookies.get(COOKIE, ""))
        if token is None:
            return _error(401, "unauthorized", "Unauthorized")
        if request.method not in ("GET", "HEAD") and request.headers.get("X-LWP-Request") != "1":
            return _error(403, "forbidden", "missing X-LWP-Request header")
        headers.popall("Cookie", None)
        headers["Private-Token"] = token
        return None

    async def session(self, request: web.Request) -> web.Response:
        assert self.reader is not None
        sid = request.cookies.get(COOKIE, "")
        if request.method == "GET":
            token = self.sessions.get(sid)
            record = self.reader.lookup(token) if token else None
            if record is None:
                return _error(401, "unauthorized", "Unauthorized")
            return web.json_response({"user": None, "scope": record.scope})
        if request.headers.get("X-LWP-Request") != "1":
            return _error(403, "forbidden", "missing X-LWP-Request header")
        if request.method == "DELETE":
            if self.sessions.pop(sid, None) is None:
                return _error(401, "unauthorized", "Unauthorized")
            response = web.json_response({"status": "ok"})
            response.del_cookie(COOKIE, path=self.prefix + "/")
            return response
        if request.method != "POST":
            return _error(405, "method-not-allowed", "Method Not Allowed")
        body: Any = await request.json()
        token = body.get("token") if isinstance(body, dict) else None
        record = self.reader.lookup(token) if isinstance(token, str) and token else None
        if record is None:
            return _error(401, "unauthorized", "sign-in refused (the test stand-in takes "
                                               "API tokens only)")
        new = secrets.token_hex(16)
        self.sessions[new] = token
        response = web.json_response({"status": "ok", "user": None, "scope": record.scope})
        response.set_cookie(COOKIE, new, httponly=True, samesite="Strict",
                            path=self.prefix + "/")
        return response
