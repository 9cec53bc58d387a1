"""`audit verify`: the whole trail checked from genesis (or an archived-from anchor).

Invariant: read-only; a record passes only in canonical form, in seq order, with its chain
value, and the trail must reach the head's last seq with the head's chain.
"""
from __future__ import annotations

import dataclasses
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any

from helperd.audit.files import HEAD, ROTATED_RE, read_bytes, read_head, split_lines, trail_files
from helperd.audit.record import GENESIS, AuditError, canonical, next_chain, parse_line


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    files: int
    where: str = ""  # file:line of the first bad record
    seq: int | None = None
    reason: str = ""
    line: str = ""
    anchor: int | None = None  # the seq verified from, when older files were archived


def verify(directory: str, key: bytes, tries: int = 3, from_oldest: bool = False) -> Verdict:
    """Check the whole trail from genesis: line form, seq, chain, and the head's last record.

    `from_oldest`: older files were archived away; the first record present is the anchor
    (checked for form only, its chain value trusted) and everything after it is checked in
    full. A live trail may rotate or grow while it is read; a failure is re-checked a few
    times before it is reported (tampering fails every time)."""
    verdict = _verify_once(directory, key, from_oldest)
    for _ in range(tries - 1):
        if verdict.ok:
            break
        time.sleep(0.2)
        verdict = _verify_once(directory, key, from_oldest)
    return verdict


def _anchor(line: bytes) -> tuple[int, bytes] | None:
    """The seq and chain value of a well-formed record taken on trust as the starting point."""
    record = parse_line(line)
    if record is None or canonical(record) != line:
        return None
    try:
        return record["seq"], bytes.fromhex(str(record.get("chain")))
    except ValueError:
        return None


def _verify_once(directory: str, key: bytes, from_oldest: bool = False) -> Verdict:
    # The head first: it never leads the trail, so records read afterwards cover it.
    try:
        head = read_head(directory)
    except AuditError as exc:
        return Verdict(False, 0, 0, HEAD, None, str(exc))
    files = trail_files(directory)
    previous, expected, count = GENESIS, 1, 0
    anchoring = from_oldest
    first_seq: int | None = None
    head_chain = GENESIS.hex() if head is not None and head["seq"] == 0 else None
    for path in files:
        name = os.path.basename(path)
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return Verdict(False, count, len(files), name, None, "the file vanished")
        except (OSError, EOFError) as exc:  # a damaged .gz
            return Verdict(False, count, len(files), name, None, f"unreadable: {exc}")
        lines, torn = split_lines(data)
        for number, line in enumerate(lines, 1):
            if anchoring and (parse_line(line) or {}).get("seq") == 1:
                anchoring = False  # nothing archived after all: check from genesis
                first_seq = 1
            if anchoring:  # older files archived: start from the first record present
                anchor = _anchor(line)
                if anchor is None:
                    return Verdict(False, 0, len(files), f"{name}:{number}", None,
                                   "the anchor (the first record present) is not well-formed")
                anchoring = False
                first_seq = anchor[0]
                previous, expected, count = anchor[1], anchor[0] + 1, 1
                if head is not None and head["seq"] == anchor[0]:
                    head_chain = anchor[1].hex()
                continue
            bad = _check_line(line, key, previous, expected)
            if isinstance(bad, str):
                record = parse_line(line)
                return Verdict(False, count, len(files), f"{name}:{number}",
                               None if record is None else record["seq"], bad,
                               line.decode("utf-8", "replace")[:400])
            if head is not None and expected == head["seq"]:
                head_chain = bad.hex()
            previous, expected, count = bad, expected + 1, count + 1
        if torn:
            return Verdict(False, count, len(files), f"{name}:{len(lines) + 1}", None,
                           "an incomplete record (the file was cut inside a line)",
                           torn.decode("utf-8", "replace")[:400])
        m = ROTATED_RE.fullmatch(name)
        if m and int(m.group(1)) != expected - len(lines):
            return Verdict(False, count, len(files), f"{name}:1", expected - len(lines),
                           "the file's name does not match the seq of its first record")
    verdict = _check_head(head, count, len(files), expected - 1, head_chain)
    return dataclasses.replace(verdict, anchor=first_seq) if from_oldest else verdict


def _check_line(line: bytes, key: bytes, previous: bytes, expected: int) -> bytes | str:
    """The record's chain value, or why the line is bad."""
    record = parse_line(line)
    if record is None or not isinstance(record.get("chain"), str):
        return "not a well-formed audit record"
    if canonical(record) != line:
        return "the line is not in canonical form (edited)"
    if record["seq"] != expected:
        return (f"seq {record['seq']} where {expected} was due: records are missing, "
                "inserted or out of order (or a rotated file was removed)")
    claimed = record.pop("chain")
    chain = next_chain(key, previous, canonical(record))
    if not hmac.compare_digest(chain.hex(), claimed):
        return "the chain value does not match: the record or one before it was altered"
    return chain


def _check_head(head: dict[str, Any] | None, count: int, files: int, last_seq: int,
                head_chain: str | None) -> Verdict:
    if head is None:
        if count == 0:
            return Verdict(True, 0, files)
        return Verdict(False, count, files, HEAD, None,
                       "the head file is missing, so a cut tail cannot be ruled out")
    if head["seq"] > last_seq:
        return Verdict(False, count, files, f"after seq {last_seq}", last_seq + 1,
                       f"the trail ends at seq {last_seq} but {head['seq']} records were "
                       "written: its tail was cut")
    if head_chain != head["chain"]:
        return Verdict(False, count, files, f"seq {head['seq']}", head["seq"],
                       "the chain of the record the head names differs from the head's")
    return Verdict(True, count, files)

