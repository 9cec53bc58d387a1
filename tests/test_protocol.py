"""The wire protocol byte by byte: frames in, requests or error codes out (sans-I/O), and the
same bytes against the live helper, which must answer exactly as the protocol module decides.
"""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from protocol import framing, ops, rules
from protocol.errors import LwpError
from tests.conftest import World, destroy_world, make_world, write_config
from tools.fuzz_helper import CLOSED, example_requests, predict

MAX = framing.MAX_FRAME
HEADER = framing.HEADER
ENVELOPE: dict[str, Any] = {"id": "req-1", "op": "container_info", "token": None, "client": "local",
            "args": {"name": "web-1"}}


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def body_of(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def request(**changes: Any) -> dict[str, Any]:
    req = {**ENVELOPE, **changes}
    return {k: v for k, v in req.items() if v is not DROP}


def args(**changes: Any) -> dict[str, Any]:
    return request(args={**ENVELOPE["args"], **changes})


DROP = object()


def decoded(data: bytes) -> ops.Envelope:
    """The one request in `data`, through the same steps the helper takes (Helper.handle)."""
    length = framing.body_length(data[:HEADER.size])
    body = data[HEADER.size:]
    assert len(body) == length, "exactly one whole frame"
    return ops.decode_request(framing.decode_untrusted_body(body))


def refusal(data: bytes) -> LwpError:
    with pytest.raises(LwpError) as caught:
        decoded(data)
    return caught.value


# -- round trip ------------------------------------------------------------------------------

EXAMPLES = example_requests()


def test_every_op_has_a_valid_example() -> None:
    assert {ops.OP_OF_REQUEST[type(r)].name for r in EXAMPLES} == set(ops.OPS)


@pytest.mark.parametrize("req", EXAMPLES, ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("token", [None, "lwp_" + "a" * 43])
def test_every_op_survives_the_round_trip(req: ops.Request, token: str | None) -> None:
    envelope = ops.Envelope("req-1", token, "192.0.2.7", req)
    data = framing.encode_frame(ops.encode_request(envelope))
    assert HEADER.unpack(data[:4])[0] == len(data) - 4
    assert decoded(data) == envelope


# -- refused frames: (bytes, expected code, what the message must name) ------------------------

def _ext(code: int, data: bytes) -> bytes:
    return body_of(msgpack.ExtType(code, data))


CASES: dict[str, tuple[bytes, str, str]] = {
    # The size cap: judged on the length prefix alone.
    "oversize prefix": (HEADER.pack(MAX + 1), "payload-too-large", "exceeds"),
    "largest prefix": (HEADER.pack(2**32 - 1) + b"\x80", "payload-too-large", "exceeds"),
    "empty frame": (HEADER.pack(0), "protocol-error", "empty"),
    # msgpack that is not one well-formed object.
    "truncated body": (frame(body_of(ENVELOPE)[:-3]), "protocol-error", "undecodable"),
    "trailing bytes": (frame(body_of(ENVELOPE) + b"\xc0"), "protocol-error", "undecodable"),
    "reserved byte": (frame(b"\xc1"), "protocol-error", "undecodable"),
    "bad utf-8": (frame(b"\x81\xa2op\xa2\xff\xfe"), "protocol-error", "undecodable"),
    "utf-8 surrogate": (frame(b"\x81\xa2op\xa3\xed\xa0\x80"), "protocol-error", "undecodable"),
    "overlong utf-8": (frame(b"\x81\xa2op\xa2\xc0\xaf"), "protocol-error", "undecodable"),
    "int map key": (frame(body_of({1: "x"})), "protocol-error", "undecodable"),
    "nil map key in args": (frame(b"\x81\xa4args\x81\xc0\xc0"), "protocol-error", "undecodable"),
    # msgpack lets bytes be a key; the request has no such field.
    "bytes map key": (frame(b"\x81\xc4\x02op\xa1x"), "invalid-request", "b'op': unknown"),
    "array map key": (frame(b"\x81\x91\x01\x01"), "protocol-error", "undecodable"),
    "ext type": (frame(_ext(5, b"abcd")), "protocol-error", "undecodable"),
    "empty ext type": (frame(b"\xc7\x00\x05"), "protocol-error", "extension"),
    "ext type in args": (frame(body_of(args(name=msgpack.ExtType(1, b"")))),
                         "protocol-error", "extension"),
    "timestamp ext": (frame(b"\xd6\xff\x00\x00\x00\x01"), "protocol-error", "undecodable"),
    "empty timestamp ext": (frame(b"\xc7\x00\xff"), "protocol-error", "undecodable"),
    "deep arrays": (frame(b"\x91" * (MAX - 1) + b"\xc0"), "protocol-error", "undecodable"),
    "deep maps": (frame(b"\x81\xa1a" * 5000 + b"\xc0"), "protocol-error", "undecodable"),
    # Length fields that promise more than the frame holds: refused without allocating.
    "array of 4 G items": (frame(b"\xdd\xff\xff\xff\xff"), "protocol-error", "undecodable"),
    "map of 4 G items": (frame(b"\xdf\xff\xff\xff\xff"), "protocol-error", "undecodable"),
    "str of 4 GB": (frame(b"\xdb\xff\xff\xff\xff"), "protocol-error", "undecodable"),
    "bin of 4 GB": (frame(b"\xc6\xff\xff\xff\xff"), "protocol-error", "undecodable"),
    # Well-formed msgpack that is not a request.
    "not a map": (frame(body_of([1, 2])), "invalid-request", "frame: must be a map"),
    "args not a map": (frame(body_of(request(args=["web-1"]))), "invalid-request", "args: must be"),
    "unknown op": (frame(body_of(request(op="lxc-create"))), "invalid-request", "op: unknown"),
    "op with a NUL": (frame(body_of(request(op="container_info\x00"))),
                      "invalid-request", "op: unknown"),
    "op in other case": (frame(body_of(request(op="Container_Info"))),
                         "invalid-request", "op: unknown"),
    "extra envelope field": (frame(body_of(request(sudo=True))), "invalid-request", "'sudo'"),
    "extra argument": (frame(body_of(args(path="/"))), "invalid-request", "'path'"),
    "missing id": (frame(body_of(request(id=DROP))), "invalid-request", "id: missing"),
    "missing args": (frame(body_of(request(args=DROP))), "invalid-request", "args: missing"),
    "missing name": (frame(body_of(request(args={}))), "invalid-request", "name: missing"),
    "id as int": (frame(body_of(request(id=1))), "invalid-request", "id: must be str"),
    "op as nil": (frame(body_of(request(op=None))), "invalid-request", "op: must be str"),
    "token as bytes": (frame(body_of(request(token=b"t" * 20))), "invalid-request", "token"),
    "client as list": (frame(body_of(request(client=["x"]))), "invalid-request", "client"),
    "name as bin": (frame(body_of(args(name=b"web-1"))), "invalid-request", "name: must be str"),
    "name as int": (frame(body_of(args(name=7))), "invalid-request", "name: must be str"),
    "xargs as str": (frame(body_of(request(op="create_container", args={
        "name": "a", "template": "busybox", "xargs": "--a=b"}))), "invalid-request", "xargs"),
    "xargs of ints": (frame(body_of(request(op="create_container", args={
        "name": "a", "template": "busybox", "xargs": [1]}))), "invalid-request", "xargs"),
    "force as str": (frame(body_of(request(op="destroy_container", args={
        "name": "a", "force": "yes"}))), "invalid-request", "force: must be bool"),
    "id as bool": (frame(body_of(request(op="revoke_token", args={"id": True}))),
                   "invalid-request", "id: must be int"),
    "expires as str": (frame(body_of(request(op="create_token", args={"expires": "soon"}))),
                       "invalid-request", "expires"),
    # Valid shapes, hostile values: the rules refuse them on this side of the socket too.
    "name with a slash": (frame(body_of(args(name="../x"))), "invalid-request", "name"),
    "name as an option": (frame(body_of(args(name="-n"))), "invalid-request", "name"),
    "template as a path": (frame(body_of(request(op="create_container", args={
        "name": "a", "template": "/bin/sh"}))), "invalid-request", "template"),
    "reserved xargs": (frame(body_of(request(op="create_container", args={
        "name": "a", "template": "busybox", "xargs": ["--path=/"]}))), "invalid-request",
        "--path"),
    "abbreviated reserved xargs": (frame(body_of(request(op="create_container", args={
        "name": "a", "template": "busybox", "xargs": ["--pa=/"]}))), "invalid-request",
        "--pa"),
}


@pytest.mark.parametrize("name", CASES)
def test_refused_frame_gets_the_right_code(name: str) -> None:
    data, code, named = CASES[name]
    error = refusal(data)
    assert error.code == code, error.message
    assert named in error.message


def test_oversize_prefix_is_refused_before_any_body_byte() -> None:
    with pytest.raises(LwpError) as caught:
        framing.body_length(HEADER.pack(MAX + 1))  # the header alone decides
    assert caught.value.code == "payload-too-large"


def test_a_body_of_exactly_the_cap_is_read() -> None:
    body = b"\xdb" + struct.pack(">I", MAX - 5) + b"x" * (MAX - 5)
    assert len(body) == MAX
    assert refusal(frame(body)).message == "frame: must be a map"


def test_encode_frame_refuses_a_body_over_the_cap() -> None:
    with pytest.raises(LwpError) as caught:
        framing.encode_frame("x" * MAX)
    assert caught.value.code == "payload-too-large"


# -- FrameReader: the one reader of frames, bytes in and bodies out ------------------------

def test_reader_gathers_a_frame_split_at_every_byte_boundary() -> None:
    data = framing.encode_frame(ENVELOPE)
    for cut in range(len(data) + 1):
        reader = framing.FrameReader()
        first = reader.feed(data[:cut])
        assert first is None or cut == len(data)
        second = reader.feed(data[cut:])
        assert (first or second) == data[HEADER.size:] and not (first and second), cut
        assert not reader.held and reader.feed() is None


def test_reader_gathers_a_frame_fed_one_byte_at_a_time() -> None:
    data = framing.encode_frame(ENVELOPE)
    reader = framing.FrameReader()
    bodies = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    assert bodies == [None] * (len(data) - 1) + [data[HEADER.size:]]


def test_reader_says_how_many_bytes_each_part_lacks() -> None:
    data = framing.encode_frame(ENVELOPE)
    reader = framing.FrameReader()
    assert reader.missing == HEADER.size
    assert reader.feed(data[:2]) is None and reader.missing == 2
    assert reader.feed(data[2:HEADER.size]) is None  # the header is checked; the body is not in
    assert reader.missing == len(data) - HEADER.size
    assert reader.feed(data[HEADER.size:-1]) is None and reader.missing == 1
    assert reader.feed(data[-1:]) == data[HEADER.size:] and reader.missing == HEADER.size


def test_reader_returns_two_frames_of_one_chunk_in_order() -> None:
    one, two = framing.encode_frame({"n": 1}), framing.encode_frame({"n": 2, "x": "y"})
    reader = framing.FrameReader()
    assert reader.feed(one + two + two[:3]) == one[HEADER.size:]
    assert reader.feed() == two[HEADER.size:]
    assert reader.feed() is None and reader.held == two[:3]
    assert reader.feed(two[3:]) == two[HEADER.size:] and not reader.held


@pytest.mark.parametrize("limit", [MAX, framing.MAX_REPLY])
def test_reader_refuses_an_oversize_header_before_its_body(limit: int) -> None:
    reader = framing.FrameReader(limit)
    with pytest.raises(LwpError) as caught:
        reader.feed(HEADER.pack(limit + 1))  # no body byte at all: the header alone decides
    assert caught.value.code == "payload-too-large"
    assert caught.value.message == f"frame of {limit + 1} bytes exceeds {limit}"


def test_reader_takes_a_body_of_exactly_its_limit() -> None:
    reader = framing.FrameReader(10)
    assert reader.feed(HEADER.pack(10) + b"x" * 10) == b"x" * 10


@pytest.mark.parametrize("header", [HEADER.pack(0), b"\xff\xff\xff\xff", b"GET "],
                         ids=["zero length", "all ones", "text"])
def test_reader_refuses_an_empty_or_garbage_header(header: bytes) -> None:
    reader = framing.FrameReader()
    with pytest.raises(LwpError) as caught:
        reader.feed(header + b"/ HTTP/1.1\r\n\r\n")
    assert caught.value.code in ("protocol-error", "payload-too-large")
    if header == HEADER.pack(0):
        assert caught.value.message == "empty frame"


def test_trusted_and_untrusted_bodies_have_their_own_caps() -> None:
    big = body_of("x" * (MAX + 1))
    assert framing.decode_trusted_body(big) == "x" * (MAX + 1)
    with pytest.raises(LwpError) as caught:
        framing.decode_untrusted_body(big)
    assert caught.value.code == "protocol-error"


def test_a_frame_cut_short_is_not_a_frame_yet() -> None:
    data = framing.encode_frame(ENVELOPE)
    assert framing.body_length(data[:HEADER.size]) == len(data) - HEADER.size
    assert predict(data[:-1]) == CLOSED and predict(data[:3]) == CLOSED


@pytest.mark.parametrize("hostile", ["x" * 60000, "\x01" * 30000, "a\nforged line", "\x1b[2J"])
def test_error_messages_quote_a_bounded_printable_part_of_the_input(hostile: str) -> None:
    # An error reply must fit in a frame and a log line must stay one line, whatever the
    # client sent: the helper once failed to answer (and logged a traceback) for a long op.
    for data in (frame(body_of(request(op=hostile))), frame(body_of(args(**{hostile: 1}))),
                 frame(body_of(request(op="create_container", args={
                     "name": "a", "template": "busybox", "xargs": [hostile]})))):
        error = refusal(data)
        assert error.message.isprintable() and len(error.message) < 200, error.message[:300]
        assert len(framing.encode_frame(ops.encode_error(error))) < 300


def test_reserved_option_covers_getopt_abbreviations() -> None:
    for option in ("pa", "pat", "p", "na", "r", "rootf", "mapped", "mapped-u", "mapped-gid"):
        assert rules.reserved_option(option), option
    for option in ("release", "flavor", "paths", "name2", "mirror"):
        assert not rules.reserved_option(option), option


# -- the live helper answers as the protocol decides -----------------------------------------

def exchange(world: World, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection, end our side, and read until the helper hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(world.socket)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def error_reply(reply: bytes) -> dict[str, Any]:
    (length,) = HEADER.unpack(reply[:4])
    assert len(reply) == 4 + length, "exactly one reply frame, then the hang-up"
    obj = msgpack.unpackb(reply[4:], raw=False)
    assert isinstance(obj, dict) and obj["ok"] is False and set(obj) == {"ok", "code", "error"}
    return obj


@pytest.mark.parametrize("name", CASES)
def test_live_helper_answers_a_refused_frame_once_and_hangs_up(world: World, name: str) -> None:
    data, code, _named = CASES[name]
    assert error_reply(exchange(world, data))["code"] == code


def test_live_helper_refuses_an_oversize_prefix_without_waiting_for_the_body(
        world: World) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(world.socket)
        sock.sendall(HEADER.pack(MAX + 1))  # and nothing more, with our side still open
        reply = sock.recv(65536)
        assert error_reply(reply)["code"] == "payload-too-large"
        assert sock.recv(1) == b""


@pytest.mark.parametrize("data", [b"", b"\x00\x00", framing.encode_frame(ENVELOPE)[:-1],
                                  HEADER.pack(MAX)], ids=["nothing", "half a header",
                                                          "short body", "no body"])
def test_live_helper_hangs_up_on_a_frame_that_never_completes(world: World, data: bytes) -> None:
    assert exchange(world, data) == b""


def test_live_helper_serves_the_next_frame_after_a_valid_one(world: World) -> None:
    good = framing.encode_frame(ops.encode_request(
        ops.Envelope("req-1", None, "local", ops.ContainerInfo("t-absent-name"))))
    reply = exchange(world, good + good + CASES["unknown op"][0])
    codes = []
    while reply:
        (length,) = HEADER.unpack(reply[:4])
        codes.append(msgpack.unpackb(reply[4:4 + length], raw=False)["code"])
        reply = reply[4 + length:]
    assert codes == ["not-found", "not-found", "invalid-request"]


def test_a_reply_may_exceed_the_request_cap_up_to_its_own() -> None:
    # A host with thousands of containers: its list is far over 64 KiB.
    listing = [{"container": f"c-{i:05d}-{'x' * 40}", "state": "stopped"} for i in range(20000)]
    frame = framing.encode_frame(ops.encode_ok(listing), framing.MAX_REPLY)
    assert len(frame) > framing.MAX_FRAME
    length = framing.body_length(frame[:framing.HEADER.size], framing.MAX_REPLY)
    reply = framing.decode_trusted_body(frame[framing.HEADER.size:])
    assert length == len(frame) - framing.HEADER.size
    assert ops.decode_reply(reply) == listing
    # ... while a request that size is still refused before its body is read.
    with pytest.raises(LwpError) as err:
        framing.body_length(frame[:framing.HEADER.size])
    assert err.value.code == "payload-too-large"


@pytest.fixture
def strict_world() -> Iterator[World]:
    """A helper of its own that serves 3 connections at once and waits 0.5 s for a frame."""
    w = make_world()
    write_config(w.base, helperd="max_connections = 3\nframe_timeout = 0.5")
    w.start_helper()
    try:
        yield w
    finally:
        destroy_world(w)


def test_live_helper_hangs_up_on_a_frame_left_unfinished(strict_world: World) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(strict_world.socket)
        sock.sendall(framing.encode_frame(ENVELOPE)[:-1])  # our side stays open, silent
        started = time.monotonic()
        reply = sock.recv(65536)
        assert 0.4 < time.monotonic() - started < 3
        assert error_reply(reply)["code"] == "protocol-error"
        assert sock.recv(1) == b""
    # An idle connection between frames is no such thing: it stays served.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(strict_world.socket)
        time.sleep(1)
        good = ops.Envelope("req-1", None, "local", ops.ContainerInfo("t-absent-name"))
        sock.sendall(framing.encode_frame(ops.encode_request(good)))
        assert msgpack.unpackb(_reply(sock), raw=False)["code"] == "not-found"


def test_live_helper_serves_a_bounded_number_of_connections(strict_world: World) -> None:
    good = framing.encode_frame(ops.encode_request(
        ops.Envelope("req-1", None, "local", ops.ContainerInfo("t-absent-name"))))
    held = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(strict_world.socket)
            sock.sendall(good)
            _reply(sock)  # served, and kept open
            held.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(5)
            extra.connect(strict_world.socket)  # the kernel accepts; the helper hangs up
            assert extra.recv(1) == b""
        held.pop().close()
        for _ in range(50):  # the helper notices the hang-up, then has room again
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as again:
                again.settimeout(5)
                again.connect(strict_world.socket)
                try:
                    again.sendall(good)
                    if _reply(again):
                        break
                except (ConnectionError, OSError):
                    pass
            time.sleep(0.05)
        else:
            pytest.fail("a connection was refused after one of the three had hung up")
    finally:
        for sock in held:
            sock.close()


def _reply(sock: socket.socket) -> bytes:
    """One reply frame's body, or b"" if the helper hung up instead."""
    data = b""
    while len(data) < 4 or len(data) < 4 + HEADER.unpack(data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data[4:]


@pytest.mark.parametrize("keys,named", [
    ("root_reserved_connections = 64", "root_reserved_connections"),
    ("root_reserved_connections = -1", "root_reserved_connections"),
    ("max_connections_per_uid = 0", "max_connections_per_uid"),
    ("max_connections_per_uid = 65", "max_connections_per_uid"),
    ("first_frame_timeout = 0", "first_frame_timeout"),
    ("first_frame_timeout = 301", "first_frame_timeout")])
def test_connection_limits_out_of_range_are_a_config_error(tmp_path: Any, keys: str,
                                                           named: str) -> None:
    from helperd import config
    from protocol.config import ConfigError
    with pytest.raises(ConfigError, match=named):
        config.load(write_config(str(tmp_path), helperd=keys))


def test_connection_limits_default_to_fit_max_connections(tmp_path: Any) -> None:
    from helperd import config
    shipped = config.load(write_config(str(tmp_path)))
    assert (shipped.max_connections_per_uid, shipped.root_reserved_connections) == (48, 8)
    small = config.load(write_config(str(tmp_path), helperd="max_connections = 3"))
    assert (small.max_connections_per_uid, small.root_reserved_connections) == (3, 0)
