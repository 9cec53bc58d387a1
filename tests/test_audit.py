"""The audit trail's file format on its own: chain, rotation, verification, tampering, queries."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from helperd import admin, audit
from helperd.audit.forward import Forwarder, encode_journal
from protocol import ops
from protocol.errors import CODES, LwpError
from tests.conftest import write_config


class Scratch:
    """An audit directory and a config naming it, outside any helper."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.dir = os.path.join(base, "audit")
        os.makedirs(os.path.join(base, "state"))
        self.key_file = os.path.join(base, "state", "audit.key")
        self.config = write_config(base)

    def trail(self, rotate: int = 1 << 20) -> audit.Trail:
        key = audit.load_key(self.key_file, create=True)
        trail = audit.Trail(self.dir, key, rotate, 0)
        trail.open()
        return trail

    def fill(self, count: int, rotate: int = 1 << 20, batch: int = 3) -> audit.Trail:
        trail = self.trail(rotate)
        n = 0
        while n < count:
            size = min(batch, count - n)
            trail.append([audit.Pending(record(n + i)) for i in range(size)])
            n += size
        trail.close()
        return trail

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def lines(self, name: str = audit.CURRENT) -> list[bytes]:
        with open(self.path(name), "rb") as f:
            return f.read().splitlines(keepends=True)

    def write_lines(self, lines: list[bytes], name: str = audit.CURRENT) -> None:
        with open(self.path(name), "wb") as f:
            f.write(b"".join(lines))

    def rotated(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if audit.ROTATED_RE.fullmatch(n))


