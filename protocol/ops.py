"""Every operation the helper performs: its request type, required scope, flags and deadline.

Requests are frozen dataclasses that validate themselves on construction, so an instance is
always acceptable input. `decode_request` turns an untrusted msgpack object into one, strictly:
unknown op, unknown or missing field, wrong type -> `invalid-request` naming the field.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Union

from protocol import rules
from protocol.errors import LwpError, invalid
from protocol.session import CreateSession, EndSession, SessionInfo
from protocol.stream import SubscribeEvents

# A client-chosen token must be at least this long whatever the configuration says.
TOKEN_FLOOR = 16
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
MAX_CLIENT = 128


@dataclass(frozen=True)
class ListContainers:
    pass


@dataclass(frozen=True)
class _Named:
    name: str

    def __post_init__(self) -> None:
        rules.container_name(self.name)


class ContainerInfo(_Named):
    pass


class StartContainer(_Named):
    pass


class StopContainer(_Named):
    pass


class FreezeContainer(_Named):
    pass


class UnfreezeContainer(_Named):
    pass


class RestartContainer(_Named):
    pass


@dataclass(frozen=True)
class CreateContainer:
    name: str
    template: str
    store: str | None = None
    xargs: tuple[str, ...] = ()
    # Without an id map: root in the container is root on the host. Refused unless the
    # helper's configuration allows it (helperd.allow_privileged; issue #13).
    privileged: bool = False

    def __post_init__(self) -> None:
        rules.container_name(self.name)
        rules.template_name(self.template)
        if self.store is not None:
            rules.store_name(self.store)
        rules.parse_xargs(self.xargs, self.template)


@dataclass(frozen=True)
class CloneContainer:
    name: str
    source: str
    store: str | None = None

    def __post_init__(self) -> None:
        rules.container_name(self.name)
        rules.container_name(self.source, "clone")
        if self.store is not None:
            rules.store_name(self.store)


@dataclass(frozen=True)
class DestroyContainer:
    name: str
    force: bool = False

    def __post_init__(self) -> None:
        rules.container_name(self.name)


class ContainerConfig(_Named):
    """The limits and autostart settings in force (issue #13 section 3)."""


# The settings GET .../config reports and PATCH changes, in the order the helper applies them.
CONFIG_SETTINGS = ("memory_limit", "memory_swap_limit", "cpus", "cpu_weight", "autostart",
                   "autostart_delay", "autostart_order")
ConfigValue = int | str | bool | None


@dataclass(frozen=True)
class SetContainerConfig:
    """Change some settings: a field left None is left alone; one named in `unset` (JSON
    null) is removed. Sizes arrive as bytes or "512M" and are kept as bytes."""

    name: str
    memory_limit: int | str | None = None
    memory_swap_limit: int | str | None = None
    cpus: str | None = None
    cpu_weight: int | None = None
    autostart: bool | None = None
    autostart_delay: int | None = None
    autostart_order: int | None = None
    unset: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        rules.container_name(self.name)
        for key in ("memory_limit", "memory_swap_limit"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, rules.size(value, key))
        if self.cpus is not None:
            rules.cpuset(self.cpus)
        if self.cpu_weight is not None:
            rules.bounded(self.cpu_weight, "cpu_weight", rules.CPU_WEIGHT_MIN,
                          rules.CPU_WEIGHT_MAX)
        if self.autostart_delay is not None:
            rules.bounded(self.autostart_delay, "autostart_delay", 0, rules.AUTOSTART_DELAY_MAX)
        if self.autostart_order is not None:
            rules.bounded(self.autostart_order, "autostart_order", -rules.AUTOSTART_ORDER_MAX,
                          rules.AUTOSTART_ORDER_MAX)
        if len(set(self.unset)) != len(self.unset):
            raise invalid("unset", "names a setting twice")
        for key in self.unset:
            if key not in CONFIG_SETTINGS:
                raise invalid("unset", f"{rules.shown(key)} is not a setting")
            if getattr(self, key) is not None:
                raise invalid(key, "is both given and removed")
        if not self.changes():
            raise invalid("body", f"give at least one of {', '.join(CONFIG_SETTINGS)}")

    def changes(self) -> dict[str, ConfigValue]:
        """setting -> its new value (None: remove it), in CONFIG_SETTINGS order."""
        return {key: getattr(self, key) for key in CONFIG_SETTINGS
                if key in self.unset or getattr(self, key) is not None}


@dataclass(frozen=True)
class CreateToken:
    token: str | None = None
    description: str = ""
    scope: str = "admin"
    expires: float | None = None
    # Name patterns (rules.container_patterns) of the only containers it will see; None: all.
    containers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            rules.token_secret(self.token, TOKEN_FLOOR)
        if self.containers is not None:
            rules.container_patterns(self.containers)
        rules.description(self.description)
        rules.scope_name(self.scope)
        if self.expires is not None:
            rules.expires(self.expires)


@dataclass(frozen=True)
class RevokeToken:
    token: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.id is None):
            raise invalid("token", "give exactly one of token or id")
        if self.token is not None:
            rules.token_secret(self.token, 1)
        if self.id is not None and not 1 <= self.id <= rules.ID_MAX:
            raise invalid("id", "must be a positive integer")


