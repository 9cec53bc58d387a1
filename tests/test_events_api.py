"""GET /api/v1/events and the list from the helper's state table, through the whole chain on
real containers: changes made behind the helper's back, replay, scopes, caps and revocation."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any

import pytest

from protocol import ops
from tests.conftest import Tokens, World, make_container
from tests.test_statewatch import INITTAB_LINE, POWEROFF_TRIGGER

pytestmark = pytest.mark.lxc


class Sse:
    """Reads an SSE response event by event (comments and retry lines skipped)."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.comments = 0

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        event: dict[str, Any] = {}
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), timeout)).decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line == "":
                if "event" in event:
                    return event
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            key, _, value = line.partition(": ")
            event[key] = json.loads(value) if key == "data" else value

    async def close(self) -> None:
        """Hang up, and give the server a moment to see it (its handler is then cancelled)."""
        self.response.close()
        await asyncio.sleep(0.6)  # frontend.events.CLIENT_CHECK

    async def until(self, kind: str, match: dict[str, Any] | None = None,
                    timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event["event"] == kind and all(event["data"].get(k) == v
                                              for k, v in (match or {}).items()):
                return event


async def open_stream(api: Any, headers: dict[str, str], query: str = "",
                      status: int = 200) -> Sse:
    r = await api.get(f"/api/v1/events{query}", headers=headers)
    assert r.status == status, await r.text()
    if status == 200:
        assert r.headers["Content-Type"].startswith("text/event-stream")
    return Sse(r)


async def listed(api: Any, headers: dict[str, str], name: str) -> str:
    r = await api.get("/api/v1/containers", headers=headers)
    assert r.status == 200
    return {c["container"]: c["state"] for c in await r.json()}[name]


def outside(world: World, *argv: str) -> None:
    """An admin on the host: lxc-start/lxc-stop, not the API."""
    subprocess.run([argv[0], "-P", world.lxcpath, *argv[1:]], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


async def test_the_list_is_never_staler_than_the_last_notification(
        api: Any, admin: dict[str, str], world: World) -> None:
    name = await make_container(api, admin)
    assert await listed(api, admin, name) == "stopped"
    await asyncio.to_thread(outside, world, "lxc-start", "-n", name)
    assert await listed(api, admin, name) == "running"  # read at once, no wait
    await asyncio.to_thread(outside, world, "lxc-stop", "-k", "-n", name)
    assert await listed(api, admin, name) == "stopped"


async def test_a_poweroff_from_inside_is_an_external_event_and_the_list_shows_it(
        api: Any, admin: dict[str, str], world: World) -> None:
    name = await make_container(api, admin)
    with open(os.path.join(world.lxcpath, name, "rootfs", "etc", "inittab"), "a") as f:
        f.write(INITTAB_LINE)
    sse = await open_stream(api, admin, f"?types=lifecycle&container={name}")
    r = await api.post(f"/api/v1/containers/{name}", json={"action": "start"}, headers=admin)
    assert r.status == 200
    started = await sse.until("lifecycle", {"new": "RUNNING"})
    assert started["data"]["cause"] == r.headers["X-Request-Id"]  # ours, with its request id
    with open(os.path.join(world.lxcpath, name, "rootfs", POWEROFF_TRIGGER), "w"):
        pass
    stopped = await sse.until("lifecycle", {"new": "STOPPED"}, timeout=10)
    assert stopped["data"]["cause"] == "external"
    assert await listed(api, admin, name) == "stopped"
    await sse.close()


async def test_an_outside_lxc_start_is_an_external_event(api: Any, admin: dict[str, str],
                                                         world: World) -> None:
    name = await make_container(api, admin)
    sse = await open_stream(api, admin, f"?container={name}")
    await asyncio.to_thread(outside, world, "lxc-start", "-n", name)
    event = await sse.until("lifecycle", {"new": "RUNNING"})
    assert event["data"]["cause"] == "external" and event["data"]["container"] == name
    await asyncio.to_thread(outside, world, "lxc-stop", "-k", "-n", name)
    await sse.until("lifecycle", {"new": "STOPPED"})
    await sse.close()


async def test_create_is_an_operation_started_then_finished(api: Any,
                                                            admin: dict[str, str]) -> None:
    sse = await open_stream(api, admin, "?types=operation")
    name = await make_container(api, admin)
    started = await sse.until("operation", {"container": name, "phase": "started"})
    finished = await sse.until("operation", {"container": name, "phase": "finished"})
    assert started["data"]["op"] == finished["data"]["op"] == "create_container"
    await sse.close()


async def test_last_event_id_replays_what_was_missed_and_a_foreign_id_resets(
        api: Any, admin: dict[str, str]) -> None:
    sse = await open_stream(api, admin, "?types=operation")
    first = await make_container(api, admin)
    seen = await sse.until("operation", {"container": first, "phase": "finished"})
    await sse.close()
    missed = await make_container(api, admin)  # while no stream was open
    again = await open_stream(api, {**admin, "Last-Event-ID": seen["id"]}, "?types=operation")
    replayed = await again.until("operation", {"container": missed, "phase": "finished"})
    assert int(replayed["id"].split("-")[1]) > int(seen["id"].split("-")[1])
    await again.close()
    other_run = "0123456789abcdef-5"
    reset = await open_stream(api, {**admin, "Last-Event-ID": other_run})
    assert (await reset.next())["event"] == "reset"
    await reset.close()
    await open_stream(api, {**admin, "Last-Event-ID": "5"}, status=400)  # not one we gave


@pytest.mark.security
async def test_audit_events_are_for_admin_tokens_only(api: Any, tokens: Tokens) -> None:
    read = {"private-token": tokens.read}
    await open_stream(api, read, "?types=audit", status=403)
    sse = await open_stream(api, read)  # every type it may see: lifecycle and operation
    admin = await open_stream(api, {"private-token": tokens.admin}, "?types=audit")
    r = await api.get("/api/v1/containers", headers=read)
    assert r.status == 200
    # Audit events come in trail order: the streams' own subscribe records may come first.
    ops_seen = []
    while "list_containers" not in ops_seen:
        record = await admin.until("audit")  # fails at its timeout if the record never comes
        ops_seen.append(record["data"]["record"]["op"])
    assert set(ops_seen) <= {"subscribe_events", "list_containers"}, ops_seen
    for s in (sse, admin):
        await s.close()


@pytest.mark.security
async def test_the_stream_ends_when_its_token_is_revoked(api: Any, world: World,
                                                         admin: dict[str, str]) -> None:
    made = world.call(ops.CreateToken(None, "events revoke test", "read"))
    sse = await open_stream(api, {"private-token": made["token"]})
    world.call(ops.RevokeToken(id=made["id"]))
    ended = await sse.until("end", timeout=5)
    assert ended["data"]["reason"] == "revoked"
    with pytest.raises(EOFError):
        await sse.next(timeout=5)


@pytest.mark.security
async def test_the_stream_ends_when_its_token_expires(api: Any, world: World) -> None:
    made = world.call(ops.CreateToken(None, "events expiry test", "read", time.time() + 2))
    sse = await open_stream(api, {"private-token": made["token"]})
    ended = await sse.until("end", timeout=6)
    assert ended["data"]["reason"] == "expired"


@pytest.mark.security
async def test_streams_per_token_are_capped(api: Any, world: World) -> None:
    made = world.call(ops.CreateToken(None, "events cap test", "read"))
    headers = {"private-token": made["token"]}
    held = [await open_stream(api, headers) for _ in range(4)]
    r = await api.get("/api/v1/events", headers=headers)
    assert r.status == 429
    await held.pop().close()
    deadline = time.monotonic() + 5  # the frontend notices a hang-up within CLIENT_CHECK
    while (r := await api.get("/api/v1/events", headers=headers)).status == 429:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    held.append(Sse(r))
    for s in held:
        await s.close()


async def test_metrics_need_a_token_and_accept_a_bearer_header(api: Any, tokens: Tokens,
                                                                admin: dict[str, str]) -> None:
    name = await make_container(api, admin, start=True)
    assert (await api.get("/metrics")).status == 401
    assert (await api.get("/metrics", headers={"Authorization": "Bearer nope" * 3})).status \
        == 401
    bearer = {"Authorization": f"Bearer {tokens.read}"}
    assert (await api.get("/api/v1/containers", headers=bearer)).status == 200
    r = await api.get("/metrics", headers=bearer)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await r.text()
    assert f'lwp_container_state{{container="{name}",state="RUNNING"}} 1' in text
    assert 'lwp_helper_ops_total{op="list_containers",outcome="ok"}' in text
    assert 'lwp_http_requests_total{route="/api/v1/containers",method="GET",status="200"}' \
        in text
    assert "lwp_auth_failures_total" in text and tokens.read not in text
