"""Flooding the audit trail: reads and refusals are counted, not written one by one; per-token
request limits in the helper and the frontend; the free-space floor under the trail."""
from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from helperd import audit
from protocol import framing, ops
from protocol.client import HelperClient
from protocol.errors import LwpError
from tests.conftest import World, configure, trail
from tests.live import make_token, start_frontend, stop_frontend

pytestmark = [pytest.mark.lxc, pytest.mark.security]


def trail_bytes(world: World) -> int:
    return sum(os.path.getsize(p) for p in audit.trail_files(os.path.join(world.base, "audit")))


def start(world: World) -> None:
    """Start the world's helper and wait until it accepts (the socket file exists from bind
    on, a moment before the helper listens)."""
    world.start_helper()
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(world.socket)
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def fresh(fresh_world: World) -> World:
    return fresh_world


def counted(records: list[dict[str, Any]]) -> int:
    """Requests a set of records accounts for: one each, plus what each summary counts."""
    return sum((r.get("summary") or {}).get("count", 0) if r["phase"] == "summary" else 1
               for r in records)


# -- a read token hammering list ------------------------------------------------------------

async def _hammer(world: World, token: str, seconds: float, clients: int) -> int:
    done = 0

    async def one() -> None:
        nonlocal done
        helper = HelperClient(world.socket)
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await helper.call(ops.Envelope(uuid.uuid4().hex, token, "10.1.2.3",
                                               ops.ListContainers()))
                done += 1
        finally:
            await helper.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return done


def test_sixteen_clients_listing_write_a_few_records_a_window_not_one_a_request(
        fresh: World) -> None:
    configure(fresh, audit_window=1.0, token_requests_burst=1_000_000,
              token_requests_per_second=1_000_000.0)
    start(fresh)
    read = make_token(fresh, "read")
    before_records, before_bytes = len(trail(fresh)), trail_bytes(fresh)
    started = time.monotonic()
    loop = asyncio.new_event_loop()
    try:
        requests = loop.run_until_complete(_hammer(fresh, read, 3.0, 16))
    finally:
        loop.close()
    elapsed = time.monotonic() - started
    written = trail(fresh)[before_records:]
    rate = (trail_bytes(fresh) - before_bytes) / elapsed
    print(f"\n{requests} lists in {elapsed:.1f} s: {len(written)} records, {rate:.0f} bytes/s")
    assert requests >= 300, requests
    # Per 1 s window: the first list written at once, the rest in one summary.
    assert len(written) <= 2 * (elapsed + 2), [r["phase"] for r in written]
    fresh.stop_helper()  # shutdown writes the last window's count
    written = trail(fresh)[before_records:]
    assert counted(written) == requests
    for r in written:
        assert (r["op"], r["outcome"], r["actor"]["scope"], r["client"]) == (
            "list_containers", "ok", "read", "10.1.2.3")
    summaries = [r for r in written if r["phase"] == "summary"]
    assert summaries and all(s["summary"]["first"] <= s["summary"]["last"] <= s["ts"]
                             for s in summaries)


# -- malformed frames from an allowed peer ------------------------------------------------------

