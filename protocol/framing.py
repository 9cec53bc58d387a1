"""Frames: a 4-byte big-endian length, then exactly one msgpack object. Sans-I/O: a reader
takes the header, asks body_length, reads that many bytes, and hands them to decode_body.

The size cap is checked on the length prefix, before any byte of the body is buffered or
decoded. Untrusted frames (requests, decoded by the helper) use msgpack's pure-Python unpacker:
Debian 12's C unpacker (1.0.3) leaks about 1.6 KiB per malformed frame, the fallback does not.
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


def body_length(header: bytes, limit: int = MAX_FRAME) -> int:
    """The body length announced by a frame header, refused when over the cap."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise LwpError("payload-too-large", f"frame of {length} bytes exceeds {limit}")
    if length == 0:
        raise LwpError("protocol-error", "empty frame")
    return int(length)


def decode_body(body: bytes, from_helper: bool = False) -> Any:
    """Exactly one msgpack object with str keys and no trailing bytes, or a protocol error.

    `from_helper`: the body is a reply of the root helper, which only sends what its own
    packer made, so it never meets the C unpacker's leak on malformed input; the C unpacker
    is ~25x faster (a 100-entry list reply: 0.75 ms -> 0.03 ms); its cap is MAX_REPLY.
    """
    unpackb = msgpack.unpackb if from_helper else msgpack.fallback.unpackb
    limit = MAX_REPLY if from_helper else MAX_FRAME
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
