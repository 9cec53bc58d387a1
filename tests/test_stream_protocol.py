"""The event stream's frames are checked the same way on both sides of the socket."""
from __future__ import annotations

from typing import Any

import pytest

from protocol import stream
from protocol.errors import LwpError

LIFE = {"container": "web", "old": "STOPPED", "new": "RUNNING", "cause": "external"}


def event(**over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"frame": "event", "id": 7, "type": "lifecycle", "container": "web",
                           "data": dict(LIFE)}
    obj.update(over)
    return obj


@pytest.mark.parametrize("frame", [
    stream.EventFrame(7, "lifecycle", "web", LIFE),
    stream.EventFrame(8, "lifecycle", "web", {**LIFE, "new": None, "cause": "abc-123"}),
    stream.EventFrame(9, "operation", "db", {"container": "db", "op": "clone_container",
                                             "phase": "failed", "cause": "r1"}),
    stream.EventFrame(10, "audit", None, {"record": {"op": "start_container", "seq": 3}}),
    stream.Start("0123456789abcdef", True), stream.Heartbeat(), stream.End("revoked"),
])
def test_every_frame_kind_round_trips(frame: stream.Frame) -> None:
    assert stream.decode_frame(stream.encode(frame)) == frame


@pytest.mark.parametrize("bad", [
    event(id=0), event(id=True), event(id=2**63), event(type="debug"),
    event(container="../x"), event(container="db"),  # differs from its data
    event(data={**LIFE, "new": "EXPLODED"}), event(data={**LIFE, "cause": "a b"}),
    event(data={**LIFE, "extra": 1}), event(data={"container": "web"}),
    event(extra=1), {"frame": "end", "reason": "because"}, {"frame": "heartbeat", "x": 1},
    {"frame": "start", "epoch": "XYZ", "reset": False}, {"frame": "start", "epoch":
                                                        "0123456789abcdef", "reset": 1},
    {"frame": "nonsense"}, [], None,
    event(type="audit", container=None, data={"record": {"nested": {"a": 1}}}),
    event(type="audit", container=None, data={"record": {"t": "x" * 5000}}),
])
def test_malformed_frames_are_protocol_errors(bad: object) -> None:
    with pytest.raises(LwpError) as err:
        stream.decode_frame(bad)
    assert err.value.code == "protocol-error"


def test_the_helper_cannot_encode_what_the_frontend_refuses() -> None:
    with pytest.raises(LwpError):
        stream.encode(stream.EventFrame(1, "lifecycle", "web", {**LIFE, "new": "BOOM"}))


def test_event_ids_carry_the_helpers_run() -> None:
    assert stream.parse_event_id(stream.event_id("0123456789abcdef", 42)) == (
        "0123456789abcdef", 42)
    for bad in ("42", "0123456789abcdef-", "0123456789ABCDEF-1", "0123456789abcdef-1\n",
                "0123456789abcdef-1234567890123456", "x" * 1000):
        assert stream.parse_event_id(bad) is None
