"""The event stream's frames: after a `subscribe_events` request, the helper sends these frames
(each a normal length-prefixed msgpack frame) on that connection until either side closes it.

Sans-I/O and strict both ways: `encode_frame` refuses a frame that `decode_frame` would refuse,
so the helper can never send what the frontend must reject. Every event type's fields are a table.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol import rules
from protocol.errors import LwpError, invalid

STATES = ("STOPPED", "STARTING", "RUNNING", "STOPPING", "ABORTING", "FREEZING", "FROZEN",
          "THAWED")
EXTERNAL = "external"  # the cause of a change no request of ours made
CAUSE_RE = re.compile(r"[A-Za-z0-9-]{1,64}")  # a request id (ops.REQUEST_ID_RE) or EXTERNAL
PHASES = ("started", "finished", "failed")
OPERATIONS = ("create_container", "clone_container", "destroy_container")
ENDS = ("slow", "revoked", "expired", "shutdown", "closed")
# An epoch names one run of the helper: ids are only comparable within it.
EPOCH_RE = re.compile(r"[0-9a-f]{16}")
MAX_AUDIT_FIELDS = 64
MAX_AUDIT_TEXT = 4096


def _state(value: object) -> bool:
    return value is None or value in STATES


def _cause(value: object) -> bool:
    return isinstance(value, str) and bool(CAUSE_RE.fullmatch(value))


def _name(value: object) -> bool:
    return isinstance(value, str) and bool(rules.NAME_RE.fullmatch(value))


def _scalar_map(value: object) -> bool:
    """An audit record: a flat map of short strings to scalars (no nesting to walk)."""
    return (isinstance(value, dict) and len(value) <= MAX_AUDIT_FIELDS
            and all(isinstance(k, str) and len(k) <= 64 for k in value)
            and all(v is None or type(v) in (bool, int, float)
                    or (isinstance(v, str) and len(v) <= MAX_AUDIT_TEXT)
                    for v in value.values()))


# type -> field -> check. Exactly these fields, each passing its check.
EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "lifecycle": {"container": _name, "old": _state, "new": _state, "cause": _cause},
    "operation": {"container": _name, "op": lambda v: v in OPERATIONS,
                  "phase": lambda v: v in PHASES, "cause": _cause},
    "audit": {"record": _scalar_map},
}
TYPES = tuple(EVENT_FIELDS)


@dataclass(frozen=True)
class SubscribeEvents:
    """The request that turns its connection into a stream. `types`: () for every type the
    token may see; `after_epoch`/`after`: the Last-Event-ID the client sent, if any."""

    types: tuple[str, ...] = ()
    container: str | None = None
    after_epoch: str | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        if len(set(self.types)) != len(self.types) or not set(self.types) <= set(TYPES):
            raise invalid("types", f"must be distinct names from {', '.join(TYPES)}")
        if self.container is not None:
            rules.container_name(self.container, "container")
        if (self.after_epoch is None) != (self.after is None):
            raise invalid("after", "give both after_epoch and after, or neither")
        if self.after_epoch is not None and not EPOCH_RE.fullmatch(self.after_epoch):
            raise invalid("after_epoch", "must be 16 hex digits")
        if self.after is not None and not 0 <= self.after <= rules.ID_MAX:
            raise invalid("after", "must be a non-negative integer")


@dataclass(frozen=True)
class EventFrame:
    id: int
    type: str
    container: str | None
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Start:
    """The first frame: the run's epoch and whether the asked-for replay was possible."""
    epoch: str
    reset: bool  # the events after the client's id are gone: it must read the list again


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class End:
    reason: str


Frame = EventFrame | Start | Heartbeat | End


def _bad(why: str) -> LwpError:
    return LwpError("protocol-error", f"bad stream frame: {why}")


def decode_frame(obj: object) -> Frame:
    """A frame from an untrusted decoded msgpack object, or a protocol error."""
    if not isinstance(obj, dict) or not isinstance(obj.get("frame"), str):
        raise _bad("not a map with a frame kind")
    kind, keys = obj["frame"], set(obj)
    if kind == "event" and keys == {"frame", "id", "type", "container", "data"}:
        return _event(obj)
    if kind == "start" and keys == {"frame", "epoch", "reset"}:
        if isinstance(obj["epoch"], str) and EPOCH_RE.fullmatch(obj["epoch"]) \
                and type(obj["reset"]) is bool:
            return Start(obj["epoch"], obj["reset"])
    if kind == "heartbeat" and keys == {"frame"}:
        return Heartbeat()
    if kind == "end" and keys == {"frame", "reason"} and obj["reason"] in ENDS:
        return End(obj["reason"])
    raise _bad(f"kind {rules.shown(kind)} or its fields")


def _event(obj: dict[str, Any]) -> EventFrame:
    id_, type_, container, data = obj["id"], obj["type"], obj["container"], obj["data"]
    if type(id_) is not int or not 1 <= id_ <= rules.ID_MAX:
        raise _bad("event id")
    fields = EVENT_FIELDS.get(type_) if isinstance(type_, str) else None
    if fields is None:
        raise _bad("event type")
    if not isinstance(data, dict) or set(data) != set(fields):
        raise _bad(f"{type_} fields")
    for key, check in fields.items():
        if not check(data[key]):
            raise _bad(f"{type_}.{key}")
    if container is not None and not _name(container):
        raise _bad("event container")
    if container != data.get("container", container):
        raise _bad("event container differs from its data")
    return EventFrame(id_, type_, container, data)


def encode(frame: Frame) -> dict[str, Any]:
    """The wire map of a frame, checked as the other side will check it."""
    obj: dict[str, Any]
    if isinstance(frame, EventFrame):
        obj = {"frame": "event", "id": frame.id, "type": frame.type,
               "container": frame.container, "data": dict(frame.data)}
    elif isinstance(frame, Start):
        obj = {"frame": "start", "epoch": frame.epoch, "reset": frame.reset}
    elif isinstance(frame, Heartbeat):
        obj = {"frame": "heartbeat"}
    else:
        obj = {"frame": "end", "reason": frame.reason}
    decode_frame(obj)
    return obj


EVENT_ID_RE = re.compile(r"([0-9a-f]{16})-([0-9]{1,15})")


def event_id(epoch: str, number: int) -> str:
    """An SSE id: the run's epoch and the event's number in it."""
    return f"{epoch}-{number}"


def parse_event_id(value: str) -> tuple[str, int] | None:
    """A Last-Event-ID as (epoch, number), or None when it is not one of ours."""
    match = EVENT_ID_RE.fullmatch(value)
    return (match[1], int(match[2])) if match else None