def _bad_frame(world: World, i: int) -> str:
    # Every attacker-chosen field differs from frame to frame: none of them may split the count.
    frame = framing.encode_frame({"id": f"bad-{i}", "op": f"format_disk_{i}", "token": None,
                                  "client": f"client-{i}", "args": {}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(world.socket)
        s.sendall(frame)
        header = s.recv(4)
        reply = framing.decode_untrusted_body(s.recv(framing.body_length(header)))
    return str(reply["code"])


def test_three_hundred_malformed_frames_write_a_handful_of_records_with_the_count(
        fresh: World) -> None:
    start(fresh)
    before = len(trail(fresh))
    started = time.monotonic()
    codes = {_bad_frame(fresh, i) for i in range(300)}
    elapsed = time.monotonic() - started
    assert codes == {"invalid-request"}
    print(f"\n300 bad frames in {elapsed:.2f} s: {len(trail(fresh)) - before} records at once")
    fresh.stop_helper()
    written = trail(fresh)[before:]
    print(f"{len(written)} records after shutdown")
    assert len(written) <= 5, len(written)
    assert counted(written) == 300
    assert all(r["outcome"] == "invalid" and r["peer"]["uid"] == 0 for r in written)
    [summary] = [r for r in written if r["phase"] == "summary"]
    assert summary["summary"]["count"] == 299 and summary["summary"]["code"] == "invalid-request"


# -- per-token request limits -----------------------------------------------------------------

def _get(url: str, token: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, headers={"private-token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_a_token_past_its_request_limit_gets_429_with_retry_after_from_the_frontend(
        fresh: World) -> None:
    start(fresh)
    read, other = make_token(fresh, "read"), make_token(fresh, "read")
    live = start_frontend(fresh, "token_requests_burst = 5\ntoken_requests_per_second = 0.1\n")
    try:
        url = f"{live.url}/api/v1/containers"
        statuses = [_get(url, read) for _ in range(8)]
        assert [s for s, _ in statuses] == [200] * 5 + [429] * 3
        assert int(statuses[-1][1]["Retry-After"]) >= 1
        assert _get(url, other)[0] == 200  # another token's budget is its own
    finally:
        stop_frontend(live)
    # The frontend refused them itself: the helper saw only the six it let through (counted
    # in full once the helper's window closes, here at its stop).
    fresh.stop_helper()
    lists = [r for r in trail(fresh) if r["op"] == "list_containers"]
    assert counted(lists) == 6


def test_the_helper_limits_a_token_itself_when_frames_come_raw(fresh: World) -> None:
    configure(fresh, token_requests_burst=5, token_requests_per_second=0.1)
    start(fresh)
    read = make_token(fresh, "read")
    outcomes = []
    for _ in range(12):
        try:
            fresh.call(ops.ListContainers(), read)
            outcomes.append("ok")
        except LwpError as exc:
            outcomes.append(exc.code)
    assert outcomes == ["ok"] * 5 + ["rate-limited"] * 7
    for _ in range(12):  # root's own CLI is never limited
        fresh.call(ops.ListContainers())


def test_the_helpers_own_limit_reaches_the_client_as_429_with_retry_after(
        fresh: World) -> None:
    configure(fresh, token_requests_burst=3, token_requests_per_second=0.1)
    start(fresh)
    read = make_token(fresh, "read")
    live = start_frontend(fresh)  # the frontend's own limit is far away: the helper's holds
    try:
        statuses = [_get(f"{live.url}/api/v1/containers", read) for _ in range(5)]
    finally:
        stop_frontend(live)
    assert [s for s, _ in statuses] == [200] * 3 + [429] * 2
    assert statuses[-1][1]["Retry-After"] == "1"


# -- the free-space floor ------------------------------------------------------------------------

def test_below_the_floor_reads_are_refused_then_below_the_reserve_changes_too(
        fresh: World) -> None:
    free = os.statvfs(fresh.base).f_bavail * os.statvfs(fresh.base).f_frsize
    # Reads need more than there is; changes need less.
    configure(fresh, audit_min_free_bytes=free * 4, audit_reserve_bytes=1024 * 1024)
    start(fresh)
    with pytest.raises(LwpError) as refused:
        fresh.call(ops.ListContainers())
    assert refused.value.code == "insufficient-storage"
    assert "free" in refused.value.message
    fresh.call(ops.CreateToken(None, "still possible", "read"))  # a change: still recorded
    fresh.stop_helper()
    with open(fresh.config) as f:  # TOML allows a key once: replace the reserve
        text = f.read()
    with open(fresh.config, "w") as f:
        f.write(text.replace("audit_reserve_bytes = 1048576\n", ""))
    configure(fresh, audit_reserve_bytes=free * 2)
    start(fresh)
    with pytest.raises(LwpError) as refused:
        fresh.call(ops.CreateToken(None, "not now", "read"))
    assert refused.value.code == "insufficient-storage"
    descriptions = [t["description"] for t in _tokens_on_disk(fresh)]
    assert "still possible" in descriptions and "not now" not in descriptions
    records = trail(fresh)
    assert not [r for r in records if r["op"] == "create_token" and r["outcome"] == "ok"
                and (r["args"] or {}).get("description") == "not now"]


def _tokens_on_disk(world: World) -> list[dict[str, Any]]:
    import sqlite3
    with sqlite3.connect(os.path.join(world.state_dir, "tokens.sqlite3")) as db:
        return [{"description": d} for (d,) in db.execute("SELECT description FROM tokens")]
