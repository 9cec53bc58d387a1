"""The one error vocabulary of the project: kebab-case codes and the exception that carries them.

Only a code and a human message ever cross the socket or reach a client — never a class name
or a traceback. The frontend maps each code to an HTTP status in exactly one table.
"""
from __future__ import annotations

# code -> what it means; the frontend's status table must cover exactly these keys.
CODES: dict[str, str] = {
    "invalid-request": "the request is malformed or a field breaks a rule",
    "payload-too-large": "the request body or frame exceeds the size limit",
    "unauthorized": "no valid token was presented",
    "forbidden": "the token's scope does not allow this operation",
    "not-found": "the addressed object does not exist",
    "method-not-allowed": "the path exists but not with this HTTP method",
    "rate-limited": "too many failed attempts from this client, or requests with this token",
    "no-such-container": "the container named does not exist",
    "container-exists": "a container of that name already exists",
    "invalid-state": "the container's state does not allow this transition",
    "token-exists": "that token is already registered",
    "operation-failed": "liblxc or a template reported a failure",
    "timeout": "the operation did not finish before its deadline",
    "helper-unavailable": "the root helper cannot be reached",
    "protocol-error": "a frame broke the wire protocol",
    "internal-error": "an unexpected fault; details are in the server's log",
    "insufficient-storage": "the audit trail's disk is below its free-space floor",
}


class LwpError(Exception):
    """A failure with a code from CODES and a message safe to show to a client."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        # Seconds until a retry may succeed (rate-limited only); the frontend sends it as
        # Retry-After. It never crosses the socket: only code and message do.
        self.retry_after = retry_after


def invalid(field: str, why: str) -> LwpError:
    """An `invalid-request` error that names the offending field."""
    return LwpError("invalid-request", f"{field}: {why}")


def missing_container(name: str, code: str = "no-such-container") -> LwpError:
    """The one answer for a container that does not exist, or that the token may not see:
    the two must not differ by a character (issue #13)."""
    return LwpError(code, f"container {name!r} does not exist")
