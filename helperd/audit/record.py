"""The audit record's format and its chain: one canonical JSON form, HMAC-chained by seq.

Invariant: a record's bytes on disk are `canonical(record)`; chain_i covers every byte of
record i but its own chain value, and chain_{i-1}. Secrets (tokens) never enter a record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from protocol import ops, session

# chain_0: the value the first record (seq 1) chains from.
GENESIS = bytes(32)

# Which outcome each error code is; a test proves it covers protocol's whole vocabulary.
OUTCOME_OF_CODE: dict[str, str] = {
    "invalid-request": "invalid",
    "payload-too-large": "invalid",
    "protocol-error": "invalid",
    "unauthorized": "denied",
    "forbidden": "denied",
    "rate-limited": "denied",
    "timeout": "timeout",
    "not-found": "error",
    "method-not-allowed": "invalid",
    "no-such-container": "error",
    "container-exists": "error",
    "invalid-state": "error",
    "token-exists": "error",
    "operation-failed": "error",
    "helper-unavailable": "error",
    "internal-error": "error",
    "insufficient-storage": "error",
}


class AuditError(Exception):
    """The trail cannot be written or read as it must be."""



def canonical(record: dict[str, Any]) -> bytes:
    """The one byte form of a record: what the chain covers and what a line holds."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def next_chain(key: bytes, previous: bytes, body: bytes) -> bytes:
    """chain_i = HMAC-SHA256(key, chain_{i-1} || canonical bytes of record i without chain)."""
    return hmac.new(key, previous + body, hashlib.sha256).digest()


_SECOND: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_now() -> str:
    """The time as records carry it (microseconds, UTC). The date and time of day are
    formatted once a second, not per record: strftime showed in a read's profile."""
    global _SECOND
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if seconds != _SECOND[0]:
        _SECOND = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_SECOND[1]}.{micros:06d}Z"


def utc_text(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _create_token_args(req: ops.CreateToken) -> dict[str, Any]:
    # Never the token: only whether the client chose it.
    return {"description": req.description, "scope": req.scope, "expires": _jsonable(req.expires),
            "token_chosen": req.token is not None,
            "containers": None if req.containers is None else list(req.containers)}


def _revoke_token_args(req: ops.RevokeToken) -> dict[str, Any]:
    # Revoked by token: the id is filled in from the result; the token itself never appears.
    return {"by": "id" if req.id is not None else "token", "id": req.id}


def _create_session_args(req: session.CreateSession) -> dict[str, Any]:
    # Never the password or the token, nor the name as typed (a password typed into the
    # name field would land here): the user is filled in from the result, once PAM said yes.
    return {"method": "token" if req.token is not None else "password"}


ARGS_OF: dict[type, Callable[[Any], dict[str, Any]]] = {
    ops.CreateToken: _create_token_args,
    ops.RevokeToken: _revoke_token_args,
    session.CreateSession: _create_session_args,
}
# Results that complete a record's args: the id of a token made or revoked.
RESULT_ARGS: dict[type, Callable[[Any], dict[str, Any]]] = {
    ops.CreateToken: lambda result: {"id": result["id"]},
    ops.RevokeToken: lambda result: {"id": result["id"]},
    # A session's id and user; never its secret, which the result also carries.
    session.CreateSession: lambda result: {"id": result["id"], "user": result["user"]},
    session.EndSession: lambda result: {"id": result["id"]},
}


def args_of(request: Any) -> dict[str, Any]:
    """A request's arguments as validated, with every secret left out."""
    special = ARGS_OF.get(type(request))
    if special is not None:
        return special(request)
    return {f.name: _jsonable(getattr(request, f.name)) for f in dataclasses.fields(request)}


def blank_record() -> dict[str, Any]:
    """Every record has every key (null where it does not apply), so queries need no guesses."""
    return {"ts": utc_now(), "request_id": None, "phase": "single", "op": None,
            "outcome": None, "container": None, "actor": None, "client": None,
            "peer": None, "args": None, "error": None, "duration_ms": None, "recovery": None,
            "summary": None}


def parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        return None
    return record

