"""The one place an error code becomes an HTTP status, and the one shape of an error body;
aiohttp's own refusals become such errors here too, and every request id is made here.
"""
from __future__ import annotations

import math
import os

from aiohttp import web

from protocol.errors import LwpError

STATUS: dict[str, int] = {
    "invalid-request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not-found": 404,
    "method-not-allowed": 405,
    "no-such-container": 409,
    "container-exists": 409,
    "invalid-state": 409,
    "token-exists": 409,
    "payload-too-large": 413,
    "rate-limited": 429,
    "operation-failed": 500,
    "internal-error": 500,
    "protocol-error": 502,
    "helper-unavailable": 503,
    "insufficient-storage": 503,
    "timeout": 504,
}
# aiohttp's own refusals (routing, body size, an unparsable request) in our vocabulary.
HTTP_CODES: dict[int, str] = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


def error_response(error: LwpError) -> web.Response:
    response = web.json_response({"status": "error", "error": error.message,
                                  "code": error.code}, status=STATUS[error.code])
    if error.code == "rate-limited":
        # Every 429 says when to come back (the helper's own refusals carry no time: 1 s).
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
    return response


def new_request_id() -> str:
    """128 random bits as hex: uuid4().hex's form, for less work (no UUID object)."""
    return os.urandom(16).hex()


def refusal(status: int, message: str, allow: str = "") -> web.Response:
    """aiohttp's refusal of a request (`status`; `allow`: the methods a 405 names) in the API's
    error shape. Only a fault of ours is 5xx; any other refusal is the client's, a 4xx."""
    code = HTTP_CODES.get(status, "invalid-request") if status < 500 else "internal-error"
    response = error_response(LwpError(code, message))
    if allow:  # a 405 must say what is allowed (RFC 9110) ...
        response.headers["Allow"] = allow
        # ... and a client using a method we never serve may frame its message in a way we
        # do not (a TRACE with a body, say): start afresh on a new connection.
        response.force_close()
    return response