def record(i: int, **extra: Any) -> dict[str, Any]:
    r = audit.blank_record()
    r.update(request_id=f"req-{i}", op="container_info", container=f"c{i % 5}",
             outcome="ok", phase="single", client="127.0.0.1",
             actor={"token_id": i % 3 + 1, "description": f"robot {i % 3}", "scope": "admin"},
             peer={"uid": 0, "pid": 1}, args={"name": f"c{i % 5}"}, duration_ms=1.5)
    r.update(extra)
    return r


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    base = tempfile.mkdtemp(prefix="lwp-audit-unit-")
    try:
        yield Scratch(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_verify(s: Scratch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = admin.main(["--config", s.config, "audit", "verify"])
    return code, capsys.readouterr().out


# -- format and chain -----------------------------------------------------------------------

def test_each_line_is_canonical_json_chained_from_genesis(scratch: Scratch) -> None:
    scratch.fill(4)
    key = audit.load_key(scratch.key_file, create=False)
    previous = audit.GENESIS
    for n, line in enumerate(scratch.lines(), 1):
        rec = json.loads(line)
        assert rec["seq"] == n and line == audit.canonical(rec) + b"\n"
        claimed = bytes.fromhex(rec.pop("chain"))
        assert claimed == audit.next_chain(key, previous, audit.canonical(rec))
        previous = claimed


def test_record_times_are_utc_with_microseconds_and_agree_with_the_clock() -> None:
    for _ in range(3):
        before = datetime.now(UTC)
        text = audit.utc_now()
        after = datetime.now(UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
        assert audit.utc_text(before) <= text <= audit.utc_text(after)
        time.sleep(0.6)  # into the next second, past the cached part


def test_files_and_key_are_root_only_or_root_and_the_log_group(scratch: Scratch) -> None:
    scratch.fill(2)
    assert os.stat(scratch.key_file).st_mode & 0o777 == 0o600
    assert os.stat(scratch.dir).st_mode & 0o777 == 0o750
    for name in (audit.CURRENT, audit.HEAD):
        st = os.stat(scratch.path(name))
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o640


def test_outcome_table_covers_every_error_code() -> None:
    assert set(audit.OUTCOME_OF_CODE) == set(CODES)
    assert set(audit.OUTCOME_OF_CODE.values()) <= set(ops.AUDIT_OUTCOMES)


def test_token_ops_record_no_secret() -> None:
    secret = "s3cret-token-value-0123456789"
    made = audit.args_of(ops.CreateToken(token=secret, description="ci", scope="read"))
    assert made == {"description": "ci", "scope": "read", "expires": None, "token_chosen": True,
                    "containers": None}
    revoked = audit.args_of(ops.RevokeToken(token=secret))
    assert revoked == {"by": "token", "id": None}
    assert secret not in json.dumps([made, revoked])


def test_a_non_finite_expiry_never_reaches_the_trail_and_would_be_text_if_it_did() -> None:
    with pytest.raises(LwpError, match="expires"):  # refused on both sides of the socket
        ops.CreateToken(expires=float("inf"))
    inf = audit.record._jsonable(float("inf"))
    assert audit.canonical({"expires": inf}) == b'{"expires":"inf"}'


# -- rotation -------------------------------------------------------------------------------

def test_rotation_keeps_every_record_once_and_the_chain_runs_across_files(
        scratch: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    scratch.fill(60, rotate=2048)
    rotated = scratch.rotated()
    assert len(rotated) >= 5
    seqs = [json.loads(line)["seq"] for name in rotated + [audit.CURRENT]
            for line in scratch.lines(name)]
    assert seqs == list(range(1, 61))
    for name in rotated:  # each rotated file is named after its first record
        assert json.loads(scratch.lines(name)[0])["seq"] == int(name[6:18])
    assert run_verify(scratch, capsys) == (0, f"ok: 60 records in {len(rotated) + 1} files "
                                              "verify\n")


def test_a_reopened_trail_continues_the_chain(scratch: Scratch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    scratch.fill(5)
    scratch.fill(5)
    assert [json.loads(x)["seq"] for x in scratch.lines()] == list(range(1, 11))
    assert run_verify(scratch, capsys)[0] == 0


# -- tampering: each caught, naming the first bad record ------------------------------------

@pytest.fixture
def filled(scratch: Scratch, capsys: pytest.CaptureFixture[str]) -> Scratch:
    scratch.fill(40, rotate=2048)
    assert run_verify(scratch, capsys)[0] == 0
    return scratch


def _fails_at(s: Scratch, capsys: pytest.CaptureFixture[str], where: str, seq: int | None,
              reason: str) -> None:
    code, out = run_verify(s, capsys)
    assert code == 1, out
    first = out.splitlines()[0]
    assert first.startswith(f"FAILED at {where}"), out
    if seq is not None:
        assert f"(seq {seq})" in first, out
    assert reason in first, out


def test_an_edited_byte_is_caught_at_its_record(filled: Scratch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    seq = json.loads(lines[2])["seq"]
    lines[2] = lines[2].replace(b'"c', b'"d', 1)  # one byte: a container name
    filled.write_lines(lines)
    _fails_at(filled, capsys, f"{audit.CURRENT}:3", seq, "chain value does not match")


def test_a_changed_byte_of_layout_is_caught(filled: Scratch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    lines[0] = lines[0].replace(b",", b" ,", 1)  # same JSON, other bytes
    filled.write_lines(lines)
    _fails_at(filled, capsys, f"{audit.CURRENT}:1", None, "canonical form")


def test_a_deleted_line_is_caught_at_the_next_record(filled: Scratch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    missing = json.loads(lines[1])["seq"]
    del lines[1]
    filled.write_lines(lines)
    _fails_at(filled, capsys, f"{audit.CURRENT}:2", missing + 1, f"{missing} was due")


def test_an_inserted_line_is_caught(filled: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    lines.insert(2, lines[1])  # a replayed record
    filled.write_lines(lines)
    _fails_at(filled, capsys, f"{audit.CURRENT}:3", json.loads(lines[1])["seq"], "was due")


def test_two_swapped_lines_are_caught_at_the_first(filled: Scratch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    lines[1], lines[2] = lines[2], lines[1]
    filled.write_lines(lines)
    _fails_at(filled, capsys, f"{audit.CURRENT}:2", json.loads(lines[1])["seq"], "was due")


def test_a_tail_cut_at_a_line_boundary_is_caught_by_the_head(
        filled: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    last = json.loads(lines[-3])["seq"]
    filled.write_lines(lines[:-2])
    _fails_at(filled, capsys, f"after seq {last}", last + 1, "tail was cut")


def test_a_tail_cut_inside_a_line_is_caught(filled: Scratch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = filled.lines()
    filled.write_lines(lines[:-1] + [lines[-1][:30]])
    _fails_at(filled, capsys, f"{audit.CURRENT}:{len(lines)}", None, "incomplete record")


def test_a_whole_current_file_removed_is_caught(filled: Scratch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    os.unlink(filled.path(audit.CURRENT))
    _fails_at(filled, capsys, "after seq", None, "tail was cut")


def test_a_dropped_rotated_file_is_caught_at_the_first_record_after_it(
        filled: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    rotated = filled.rotated()
    dropped, following = rotated[1], rotated[2]
    os.unlink(filled.path(dropped))
    _fails_at(filled, capsys, f"{following}:1", int(following[6:18]), "was due")


def test_the_oldest_file_dropped_is_caught(filled: Scratch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rotated = filled.rotated()
    os.unlink(filled.path(rotated[0]))
    _fails_at(filled, capsys, f"{rotated[1]}:1", int(rotated[1][6:18]), "1 was due")


def test_a_deleted_head_fails_verification(filled: Scratch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    os.unlink(filled.path(audit.HEAD))
    _fails_at(filled, capsys, audit.HEAD, None, "head file is missing")


def test_a_rewritten_record_with_a_fresh_chain_needs_the_key(
        filled: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    # Re-chaining with another key (the attacker's) still fails at the first altered record.
    lines = filled.lines()
    rec = json.loads(lines[0])
    rec["outcome"] = "denied"
    rec.pop("chain")
    rec["chain"] = audit.next_chain(b"k" * 32, audit.GENESIS, audit.canonical(rec)).hex()
    lines[0] = audit.canonical(rec) + b"\n"
    filled.write_lines(lines)
    _fails_at(filled, capsys, f"{audit.CURRENT}:1", rec["seq"], "chain value")


# -- reopening after a crash or a cut ---------------------------------------------------------

def test_a_torn_unacknowledged_tail_is_dropped_on_open(scratch: Scratch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    scratch.fill(3)
    with open(scratch.path(audit.CURRENT), "ab") as f:
        f.write(b'{"seq":4,"actor"')  # a crash inside the write of a batch never fsync'd
    scratch.fill(2)
    assert [json.loads(x)["seq"] for x in scratch.lines()] == [1, 2, 3, 4, 5]
    assert run_verify(scratch, capsys)[0] == 0


def test_after_a_cut_tail_the_helper_keeps_the_gap_visible(
        scratch: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    scratch.fill(6)
    scratch.write_lines(scratch.lines()[:4])
    scratch.fill(1)  # continues from the head (seq 7), not from the cut trail (seq 5)
    assert json.loads(scratch.lines()[-1])["seq"] == 7
    _fails_at(scratch, capsys, f"{audit.CURRENT}:5", 7, "5 was due")


def test_no_new_key_is_made_for_an_existing_trail(scratch: Scratch) -> None:
    scratch.fill(1)
    os.unlink(scratch.key_file)
    with pytest.raises(FileNotFoundError):
        audit.open_trail(scratch.dir, scratch.key_file, 1 << 20, "root", None)


def test_a_failed_write_leaves_no_trace_in_the_chain(scratch: Scratch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    trail = scratch.trail()
    trail.append([audit.Pending(record(0))])
    bad = record(1, args={"x": object()})  # cannot be encoded: the batch fails before writing
    with pytest.raises(TypeError):
        trail.append([audit.Pending(bad)])
    trail.append([audit.Pending(record(2))])
    trail.close()
    assert [json.loads(x)["request_id"] for x in scratch.lines()] == ["req-0", "req-2"]
    assert run_verify(scratch, capsys)[0] == 0


def test_starts_written_after_the_head_was_saved_are_found_on_open(scratch: Scratch) -> None:
    trail = scratch.trail()
    trail.append([audit.Pending(record(0))])
    head = scratch.path(audit.HEAD)
    with open(head, "rb") as f:
        saved = f.read()
    start = record(1, phase="start", op="create_container", outcome=None)
    trail.append([audit.Pending(start, opens="k1")])
    trail.close()
    with open(head, "wb") as f:  # as after a power loss: the head lags the fsync'd trail
        f.write(saved)
    in_flight = scratch.trail().open()
    assert [e["start"]["request_id"] for e in in_flight] == ["req-1"]


# -- queries ----------------------------------------------------------------------------------

def test_query_filters_and_pages_in_trail_order(scratch: Scratch) -> None:
    scratch.fill(30, rotate=2048)
    q = ops.QueryAudit(container="c1", limit=2)
    seen: list[int] = []
    while True:
        page = audit.query(scratch.dir, q)
        seen += [r["seq"] for r in page["records"]]
        assert all(r["container"] == "c1" for r in page["records"])
        if page["next_cursor"] is None:
            break
        q = ops.QueryAudit(container="c1", limit=2, cursor=page["next_cursor"])
    assert seen == [i + 1 for i in range(30) if i % 5 == 1]
    by_id = audit.query(scratch.dir, ops.QueryAudit(actor="2"))["records"]
    assert by_id and all(r["actor"]["token_id"] == 2 for r in by_id)
    by_name = audit.query(scratch.dir, ops.QueryAudit(actor="ROBOT 0"))["records"]
    assert by_name and all(r["actor"]["description"] == "robot 0" for r in by_name)
    assert audit.query(scratch.dir, ops.QueryAudit(outcome="denied"))["records"] == []


def test_query_by_time_range(scratch: Scratch) -> None:
    scratch.fill(5)
    stamps = [json.loads(x)["ts"] for x in scratch.lines()]
    page = audit.query(scratch.dir, ops.QueryAudit(since=stamps[1], until=stamps[3]))
    assert [r["ts"] for r in page["records"]] == stamps[1:4]
    assert audit.query(scratch.dir, ops.QueryAudit(since="2999-01-01"))["records"] == []


def test_a_query_page_fits_one_frame(scratch: Scratch) -> None:
    trail = scratch.trail()
    trail.append([audit.Pending(record(i, error="x" * 2000)) for i in range(100)])
    trail.close()
    page = audit.query(scratch.dir, ops.QueryAudit(limit=ops.AUDIT_MAX_LIMIT))
    assert 0 < len(page["records"]) < 100 and page["next_cursor"] == page["records"][-1]["seq"]
    from protocol import framing
    framing.encode_frame(ops.encode_ok(page))  # raises if over the frame cap


@pytest.mark.parametrize("fields", [{"since": "yesterday"}, {"outcome": "fine"}, {"limit": 0},
                                    {"limit": ops.AUDIT_MAX_LIMIT + 1}, {"op": "rm_rf"},
                                    {"container": "../x"}, {"cursor": -1}, {"actor": ""}])
def test_bad_query_filters_are_invalid_requests(fields: dict[str, Any]) -> None:
    with pytest.raises(Exception) as info:
        ops.QueryAudit(**fields)
    assert getattr(info.value, "code", None) == "invalid-request"


# -- journald / syslog ----------------------------------------------------------------------

def test_records_reach_journald_as_structured_fields(scratch: Scratch) -> None:
    path = os.path.join(scratch.base, "journal.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(2)
    try:
        forward = Forwarder(journal=path, syslog="/nonexistent")
        rec = record(7, error="line one\nline two")
        rec.update(seq=7, chain="ab" * 32)
        forward(rec)
        data = sink.recv(65536)
        forward.close()
    finally:
        sink.close()
    fields = _parse_journal(data)
    assert fields["SYSLOG_IDENTIFIER"] == "lwp-audit"
    assert fields["LWP_AUDIT_SEQ"] == "7" and fields["LWP_OP"] == "container_info"
    assert fields["LWP_ACTOR_TOKEN_ID"] == "2" and fields["LWP_REQUEST_ID"] == "req-7"
    assert json.loads(fields["LWP_AUDIT_RECORD"]) == rec


def test_a_missing_or_dead_journal_never_fails(scratch: Scratch) -> None:
    assert not Forwarder(journal="/nonexistent", syslog="/nonexistent").active
    path = os.path.join(scratch.base, "dead.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.close()  # the name exists, nobody listens
    forward = Forwarder(journal=path, syslog="/nonexistent")
    forward(record(1))
    forward.close()
    assert forward.dropped == 1


def _parse_journal(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8:8 + size].decode()
            data = rest[8 + size + 1:]
    return fields


def test_journal_encoding_frames_values_with_newlines() -> None:
    data = encode_journal({"A": "x", "B": "1\n2"})
    assert data == b"A=x\nB\n" + struct.pack("<Q", 3) + b"1\n2\n"


# -- counted reads and refusals ----------------------------------------------------------------

async def _counted_trail(scratch: Scratch, n: int) -> list[dict[str, Any]]:
    """`n` identical reads, then two of another key, through a writer; its stop writes counts."""
    key = audit.load_key(scratch.key_file, create=True)
    trail = audit.Trail(scratch.dir, key, 1 << 20, 0)
    trail.open()
    writer = audit.AuditWriter(trail, window=3600, max_keys=16)
    for i in range(n):
        await writer.write_counted(record(0, request_id=f"r{i}"), None)
    for i in range(2):
        await writer.write_counted(record(1, request_id=f"s{i}"), None)
    await writer.close()
    return [json.loads(x) for x in scratch.lines()]


async def test_repeats_in_a_window_become_one_summary_that_says_what_it_counts(
        scratch: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    records = await _counted_trail(scratch, 50)
    assert [(r["phase"], r["request_id"]) for r in records] == [
        ("single", "r0"), ("single", "s0"), ("summary", None), ("summary", None)]
    first, summary = records[0], records[2]
    assert summary["summary"]["count"] == 49 and summary["summary"]["of_seq"] == first["seq"]
    assert summary["summary"]["first"] <= summary["summary"]["last"] <= summary["ts"]
    assert summary["summary"]["key"] == list(audit.KEY_FIELDS)
    for name in ("op", "actor", "client", "container", "outcome"):
        assert summary[name] == first[name], name
    assert summary["peer"] == {"uid": 0, "pid": None}
    assert records[3]["summary"]["count"] == 1
    assert run_verify(scratch, capsys)[0] == 0


@pytest.mark.security
async def test_a_summary_with_an_altered_count_is_caught(
        scratch: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    await _counted_trail(scratch, 50)
    lines = scratch.lines()
    lines[2] = lines[2].replace(b'"count":49', b'"count":4', 1)
    scratch.write_lines(lines)
    _fails_at(scratch, capsys, f"{audit.CURRENT}:3", 3, "chain value does not match")


async def test_reads_and_refusals_are_counted_but_changes_and_their_ends_never(
        scratch: Scratch) -> None:
    trail = scratch.trail()
    writer = audit.AuditWriter(trail, window=3600, max_keys=16)
    for read, request in ((True, ops.ListTokens()), (False, ops.RevokeToken(id=7))):
        for i in range(3):  # the caller says which is a read: audit no longer guesses
            call = audit.Call(writer, 0, 1)
            call.describe(ops.Envelope(f"{request.__class__.__name__}{i}", None, "t", request),
                          read=read)
            await call.finish(None, None, {"id": 7})
    await writer.close()
    written = [json.loads(x) for x in scratch.lines()]
    assert [(r["op"], r["phase"]) for r in written] == (
        [("list_tokens", "single")] + [("revoke_token", "single")] * 3
        + [("list_tokens", "summary")])
    assert written[-1]["summary"]["count"] == 2
    assert {"unauthorized", "forbidden", "invalid-request", "rate-limited",
            "protocol-error"} <= audit.REFUSAL_CODES
    assert not audit.REFUSAL_CODES & {"timeout", "operation-failed", "internal-error",
                                      "invalid-state", "no-such-container"}


@pytest.mark.security
def test_a_window_holds_at_most_max_keys_then_folds_peer_chosen_fields() -> None:
    agg = audit.Aggregator(window=60, max_keys=16)
    written = [agg.note(record(0, client=f"10.0.0.{i}"), "forbidden", False) for i in range(500)]
    # 16 keys written in full, then one coarse key for the rest: first written, rest counted.
    assert sum(r is not None for r in written) == 17 and len(agg.table) == 17
    summaries = agg.close_window()
    [coarse] = summaries
    assert coarse["summary"]["count"] == 500 - 17 and coarse["client"] is None
    assert coarse["summary"]["key"] == list(audit.COARSE_KEY_FIELDS)
    assert agg.table == {}


@pytest.mark.security
def test_a_made_up_op_name_in_a_bad_frame_never_splits_its_key() -> None:
    agg = audit.Aggregator(window=60, max_keys=16)
    for i in range(100):
        agg.note(record(i, op=f"made_up_{i}", actor=None), "invalid-request", True)
    [summary] = agg.close_window()
    assert summary["summary"]["count"] == 99 and summary["op"] is None


# -- queries read only the files that can hold a match ----------------------------------------

def test_a_recent_query_opens_only_the_newest_files(scratch: Scratch,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    trail = scratch.trail(rotate=2048)
    for day in range(1, 29):  # four weeks of old records, then today's
        trail.append([audit.Pending(record(i, ts=f"2026-01-{day:02d}T00:00:{i:02d}.000000Z"))
                      for i in range(6)])
    trail.append([audit.Pending(record(i, ts=f"2026-03-01T00:00:{i:02d}.000000Z"))
                  for i in range(3)])
    trail.close()
    assert len(scratch.rotated()) >= 20
    opened: list[str] = []
    real_open = open

    def counting_open(path: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.path.basename(path))
        return real_open(path, *args, **kwargs)

    for module in (audit.files, audit.reading):  # where records and file ends are read
        monkeypatch.setattr(module, "open", counting_open, raising=False)
    page = audit.query(scratch.dir, ops.QueryAudit(since="2026-02-15"))
    assert [r["ts"][:10] for r in page["records"]] == ["2026-03-01"] * 3
    # The current file, plus the ends of each rotated one (once: they never change).
    bodies = [n for n in opened if n != audit.CURRENT]
    assert len(opened) <= len(scratch.rotated()) + 2, opened
    opened.clear()
    audit.query(scratch.dir, ops.QueryAudit(since="2026-02-15"))
    assert opened == [audit.CURRENT], (opened, bodies)
    late = audit.query(scratch.dir, ops.QueryAudit(since="2026-01-28", until="2026-01-28T23:59"))
    assert [r["ts"][:10] for r in late["records"]] == ["2026-01-28"] * 6


# -- archiving: compressed and moved-away rotated files ---------------------------------------

def test_compressed_rotated_files_still_verify_and_answer_queries(
        filled: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    import gzip
    for name in filled.rotated():
        with open(filled.path(name), "rb") as f, gzip.open(filled.path(name) + ".gz", "wb") as g:
            g.write(f.read())
        os.unlink(filled.path(name))
    assert run_verify(filled, capsys) == (0, f"ok: 40 records in {len(filled.rotated()) + 1} "
                                             "files verify\n")
    assert len(audit.query(filled.dir, ops.QueryAudit(container="c1"))["records"]) == 8


def test_verify_from_the_oldest_file_present_after_archiving(
        filled: Scratch, capsys: pytest.CaptureFixture[str]) -> None:
    rotated = filled.rotated()
    archive = os.path.join(filled.base, "archive")
    os.makedirs(archive)
    for name in rotated[:2]:
        os.rename(filled.path(name), os.path.join(archive, name))
    assert run_verify(filled, capsys)[0] == 1  # without saying so, a gap is a failure
    code = admin.main(["--config", filled.config, "audit", "verify", "--from-oldest"])
    out = capsys.readouterr().out
    assert code == 0 and f"from seq {int(rotated[2][6:18])}" in out, out
    lines = filled.lines(rotated[2])
    lines[1] = lines[1].replace(b'"c', b'"d', 1)  # tampering after the anchor is still caught
    filled.write_lines(lines, rotated[2])
    code = admin.main(["--config", filled.config, "audit", "verify", "--from-oldest"])
    assert code == 1 and "chain value does not match" in capsys.readouterr().out


def test_ts_is_the_last_key_of_a_record_which_the_query_prefilter_relies_on() -> None:
    assert max([*audit.blank_record(), "seq", "chain"]) == "ts"


def test_a_query_at_a_time_bound_keeps_every_record_stamped_at_or_after_it(
        scratch: Scratch) -> None:
    trail = scratch.trail()
    stamps = [f"2026-02-01T10:00:0{i}.000000Z" for i in range(6)]
    trail.append([audit.Pending(record(i, ts=ts)) for i, ts in enumerate(stamps)])
    trail.close()
    page = audit.query(scratch.dir, ops.QueryAudit(since=stamps[2], until=stamps[4]))
    assert [r["ts"] for r in page["records"]] == stamps[2:5]


# -- the helper's settings for all this -------------------------------------------------------

@pytest.mark.parametrize("setting", [
    "audit_window = 0", "audit_window_keys = 0", "token_requests_burst = 0",
    "token_requests_per_second = 0", "audit_min_free_bytes = -1",
    "audit_min_free_bytes = 1000\naudit_reserve_bytes = 2000",
])
def test_a_helper_setting_that_would_disable_a_defence_is_refused(scratch: Scratch,
                                                                  setting: str) -> None:
    from helperd import config
    from protocol.config import ConfigError
    with open(scratch.config) as f:
        text = f.read()
    with open(scratch.config, "w") as f:
        f.write(text.replace("stop_timeout = 1\n", f"stop_timeout = 1\n{setting}\n"))
    with pytest.raises(ConfigError):
        config.load(scratch.config)


def test_token_buckets_limit_each_key_and_remember_at_most_max_keys() -> None:
    from protocol.limits import Buckets
    buckets = Buckets(burst=3, per_second=1.0, max_keys=100)
    assert [buckets.take(7, 0.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert buckets.take(7, 0.0) == pytest.approx(1.0)
    assert buckets.take(8, 0.0) == 0.0  # another key's budget is its own
    assert buckets.take(7, 1.0) == 0.0  # refilled at the rate
    for key in range(10_000):
        buckets.take(key + 1000, 2.0)
    assert len(buckets) == 100
