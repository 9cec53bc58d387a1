#!/usr/bin/python3
"""Fuzz a live helper over its Unix socket with random frames and structure-aware bad frames.

Every frame goes on a connection of its own (a bad frame ends the conversation), and what the
helper does is checked against the protocol module's own verdict on the same bytes: one error
reply carrying the predicted code, or a hang-up without a reply when the frame never completes.
A frame the protocol would accept is never sent: the fuzzer talks to the helper as root.

    python3 tools/fuzz_helper.py SOCKET --kind random|structured --count N [--seed S]

prints one JSON object: frames sent, outcomes by code, mismatches, elapsed seconds.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import msgpack  # noqa: E402

from protocol import framing, ops  # noqa: E402
from protocol.errors import CODES, LwpError  # noqa: E402

MAX = framing.MAX_FRAME
HEADER = framing.HEADER
CLOSED = "closed"  # the outcome of a frame that never completes: a hang-up, no reply
VALID = "valid"  # the protocol would accept it: never sent
REPLY_TIMEOUT = 10.0


# -- the verdict: what the helper must do with these bytes ---------------------------------

def predict(data: bytes) -> str:
    """The error code the helper must answer the first frame in `data` with, or CLOSED."""
    if len(data) < HEADER.size:
        return CLOSED
    try:
        length = framing.body_length(data[:HEADER.size])
        if len(data) < HEADER.size + length:
            return CLOSED
        ops.decode_request(framing.decode_untrusted_body(data[HEADER.size:HEADER.size + length]))
    except LwpError as exc:
        return exc.code
    return VALID


def check_reply(expected: str, reply: bytes) -> str | None:
    """None when `reply` is what the helper owed for a frame predicted `expected`, else why not."""
    if expected == CLOSED:
        return None if reply == b"" else f"expected a hang-up, got {reply[:64]!r}"
    if len(reply) < HEADER.size:
        return f"expected a {expected} reply, got {reply!r}"
    (length,) = HEADER.unpack(reply[:HEADER.size])
    if len(reply) != HEADER.size + length:
        return f"reply frame of {len(reply)} bytes announces {length}"
    try:
        obj = msgpack.unpackb(reply[HEADER.size:], raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        return f"undecodable reply: {type(exc).__name__}"
    if not (isinstance(obj, dict) and set(obj) == {"ok", "code", "error"} and obj["ok"] is False
            and obj["code"] in CODES and isinstance(obj["error"], str)):
        return f"not an error reply: {obj!r:.200}"
    if obj["code"] != expected:
        return f"expected code {expected}, got {obj['code']} ({obj['error']:.200})"
    return None


# -- random frames: random headers and random bodies ---------------------------------------

def _body_length(rnd: random.Random) -> int:
    roll = rnd.random()
    if roll < 0.70:
        return rnd.randint(1, 64)
    if roll < 0.92:
        return rnd.randint(65, 1024)
    if roll < 0.995:
        return rnd.randint(1025, 8192)
    return rnd.randint(8193, MAX)


# First bytes that get a random body past msgpack's first check, towards decode_request.
_CONTAINER_BYTES = bytes([*range(0x80, 0x90), *range(0x90, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])


def _random_body(rnd: random.Random, length: int) -> bytes:
    body = rnd.randbytes(length)
    if rnd.random() < 0.5:
        body = bytes([rnd.choice(_CONTAINER_BYTES)]) + body[1:]
    return body


def _whole(rnd: random.Random) -> bytes:
    body = _random_body(rnd, _body_length(rnd))
    return HEADER.pack(len(body)) + body


def _random_header(rnd: random.Random) -> bytes:
    return rnd.randbytes(4) + rnd.randbytes(rnd.randint(0, 32))


def _near_cap(rnd: random.Random) -> bytes:
    length = rnd.choice([MAX + 1, MAX + 2, MAX * 2, 2**31, 2**32 - 1, MAX - 1, MAX])
    # Past the cap the body must never be read, so a few bytes of it are plenty; at or
    # under the cap, an incomplete body must end in a hang-up.
    return HEADER.pack(length) + rnd.randbytes(rnd.randint(0, 64))


def _full_cap(rnd: random.Random) -> bytes:
    body = _random_body(rnd, MAX)
    return HEADER.pack(MAX) + body


def _short(rnd: random.Random) -> bytes:
    length = _body_length(rnd)
    return HEADER.pack(length) + rnd.randbytes(rnd.randint(0, length - 1))


def _trailing(rnd: random.Random) -> bytes:
    return _whole(rnd) + rnd.randbytes(rnd.randint(1, 64))


def _raw(rnd: random.Random) -> bytes:
    return rnd.randbytes(rnd.randint(0, 48))


def _zero(rnd: random.Random) -> bytes:
    return HEADER.pack(0) + rnd.randbytes(rnd.randint(0, 16))


RANDOM_KINDS: list[tuple[float, Callable[[random.Random], bytes]]] = [
    (0.55, _whole), (0.12, _random_header), (0.03, _near_cap), (0.0005, _full_cap),
    (0.10, _short), (0.07, _trailing), (0.10, _raw), (0.0295, _zero)]


def random_frame(rnd: random.Random) -> bytes:
    weights = [w for w, _ in RANDOM_KINDS]
    (make,) = rnd.choices([f for _, f in RANDOM_KINDS], weights)
    return make(rnd)


# -- structure-aware frames: valid requests, then broken on purpose -------------------------

# One valid wire value per request field: enough to build a valid request for every op.
WIRE_EXAMPLES: dict[str, Any] = {
    "name": "web-1", "source": "base.2", "template": "busybox", "store": "dir",
    "xargs": ["--release=bookworm", "--flavor", "slim"], "force": True,
    "token": "lwp_" + "A" * 40, "description": "ci runner", "scope": "read",
    "expires": 4102444800.0, "id": 7, "since": "2024-05-01T12:00:00Z",
    "until": "2024-05-02", "container": "web-1", "actor": "ci", "op": "start_container",
    "outcome": "ok", "limit": 50, "cursor": 3, "containers": ["web-*", "db-?", "base.2"],
    "username": "alice", "password": "a passphrase", "privileged": False,
    "memory_limit": "512M", "memory_swap_limit": 1073741824, "cpus": "0-1,3", "cpu_weight": 200,
    "autostart": True, "autostart_delay": 5, "autostart_order": -3, "unset": ["cpus"],
    "types": ["lifecycle", "operation"], "after_epoch": "0123456789abcdef", "after": 5,
}


def example_requests() -> list[ops.Request]:
    """Valid requests for every op: its required fields alone, with each optional field, and
    with all of them (combinations a request refuses, like a revoke by token *and* id, drop out).
    """
    import dataclasses
    made: list[ops.Request] = []
    for op in ops.OPS.values():
        fields = dataclasses.fields(op.request)
        missing = [f.name for f in fields if f.name not in WIRE_EXAMPLES]
        if missing:
            raise KeyError(f"add a wire example for field(s) {missing} of {op.name}")
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        optional = [f.name for f in fields if f.name not in required]
        for chosen in [required, *({*required, o} for o in optional), {f.name for f in fields}]:
            kwargs = {k: _native(WIRE_EXAMPLES[k]) for k in chosen}
            try:
                made.append(op.request(**kwargs))
            except LwpError:
                continue
    return made


def _native(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Raw:
    """Bytes that go into the body as they are (pre-encoded msgpack, possibly broken)."""
    data: bytes


@dataclass(frozen=True)
class BadStr:
    """A msgpack str whose bytes are not valid UTF-8."""
    data: bytes


@dataclass(frozen=True)
class Ext:
    code: int
    data: bytes


def _head(rnd: random.Random, n: int, fix: bytes | None, tags: list[tuple[int, str]]) -> bytes:
    """A length in its smallest form or, now and then, a wider one (still legal msgpack)."""
    if fix is not None and rnd.random() < 0.9:
        return fix
    options = [(t, f) for t, f in tags if n < 2 ** (8 * struct.calcsize(f))]
    tag, fmt = options[0] if rnd.random() < 0.9 else rnd.choice(options)
    return bytes([tag]) + struct.pack(">" + fmt, n)


def pack(obj: Any, rnd: random.Random) -> bytes:
    """msgpack, with hostile markers and (valid) non-canonical widths chosen at random."""
    if isinstance(obj, Raw):
        return obj.data
    if obj is None:
        return b"\xc0"
    if obj is True or obj is False:
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 2**64 and rnd.random() < 0.2:
            options = [(t, f) for t, f in ((0xCC, "B"), (0xCD, "H"), (0xCE, "I"), (0xCF, "Q"))
                       if obj < 2 ** (8 * struct.calcsize(f))]
            tag, fmt = rnd.choice(options)
            return bytes([tag]) + struct.pack(">" + fmt, obj)
        packed: bytes = msgpack.packb(obj)
        return packed
    if isinstance(obj, float):
        if rnd.random() < 0.3:
            return b"\xca" + struct.pack(">f", obj)
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, (str, BadStr)):
        data = obj.encode("utf-8", "surrogatepass") if isinstance(obj, str) else obj.data
        n = len(data)
        fix = bytes([0xA0 | n]) if n < 32 else None
        return _head(rnd, n, fix, [(0xD9, "B"), (0xDA, "H"), (0xDB, "I")]) + data
    if isinstance(obj, bytes):
        return _head(rnd, len(obj), None, [(0xC4, "B"), (0xC5, "H"), (0xC6, "I")]) + obj
    if isinstance(obj, Ext):
        n = len(obj.data)
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        if n in fixed and rnd.random() < 0.7:
            head = bytes([fixed[n]])
        else:
            head = _head(rnd, n, None, [(0xC7, "B"), (0xC8, "H"), (0xC9, "I")])
        return head + struct.pack(">b", obj.code) + obj.data
    if isinstance(obj, (list, tuple)):
        n = len(obj)
        fix = bytes([0x90 | n]) if n < 16 else None
        head = _head(rnd, n, fix, [(0xDC, "H"), (0xDD, "I")])
        return head + b"".join(pack(v, rnd) for v in obj)
    if isinstance(obj, (dict, Pairs)):
        items = obj.items if isinstance(obj, Pairs) else list(obj.items())
        n = len(items)
        fix = bytes([0x80 | n]) if n < 16 else None
        head = _head(rnd, n, fix, [(0xDE, "H"), (0xDF, "I")])
        return head + b"".join(pack(k, rnd) + pack(v, rnd) for k, v in items)
    raise TypeError(f"cannot pack {type(obj).__name__}")


@dataclass
class Pairs:
    """A msgpack map as a list of pairs: keys may repeat or be of any type."""
    items: list[tuple[Any, Any]] = field(default_factory=list)


def deep(rnd: random.Random, depth: int) -> Raw:
    opener = rnd.choice([b"\x91", b"\x81\xa1a", b"\xdc\x00\x01"])
    return Raw(opener * depth + b"\xc0")


HOSTILE_STRINGS = [
    "", ".", "..", "../x", "../../../../etc/passwd", "/", "/etc/passwd", "a/b", "-n", "-", "--",
    "--name=x", "--path=/", " a", "a ", "a\nb", "a\rb", "a\x00b", "\x00", "a\tb", "x" * 65,
    "\u202eevil", "ｗｅｂ", "é", "a;id", "$(id)", "`id`", "a|b", "*", "~root", "%2e%2e",
    "lxc-busybox", "/usr/share/lxc/templates/lxc-busybox", "BUSYBOX", "busybox/..", "\x1b[31m",
    "a\u2028b", "\udcff", "NaN", "null", "list_containers\x00", "List_containers",
]
HOSTILE_XARGS = [
    ["--path=/"], ["--name", "x"], ["--rootfs=/"], ["--mapped-uid=0"], ["--mapped-gid", "0"],
    ["-n", "x"], ["-p", "/"], ["--pa=/evil"], ["--rootf=/x"], ["--opt=-x"], ["--opt", "-x"],
    ["--opt"], ["x"], ["--a=b"] * 40, ["--a=" + "x" * 300], ["--a=b\nc"], ["--=x"],
    ["---a=b"], ["--A=b"], ["--a b=c"], ["--a=\x00"], ["--a="], [""], ["--"],
]
WRONG_VALUES: list[Any] = [
    0, -1, 1, 2**64 - 1, -(2**63), 1.5, -0.0, math.nan, math.inf, -math.inf, True, False, None,
    b"", b"bytes", [], ["a"], [1, 2], {}, {"a": 1}, "",
]
EXTRA_KEYS: list[Any] = ["evil", "", "op\x00", "__class__", "x" * 200, "a\nforged log line",
                         "ARGS", "name", "Op", "token ", "\udcff"]
NON_STR_KEYS: list[Any] = [1, -1, 0, None, True, 1.5, b"op", Raw(b"\x91\x01"), Raw(b"\x80")]
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"abc\x80", b"\xf8\x88\x80\x80\x80",
            b"\xe2\x82", b"\xf4\x90\x80\x80", b"web-\xfe"]
EXT_CODES = [-128, -2, -1, 0, 1, 5, 127]


def _slot(rnd: random.Random, req: dict[Any, Any]) -> tuple[dict[Any, Any], str]:
    """A random (map, key) to mutate: an envelope field or, when there are any, an argument."""
    args = req.get("args")
    if isinstance(args, dict) and args and rnd.random() < 0.6:
        return args, rnd.choice(list(args))
    return req, rnd.choice(list(req))


def _map(rnd: random.Random, req: dict[Any, Any]) -> dict[Any, Any]:
    args = req.get("args")
    return args if isinstance(args, dict) and rnd.random() < 0.5 else req


def m_drop(rnd: random.Random, req: dict[Any, Any]) -> None:
    target, key = _slot(rnd, req)
    del target[key]


def m_extra(rnd: random.Random, req: dict[Any, Any]) -> None:
    # A copy: WRONG_VALUES holds maps, and one that became `args` would be written into by
    # the next mutation (shared, it grew into a cycle that pack() recursed on for ever).
    _map(rnd, req)[rnd.choice(EXTRA_KEYS)] = copy.deepcopy(
        rnd.choice(WRONG_VALUES + HOSTILE_STRINGS))


def m_wrong_type(rnd: random.Random, req: dict[Any, Any]) -> None:
    target, key = _slot(rnd, req)
    target[key] = copy.deepcopy(rnd.choice(WRONG_VALUES))  # a copy, as in m_extra


def m_unknown_op(rnd: random.Random, req: dict[Any, Any]) -> None:
    op = str(req.get("op", "x"))
    req["op"] = rnd.choice([*HOSTILE_STRINGS, op.upper(), op + "x", op[:-1], f" {op}",
                            "x" * rnd.randint(100, 2000), "\x01" * rnd.randint(100, 30000)])


def m_hostile_string(rnd: random.Random, req: dict[Any, Any]) -> None:
    target, key = _slot(rnd, req)
    if key == "xargs" and rnd.random() < 0.7:
        target[key] = list(rnd.choice(HOSTILE_XARGS))
    else:
        target[key] = rnd.choice(HOSTILE_STRINGS)


def m_huge_string(rnd: random.Random, req: dict[Any, Any]) -> None:
    # Near the frame cap: some land just under it (the field is refused), some just over
    # (the frame is).
    target, key = _slot(rnd, req)
    target[key] = rnd.choice("xé\x01") * rnd.randint(MAX // 3 - 200, MAX - 50)


def m_bad_utf8(rnd: random.Random, req: dict[Any, Any]) -> None:
    target, key = _slot(rnd, req)
    if rnd.random() < 0.2:
        target[BadStr(rnd.choice(BAD_UTF8))] = target.pop(key)  # as a key
    else:
        target[key] = BadStr(rnd.choice(BAD_UTF8))


def m_ext(rnd: random.Random, req: dict[Any, Any]) -> None:
    target, key = _slot(rnd, req)
    size = rnd.choice([0, 1, 4, 8, 12, 16, 300])
    target[key] = Ext(rnd.choice(EXT_CODES), rnd.randbytes(size))


def m_nesting(rnd: random.Random, req: dict[Any, Any]) -> None:
    target, key = _slot(rnd, req)
    target[key] = deep(rnd, rnd.choice([2, 50, 500, 998, 999, 1000, 1001, 5000, 20000]))


def m_non_str_key(rnd: random.Random, req: dict[Any, Any]) -> None:
    target = _map(rnd, req)
    pairs = Pairs(list(target.items()))
    pairs.items.insert(rnd.randint(0, len(pairs.items)), (rnd.choice(NON_STR_KEYS), 1))
    if target is req:
        req.clear()
        req["__pairs__"] = pairs
    else:
        req["args"] = pairs


def m_duplicate_key(rnd: random.Random, req: dict[Any, Any]) -> None:
    # A repeated key whose *first* copy is hostile: whatever wins, the verdict decides.
    target, key = _slot(rnd, req)
    pairs = Pairs([(key, rnd.choice(WRONG_VALUES)), *target.items()])
    if target is req:
        req.clear()
        req["__pairs__"] = pairs
    else:
        req["args"] = pairs


def m_not_a_map(rnd: random.Random, req: dict[Any, Any]) -> None:
    whole = dict(req)
    req.clear()
    req["__whole__"] = rnd.choice([list(whole.values()), list(whole), whole.get("args"), "list",
                                   None, 0, b"\x80", Ext(1, b"")])


MUTATIONS: list[tuple[float, Callable[[random.Random, dict[Any, Any]], None]]] = [
    (1.0, m_drop), (1.0, m_extra), (1.5, m_wrong_type), (0.8, m_unknown_op),
    (2.0, m_hostile_string), (0.25, m_huge_string), (0.8, m_bad_utf8), (0.7, m_ext),
    (0.1, m_nesting), (0.7, m_non_str_key), (0.4, m_duplicate_key), (0.2, m_not_a_map),
]


def _encode(req: dict[Any, Any], rnd: random.Random) -> bytes:
    if "__whole__" in req:
        return pack(req["__whole__"], rnd)
    if "__pairs__" in req:
        return pack(req["__pairs__"], rnd)
    return pack(req, rnd)


def _frame(body: bytes, rnd: random.Random) -> bytes:
    """Frame a body; now and then with a length prefix that lies or with bytes after it."""
    roll = rnd.random()
    if roll < 0.06:  # announces less than is sent
        return HEADER.pack(max(1, len(body) - rnd.randint(1, 8))) + body
    if roll < 0.10:  # announces more than is sent
        return HEADER.pack(len(body) + rnd.randint(1, 8)) + body
    if roll < 0.13:  # announces far more than the cap allows
        return HEADER.pack(rnd.choice([MAX + 1, 2**32 - 1])) + body
    if roll < 0.16:  # a second, random frame behind it
        return HEADER.pack(len(body)) + body + random_frame(rnd)
    return HEADER.pack(len(body)) + body


class Structured:
    """Structure-aware bad frames: valid requests for random ops, broken 1-3 ways."""

    def __init__(self) -> None:
        self.bases = [ops.encode_request(ops.Envelope("req-1", token, "127.0.0.1", r))
                      for r in example_requests() for token in (None, WIRE_EXAMPLES["token"])]
        self.weights = [w for w, _ in MUTATIONS]
        self.mutations = [m for _, m in MUTATIONS]
        self.applied: collections.Counter[str] = collections.Counter()

    def frame(self, rnd: random.Random) -> tuple[bytes, str]:
        """A bad frame and the helper's predicted answer to it."""
        while True:
            base = rnd.choice(self.bases)
            # Mutations replace values and never change one in place: two levels to copy.
            req = {**base, "args": dict(base["args"])}
            chosen = rnd.choices(self.mutations, self.weights, k=rnd.choice([1, 1, 1, 2, 3]))
            for mutate in chosen:
                if "__pairs__" in req or "__whole__" in req:
                    break
                if not req:
                    break
                mutate(rnd, req)
            data = _frame(_encode(req, rnd), rnd)
            verdict = predict(data)
            if verdict != VALID:
                self.applied.update(m.__name__ for m in chosen)
                return data, verdict


