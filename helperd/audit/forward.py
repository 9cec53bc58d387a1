"""A copy of each audit record for journald (native protocol, structured fields) or syslog.

Best effort by design: the file trail is the source of truth. Sends never block and never
raise; what could not be sent is counted and logged now and then, never retried.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
from typing import Any

log = logging.getLogger("lwp.helperd.audit")

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
IDENTIFIER = "lwp-audit"
# syslog facility authpriv (10): who did what as root belongs with the other auth records.
FACILITY = 10
PRIORITY = {"ok": 6, None: 6, "interrupted": 4, "denied": 5, "invalid": 5, "error": 5,
            "timeout": 4}
# Journal field <- the record's value it carries: (field, None or the nested part, key).
RECORD_FIELDS = (
    ("LWP_AUDIT_SEQ", None, "seq"), ("LWP_AUDIT_CHAIN", None, "chain"),
    ("LWP_REQUEST_ID", None, "request_id"), ("LWP_OP", None, "op"),
    ("LWP_PHASE", None, "phase"), ("LWP_OUTCOME", None, "outcome"),
    ("LWP_CONTAINER", None, "container"), ("LWP_ACTOR_TOKEN_ID", "actor", "token_id"),
    ("LWP_ACTOR", "actor", "description"), ("LWP_CLIENT", None, "client"),
    ("LWP_PEER_UID", "peer", "uid"), ("LWP_PEER_PID", "peer", "pid"),
)


def summary(record: dict[str, Any]) -> str:
    actor = record.get("actor") or {}
    who = actor.get("description") or "unauthenticated"
    what = record.get("op") or "?"
    target = f" {record['container']}" if record.get("container") else ""
    outcome = record.get("outcome") or record.get("phase")
    counted = record.get("summary")
    if counted:  # a window's repeats of one key: say how many, and since when
        outcome = (f"{outcome} x{counted['count']} more like seq {counted['of_seq']} "
                   f"since {counted['first']}")
    return f"{what}{target} by {who} from {record.get('client')}: {outcome}"


def journal_fields(record: dict[str, Any]) -> dict[str, str]:
    fields = {
        "MESSAGE": summary(record),
        "PRIORITY": str(PRIORITY.get(record.get("outcome"), 6)),
        "SYSLOG_FACILITY": str(FACILITY),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    for name, part, key in RECORD_FIELDS:
        source = record if part is None else (record.get(part) or {})
        fields[name] = str(source.get(key))
    fields["LWP_AUDIT_RECORD"] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return fields


def encode_journal(fields: dict[str, str]) -> bytes:
    """journald's native datagram: KEY=value lines; a value with a newline goes length-framed."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def encode_syslog(record: dict[str, Any]) -> bytes:
    pri = FACILITY * 8 + PRIORITY.get(record.get("outcome"), 6)
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return f"<{pri}>{IDENTIFIER}[{os.getpid()}]: {summary(record)} {body}".encode("utf-8",
                                                                                  "replace")


class Forwarder:
    """Sends to journald when its socket exists, else to /dev/log, else nowhere."""

    def __init__(self, journal: str = JOURNAL_SOCKET, syslog: str = SYSLOG_SOCKET) -> None:
        self.target, self.native = (journal, True) if os.path.exists(journal) else (syslog, False)
        self.sock: socket.socket | None = None
        self.dropped = 0
        if os.path.exists(self.target):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    @property
    def active(self) -> bool:
        return self.sock is not None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.sock is None:
            return
        data = encode_journal(journal_fields(record)) if self.native else encode_syslog(record)
        try:
            self.sock.sendto(data, self.target)
        except OSError:  # full, gone or too big: the file trail has the record anyway
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("audit: %d records could not be sent to %s", self.dropped,
                            self.target)
