"""Frames: a 4-byte big-endian length, then exactly one msgpack object. FrameReader is the one
sans-I/O reader of them (bytes in, whole bodies out): the helper and the client both use it.

The size cap is checked on the length prefix, before any byte of the body is buffered or
decoded. Untrusted frames (requests, decoded by the helper) use msgpack's pure-Python unpacker:
Debian 12's C unpacker (1.0.3) leaks per malformed frame, the fallback does not.
"""
from __future__ import annotations

import struct
from typing import Any

import msgpack
import msgpack.fallback

from protocol.errors import LwpError

MAX_FRAME = 64 * 1024  # a request: what the root helper accepts from its peers
# A reply: the helper's answers only, which grow with the host (a list of 2,000 containers is
# over 64 KiB); still a cap, so a confused stream cannot make the frontend allocate without end.
MAX_REPLY = 16 * 1024 * 1024
HEADER = struct.Struct(">I")


def encode_frame(obj: Any, limit: int = MAX_FRAME) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > limit:
        raise LwpError("payload-too-large", f"frame of {len(body)} bytes exceeds {limit}")
    return HEADER.pack(len(body)) + body


def body_length(header: bytes | bytearray, limit: int = MAX_FRAME) -> int:
    """The body length announced by a frame header, refused when over the cap."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise LwpError("payload-too-large", f"frame of {length} bytes exceeds {limit}")
    if length == 0:
        raise LwpError("protocol-error", "empty frame")
    return int(length)


class FrameReader:
    """Bytes in, whole frame bodies out (`feed`); no sockets, no waiting.

    A header is checked against `limit` as soon as its 4 bytes are in, so an oversize or
    empty frame is refused before its body is awaited. A bad header leaves the reader
    unusable: the stream cannot be trusted past it. `held` is what is kept of a frame not
    yet whole (or of frames after the one returned)."""

    __slots__ = ("limit", "held", "_length")

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        # Mostly a frame comes in one piece and is kept as given (no copy); only a split one
        # is gathered, in a bytearray, so a large body is not copied again with each piece.
        self.held: bytes | bytearray = b""
        self._length = -1  # the current frame's body length once its header is in

    def feed(self, data: bytes = b"") -> bytes | None:
        """Add `data`; return the next whole body, or None until more bytes come; LwpError for
        a bad header. Feed nothing to take a further frame that is already in.

        One call per piece, not one to add and one to take: this is the client's hot path."""
        held = self.held
        if not held:
            held = data
        elif isinstance(held, bytearray):
            held += data
        else:
            held = bytearray(held) + data
        self.held = held
        head = HEADER.size
        if self._length < 0:
            if len(held) < head:
                return None
            self._length = body_length(held[:head], self.limit)
        end = head + self._length
        if len(held) < end:
            return None
        self._length = -1
        self.held = held[end:] if len(held) > end else b""
        return bytes(held[head:end])

    @property
    def missing(self) -> int:
        """How many bytes the current part (the header, then the body) still lacks."""
        if self._length < 0:
            return max(HEADER.size - len(self.held), 0)
        return max(HEADER.size + self._length - len(self.held), 0)


def decode_untrusted_body(body: bytes) -> Any:
    """An untrusted body (a peer's request to the root helper): capped at MAX_FRAME, decoded by
    msgpack's pure-Python unpacker, which does not leak on malformed input."""
    return _decode(body, msgpack.fallback.unpackb, MAX_FRAME)


def decode_trusted_body(body: bytes) -> Any:
    """A body from our own root side (the helper's reply, a worker's job or outcome): capped
    at MAX_REPLY and decoded by the C unpacker, which is much faster and here only ever meets
    what msgpack's own packer made (bench/README.md has the figures)."""
    return _decode(body, msgpack.unpackb, MAX_REPLY)


def _decode(body: bytes, unpackb: Any, limit: int) -> Any:
    """Exactly one msgpack object with str keys and no trailing bytes, or a protocol error."""
    try:
        return unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            max_str_len=limit, max_bin_len=limit, max_array_len=limit,
            max_map_len=limit, max_ext_len=0,
            ext_hook=_refuse_ext)
    except LwpError:
        raise
    # Every way a malformed body can fail inside msgpack: truncation, trailing bytes,
    # bad UTF-8, limits, unhashable keys, nesting too deep.
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError, RecursionError) as exc:
        raise LwpError("protocol-error", f"undecodable frame: {type(exc).__name__}") from None


def _refuse_ext(code: int, data: bytes) -> Any:
    raise LwpError("protocol-error", "msgpack extension types are not allowed")
