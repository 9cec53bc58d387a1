"""The one place an error code becomes an HTTP status, and the one shape of an error body."""
from __future__ import annotations

import math

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
# aiohttp's own refusals (routing, body size) in our vocabulary.
HTTP_CODES: dict[int, str] = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


def error_response(error: LwpError) -> web.Response:
    response = web.json_response({"status": "error", "error": error.message,
                                  "code": error.code}, status=STATUS[error.code])
    if error.code == "rate-limited":
        # Every 429 says when to come back (the helper's own refusals carry no time: 1 s).
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
    return response