@dataclass(frozen=True)
class ListTokens:
    pass


@dataclass(frozen=True)
class HostReport:
    """What makes containers work or fail on this host (helperd/doctor.py's findings)."""


@dataclass(frozen=True)
class ListTemplates:
    """The helper's allow-lists for a create: templates, their options and values, stores."""


@dataclass(frozen=True)
class HelperMetrics:
    """The helper's counters for GET /metrics (protocol.metrics.HELPER_FAMILIES)."""


# What came of a request, as the audit trail records it.
AUDIT_OUTCOMES = ("ok", "denied", "invalid", "error", "timeout", "interrupted")
AUDIT_MAX_LIMIT = 500


def audit_time(value: str, field: str) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (a naive one is taken as UTC)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(field, "must be an ISO 8601 date or date-time, "
                             "e.g. 2024-05-01T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


@dataclass(frozen=True)
class QueryAudit:
    """Audit records in trail order, filtered; `cursor` is the last seq of the previous page."""

    since: str | None = None
    until: str | None = None
    container: str | None = None
    actor: str | None = None  # a token id (digits) or part of a token's description
    op: str | None = None
    outcome: str | None = None
    limit: int = 100
    cursor: int | None = None

    def __post_init__(self) -> None:
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                audit_time(value, key)
        if self.container is not None:
            rules.container_name(self.container, "container")
        if self.actor is not None and (not 0 < len(self.actor) <= rules.MAX_DESCRIPTION
                                       or not self.actor.isprintable()):
            raise invalid("actor", "must be a token id or 1-256 printable characters")
        if self.actor is not None and self.actor.isdigit() and not rules.ascii_digits(self.actor):
            raise invalid("actor", "a token id is written with the digits 0-9")
        if self.op is not None and self.op not in OPS:
            raise invalid("op", "must be the name of an operation")
        if self.outcome is not None and self.outcome not in AUDIT_OUTCOMES:
            raise invalid("outcome", f"must be one of {', '.join(AUDIT_OUTCOMES)}")
        if not 1 <= self.limit <= AUDIT_MAX_LIMIT:
            raise invalid("limit", f"must be 1-{AUDIT_MAX_LIMIT}")
        if self.cursor is not None and not 0 <= self.cursor <= rules.ID_MAX:
            raise invalid("cursor", "must be a non-negative integer")


Request = (ListContainers | ContainerInfo | StartContainer | StopContainer | FreezeContainer
           | UnfreezeContainer | RestartContainer | CreateContainer | CloneContainer
           | DestroyContainer | CreateToken | RevokeToken | ListTokens | QueryAudit | HostReport
           | ContainerConfig | SetContainerConfig
           | ListTemplates | SubscribeEvents | HelperMetrics
           | CreateSession | EndSession | SessionInfo)


@dataclass(frozen=True)
class Op:
    name: str
    request: type
    scope: str  # the least scope a token needs (rules.SCOPES)
    timeout: float  # seconds the frontend waits for the reply


# The operation table both sides share: one name per op through every layer, the least scope
# (the frontend pre-checks it, the helper enforces it) and the frontend's wait. What the helper
# does for each op is helperd/policy.py's RULES.
OPS: dict[str, Op] = {op.name: op for op in (
    Op("list_containers", ListContainers, "read", 30),
    Op("container_info", ContainerInfo, "read", 30),
    Op("start_container", StartContainer, "operate", 60),
    Op("stop_container", StopContainer, "operate", 300),
    Op("freeze_container", FreezeContainer, "operate", 60),
    Op("unfreeze_container", UnfreezeContainer, "operate", 60),
    Op("restart_container", RestartContainer, "operate", 360),
    Op("create_container", CreateContainer, "admin", 1800),
    Op("clone_container", CloneContainer, "admin", 1800),
    Op("destroy_container", DestroyContainer, "admin", 360),
    Op("create_token", CreateToken, "admin", 30),
    Op("revoke_token", RevokeToken, "admin", 30),
    Op("list_tokens", ListTokens, "admin", 30),
    Op("query_audit", QueryAudit, "admin", 60),
    Op("host_report", HostReport, "admin", 60),
    Op("container_config", ContainerConfig, "read", 30),
    Op("set_container_config", SetContainerConfig, "operate", 60),
    # Read scope: a client that may only look is shown what a create could name, nothing more.
    Op("list_templates", ListTemplates, "read", 30),
    # Its reply opens a stream on its connection (protocol/stream.py); the timeout is the reply's.
    Op("subscribe_events", SubscribeEvents, "read", 30),
    Op("helper_metrics", HelperMetrics, "read", 30),
    # Sign-in needs no token (ANONYMOUS_OPS); the helper checks the password or the token it
    # carries. The frontend waits past the refusal delay ([helperd.session] fail_delay).
    Op("create_session", CreateSession, "read", 60),
    Op("end_session", EndSession, "read", 30),
    Op("session_info", SessionInfo, "read", 30),
)}
# Ops a peer may send without a token: the request carries its own credential.
ANONYMOUS_OPS = frozenset({"create_session"})
OP_OF_REQUEST: dict[type, Op] = {op.request: op for op in OPS.values()}


@dataclass(frozen=True)
class Envelope:
    """One request as it crosses the socket, with who asked and on whose behalf."""

    request_id: str
    token: str | None  # the token the client presented; None only for root's local CLI
    client: str  # the client address as the frontend saw it ("local" for the CLI)
    request: Request

    @property
    def op(self) -> Op:
        return OP_OF_REQUEST[type(self.request)]

    def __post_init__(self) -> None:
        if not REQUEST_ID_RE.fullmatch(self.request_id):
            raise invalid("request_id", "must be 1-64 characters of A-Z a-z 0-9 -")
        if self.token is not None:
            rules.token_secret(self.token, 1)
        if len(self.client) > MAX_CLIENT or not self.client.isprintable():
            raise invalid("client", f"must be at most {MAX_CLIENT} printable characters")


def encode_request(envelope: Envelope) -> dict[str, Any]:
    return {"id": envelope.request_id, "op": envelope.op.name, "token": envelope.token,
            "client": envelope.client, "args": encode_args(envelope.request)}


def encode_args(request: Request) -> dict[str, Any]:
    """A request's fields as the wire carries them (its op's name travels beside them)."""
    cls: type = type(request)
    return {name: _wire(getattr(request, name)) for name in _field_names(cls)}


@functools.cache  # per request class: measured on the hot path, see bench/README.md
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _wire(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_ENVELOPE_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "op": (str,), "token": (str, type(None)), "client": (str,), "args": (dict,)}


def decode_request(obj: object) -> Envelope:
    """Build an Envelope from an untrusted decoded frame, or raise `invalid-request`."""
    fields = _exact_map(obj, _ENVELOPE_TYPES, "")
    request = decode_args(fields["op"], fields["args"])
    return Envelope(request_id=fields["id"], token=fields["token"], client=fields["client"],
                    request=request)


def decode_args(op_name: str, args: object) -> Request:
    """Build and validate the request of op `op_name` from untrusted `args`."""
    op = OPS.get(op_name)
    if op is None:
        raise invalid("op", f"unknown operation {rules.shown(op_name)}")
    request: Request = _build(op.request, args)
    return request


def _exact_map(obj: object, types: dict[str, tuple[type, ...]], prefix: str,
               optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise invalid(prefix.rstrip(".") or "frame", "must be a map")
    for key in obj:
        if key not in types:
            raise invalid(f"{prefix}{rules.shown(key)}", "unknown field")
    for key, allowed in types.items():
        if key not in obj:
            if key in optional:
                continue
            raise invalid(f"{prefix}{key}", "missing")
        value = obj[key]
        # bool is an int in Python; a field typed int must not accept True.
        if type(value) not in allowed:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise invalid(f"{prefix}{key}", f"must be {names}")
    return dict(obj)


@functools.cache  # per request class: type hints are costly to evaluate per request
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        is_union = typing.get_origin(hint) in (Union, _UnionType)
        members = typing.get_args(hint) if is_union else (hint,)
        # On the wire a tuple is a list, and a float may arrive written as an integer.
        out[f.name] = tuple(t for m in members
                            for t in ((list,) if typing.get_origin(m) is tuple
                                      else (float, int) if m is float else (m,)))
    return out


_UnionType = type(int | None)


def _build(cls: type, args: object) -> Any:
    types = _field_types(cls)
    optional = frozenset(f.name for f in dataclasses.fields(cls)
                         if f.default is not dataclasses.MISSING)
    values = _exact_map(args, types, "", optional)
    for key, value in values.items():
        if isinstance(value, list):
            if not all(type(item) is str for item in value):
                raise invalid(key, "must be a list of strings")
            values[key] = tuple(value)
    return cls(**values)


def encode_ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def encode_error(error: LwpError) -> dict[str, Any]:
    return {"ok": False, "code": error.code, "error": error.message}


def decode_reply(obj: object) -> Any:
    """The result of a reply, or the LwpError it carries; a malformed reply is a protocol error."""
    if isinstance(obj, dict) and obj.get("ok") is True and set(obj) == {"ok", "result"}:
        return obj["result"]
    if (isinstance(obj, dict) and obj.get("ok") is False and set(obj) == {"ok", "code", "error"}
            and isinstance(obj["code"], str) and isinstance(obj["error"], str)):
        try:
            return_error = LwpError(obj["code"], obj["error"])
        except ValueError:
            return_error = LwpError("protocol-error", "the helper sent an unknown error code")
        raise return_error
    raise LwpError("protocol-error", "the helper sent a malformed reply")