# -- the runner --------------------------------------------------------------------------------

@dataclass
class Stats:
    sent: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0
    elapsed: float = 0.0


def _exchange(path: str, data: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # blocking: waits for room in the helper's backlog instead of failing
    sock.settimeout(REPLY_TIMEOUT)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # so a frame that never completes ends in a hang-up
    except (BrokenPipeError, ConnectionResetError):
        pass  # the helper refused the frame before taking all of it: its reply still waits
    return sock


def _drain(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # the helper hung up on bytes it never read; what it sent first was read above
    finally:
        sock.close()
    return b"".join(chunks)


def run(path: str, frames: Iterator[tuple[bytes, str]], count: int, batch: int = 32) -> Stats:
    """Send `count` frames, `batch` connections in flight at a time; check every outcome."""
    stats = Stats()
    started = time.monotonic()
    while stats.sent < count:
        pending: list[tuple[bytes, str, socket.socket]] = []
        for _ in range(min(batch, count - stats.sent)):
            data, expected = next(frames)
            pending.append((data, expected, _exchange(path, data)))
            stats.sent += 1
        for data, expected, sock in pending:
            stats.outcomes[expected] += 1
            try:
                why = check_reply(expected, _drain(sock))
            except TimeoutError:
                why = f"no reply and no hang-up within {REPLY_TIMEOUT:g} s"
            if why is not None:
                stats.mismatch_count += 1
                if len(stats.mismatches) < 10:
                    stats.mismatches.append(f"{why}; frame {data[:80].hex()} ({len(data)} bytes)")
    stats.elapsed = time.monotonic() - started
    return stats


def random_frames(rnd: random.Random) -> Iterator[tuple[bytes, str]]:
    while True:
        data = random_frame(rnd)
        verdict = predict(data)
        if verdict != VALID:  # as good as impossible, and never sent as root if it happens
            yield data, verdict


def frames_of(kind: str, seed: int) -> tuple[Iterator[tuple[bytes, str]], Structured | None]:
    rnd = random.Random(seed)  # noqa: S311 — reproducible from its seed, not a secret
    if kind == "random":
        return random_frames(rnd), None
    gen = Structured()
    return (gen.frame(rnd) for _ in iter(int, 1)), gen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("socket")
    parser.add_argument("--kind", choices=("random", "structured"), required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    frames, gen = frames_of(args.kind, args.seed)
    stats = run(args.socket, frames, args.count, args.batch)
    print(json.dumps({
        "kind": args.kind, "seed": args.seed, "sent": stats.sent,
        "outcomes": dict(stats.outcomes), "mismatch_count": stats.mismatch_count,
        "mismatches": stats.mismatches, "elapsed": round(stats.elapsed, 3),
        "mutations": dict(gen.applied) if gen else {},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
