"""Browser sessions on the frontend: the session cookie, and the rule that stops cross-site
requests riding on it (CSRF).

A session travels only in an HttpOnly, SameSite=Strict cookie scoped to the panel's base path,
never where a page script could read it. A cookie-authenticated request that is not GET or
HEAD must carry X-LWP-Request: 1 and, if it names an Origin, the server's own; else 403.
No CORS header is ever sent, so no other origin can read an answer or pass a preflight.
"""
from __future__ import annotations

from collections.abc import Collection

from aiohttp import web

COOKIE = "lwp_session"
CSRF_HEADER = "X-LWP-Request"
CSRF_VALUE = "1"
# Methods a browser lets any page send cross-site with cookies, and that change nothing here.
SAFE_METHODS = frozenset({"GET", "HEAD"})


def presented_session(request: web.Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def own_origin(request: web.Request) -> str:
    """The origin a page served by this frontend has: its scheme and the Host it was asked
    for. A cross-site page cannot choose the Host its victim's browser sends with a cookie,
    and a rebound DNS name gets no cookie of ours (cookies are per host)."""
    return f"{request.scheme}://{request.host}".lower()


def origin_refusal(request: web.Request, origins: Collection[str]) -> str | None:
    """Why the request's Origin is not ours (None when it is ours or absent). `origins`: the
    configured public origins, for a frontend behind a reverse proxy."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    origin = origin.lower()
    if origin == own_origin(request) or origin in origins:
        return None
    return "cross-origin"


def csrf_refusal(request: web.Request, origins: Collection[str]) -> str | None:
    """Why a cookie-authenticated request must be refused (None: it may go on).

    A page of another origin can make a browser send our cookie only without custom headers
    (forms, images, navigations: SameSite=Strict stops even those across sites); setting
    X-LWP-Request takes a CORS preflight that we never answer with permission."""
    if request.method in SAFE_METHODS:
        return None
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        return f"no {CSRF_HEADER} header"
    return origin_refusal(request, origins)


def is_secure(request: web.Request, origins: Collection[str]) -> bool:
    """Whether the browser reached us over TLS: our own TLS, or (behind a proxy) an https
    public origin that the browser named."""
    origin = (request.headers.get("Origin") or "").lower()
    return request.secure or (origin.startswith("https://") and origin in origins)


def set_cookie(response: web.StreamResponse, secret: str, path: str, secure: bool) -> None:
    """The session cookie: no Max-Age (the helper ends sessions; the browser forgets the
    cookie when it closes), never readable by scripts, never sent by another site's page."""
    response.set_cookie(COOKIE, secret, path=path, httponly=True, samesite="Strict",
                        secure=secure or None)


def clear_cookie(response: web.StreamResponse, path: str, secure: bool) -> None:
    response.cookies.pop(COOKIE, None)  # a morsel set earlier would keep its attributes
    response.set_cookie(COOKIE, "", path=path, httponly=True, samesite="Strict",
                        secure=secure or None, max_age=0,
                        expires="Thu, 01 Jan 1970 00:00:00 GMT")
