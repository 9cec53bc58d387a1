"""The audit trail as a real helper writes it: every API call, refusals, kill -9, load, access."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from helperd import admin, audit, policy
from helperd.config import load as load_helper_config
from helperd.containers import Containers
from helperd.recovery import settle_container
from protocol import framing, ops
from protocol.client import HelperClient
from protocol.errors import LwpError
from tests.conftest import (
    PYTHON,
    ROOT,
    Tokens,
    World,
    as_user,
    configure,
    make_container,
    new_name,
    trail,
)

pytestmark = pytest.mark.lxc
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# A token the helper generated: its prefix and 256 bits of urlsafe base64.
GENERATED_TOKEN_RE = re.compile(rb"lwp_[A-Za-z0-9_-]{43}")
FIELDS = {"seq", "ts", "request_id", "phase", "op", "outcome", "container", "actor", "client",
          "peer", "args", "error", "duration_ms", "recovery", "summary", "chain"}
# Token secrets the tests in this module chose themselves (never to be found in a log).
CHOSEN_SECRETS: list[str] = []


def of_request(world: World, request_id: str) -> list[dict[str, Any]]:
    return [r for r in trail(world) if r["request_id"] == request_id]


def run(coro: Any) -> Any:
    """Run a coroutine on a private loop: asyncio.run() would also drop the loop that
    pytest-asyncio left current after an async test, and its unclosed self-pipe then
    fails a later test with a ResourceWarning."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def ask(world: World, request: Any, token: str | None = None,
              request_id: str | None = None, client: str = "test") -> Any:
    helper = HelperClient(world.socket)
    try:
        return await helper.call(ops.Envelope(request_id or uuid.uuid4().hex, token, client,
                                              request))
    finally:
        await helper.close()


def call(world: World, request: Any, token: str | None = None, request_id: str | None = None,
         client: str = "test") -> Any:
    return run(ask(world, request, token, request_id, client))


async def token_ids(world: World) -> dict[str, int]:
    return {t["description"]: t["id"] for t in await ask(world, ops.ListTokens())}


def lwp_admin(world: World, *args: str) -> str:
    done = subprocess.run([PYTHON, "-m", "helperd.admin", "--config", world.config, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def verify(world: World, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = admin.main(["--config", world.config, "audit", "verify"])
    return code, capsys.readouterr().out


def assert_no_secret(world: World, secrets: list[str]) -> None:
    files = audit.trail_files(os.path.join(world.base, "audit")) + [world.log]
    files.append(os.path.join(world.base, "audit", audit.HEAD))
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for secret in secrets:
            assert secret.encode() not in data, f"a token secret is in {path}"
        assert not GENERATED_TOKEN_RE.search(data), f"a generated token is in {path}"


@pytest.fixture
async def api(world: World, aiohttp_client: Any) -> Any:
    # The product's access logger: aiohttp's default (used by the shared fixture) would log
    # the token in a revoke path, and this module checks every log line for secrets.
    server = TestServer(make_app(world.frontend))
    await server.start_server(access_log_class=AccessLogger)
    return await aiohttp_client(server)


@pytest.fixture
def dedicated(fresh_world: World) -> World:
    return fresh_world


# -- every mutating API call: one start, one end, every field right --------------------------

async def test_each_mutating_api_call_leaves_one_start_and_one_end_with_every_field(
        api: Any, world: World, tokens: Tokens, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ids = await token_ids(world)
    admin_h = {"private-token": tokens.admin}
    operate_h = {"private-token": tokens.operate}
    a, b = new_name(), new_name()
    calls: list[tuple[Any, str, str | None, dict[str, Any], str, str]] = []

    async def do(coro: Any, op: str, container: str | None, args: dict[str, Any],
                 who: str, outcome: str = "ok") -> None:
        r = await coro
        calls.append((r.headers["X-Request-Id"], op, container, args, who, outcome))
        assert r.status == (200 if outcome == "ok" else 409), await r.text()

    await do(api.put("/api/v1/containers", json={"name": a, "template": "busybox"},
                     headers=admin_h), "create_container", a,
             {"name": a, "template": "busybox", "store": None, "xargs": [], "privileged": False},
             "admin")
    await do(api.put("/api/v1/containers", json={"name": b, "clone": a, "store": "dir"},
                     headers=admin_h), "clone_container", b,
             {"name": b, "source": a, "store": "dir"}, "admin")
    for action in ("start", "freeze", "unfreeze", "restart", "stop"):
        await do(api.post(f"/api/v1/containers/{a}", json={"action": action}, headers=operate_h),
                 f"{action}_container", a, {"name": a}, "operate")
    await do(api.post(f"/api/v1/containers/{a}", json={"action": "stop"}, headers=operate_h),
             "stop_container", a, {"name": a}, "operate", outcome="error")
    await do(api.delete(f"/api/v1/containers/{b}?force=true", headers=admin_h),
             "destroy_container", b, {"name": b, "force": True}, "admin")
    await do(api.delete(f"/api/v1/containers/{a}", headers=admin_h),
             "destroy_container", a, {"name": a, "force": False}, "admin")

    for request_id, op, container, args, who, outcome in calls:
        records = of_request(world, request_id)
        assert [r["phase"] for r in records] == ["start", "end"], (op, records)
        start, end = records
        for r in records:
            assert set(r) == FIELDS
            assert TS_RE.fullmatch(r["ts"]) and re.fullmatch(r"[0-9a-f]{64}", r["chain"])
            assert r["op"] == op and r["container"] == container and r["args"] == args
            assert r["actor"] == {"token_id": ids[f"test {who}"], "description": f"test {who}",
                                  "scope": who}
            assert r["client"] == "127.0.0.1"
            assert r["peer"] == {"uid": os.geteuid(), "pid": os.getpid()}
            assert r["recovery"] is None
        assert start["outcome"] is None and start["error"] is None
        assert start["duration_ms"] is None
        assert end["outcome"] == outcome and end["seq"] > start["seq"]
        assert end["ts"] >= start["ts"] and end["duration_ms"] > 0
        assert (end["error"] is None) == (outcome == "ok")
    assert "it is not running" in of_request(world, calls[-3][0])[1]["error"]
    for secret in (tokens.admin, tokens.operate):
        assert secret not in caplog.text


async def test_reads_and_token_calls_leave_one_record_and_no_secret(
        api: Any, world: World, tokens: Tokens, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin_h = {"private-token": tokens.admin}
    chosen = f"chosen-secret-{uuid.uuid4().hex}"
    CHOSEN_SECRETS.append(chosen)
    made = await api.post("/api/v1/tokens", json={"token": chosen, "description": "audited",
                                                  "scope": "read"}, headers=admin_h)
    revoked = await api.delete(f"/api/v1/tokens/{chosen}", headers=admin_h)
    # A token of its own: a read is written when it is the first of its key (op, actor,
    # client, ...) in the window, and other tests list with the shared tokens.
    lister = await ask(world, ops.CreateToken(None, f"lister {uuid.uuid4().hex}", "read"))
    listed = await api.get("/api/v1/containers", headers={"private-token": lister["token"]})
    made_id = (await made.json())["id"]
    expected = {
        made: ("create_token", {"description": "audited", "scope": "read", "expires": None,
                                "containers": None, "token_chosen": True, "id": made_id}),
        revoked: ("revoke_token", {"by": "token", "id": made_id}),
        listed: ("list_containers", {}),
    }
    for response, (op, args) in expected.items():
        assert response.status == 200
        records = of_request(world, response.headers["X-Request-Id"])
        assert len(records) == 1, records
        assert records[0]["phase"] == "single" and records[0]["outcome"] == "ok"
        assert records[0]["op"] == op and records[0]["args"] == args
    assert chosen not in caplog.text and chosen not in json.dumps(trail(world))


# -- refusals are recorded too ---------------------------------------------------------------

def test_a_scope_refused_by_the_helper_is_denied_with_the_actor(world: World,
                                                                tokens: Tokens) -> None:
    request_id = uuid.uuid4().hex
    with pytest.raises(LwpError, match="Forbidden"):
        call(world, ops.DestroyContainer("victim"), tokens.read, request_id, "10.0.0.9")
    [record] = of_request(world, request_id)  # the first of its key in the window
    assert record["phase"] == "single" and record["outcome"] == "denied"
    assert record["actor"]["token_id"] == run(token_ids(world))["test read"]
    assert record["client"] == "10.0.0.9" and record["container"] == "victim"
    assert record["error"] == "Forbidden"


def test_an_unknown_token_is_denied_without_an_actor(world: World) -> None:
    request_id = uuid.uuid4().hex
    client = f"unknown-{uuid.uuid4().hex[:8]}"  # a key of its own: written, not counted
    with pytest.raises(LwpError):
        call(world, ops.ListContainers(), "not-a-token-at-all-000", request_id, client)
    [record] = of_request(world, request_id)
    assert (record["outcome"], record["actor"]) == ("denied", None)
    assert "not-a-token-at-all-000" not in json.dumps(record)


def test_a_frame_that_does_not_decode_is_recorded_as_invalid(dedicated: World) -> None:
    # A helper of its own: bad frames are counted per peer uid and code, and other tests
    # send them too; the first in a window is written in full.
    world = dedicated
    world.start_helper()
    frame = framing.encode_frame({"id": "bad-frame-0001", "op": "format_disk", "token": None,
                                  "client": "somewhere", "args": {}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(world.socket)
        s.sendall(frame)
        header = s.recv(4)
        reply = framing.decode_untrusted_body(s.recv(framing.body_length(header)))
    assert reply["code"] == "invalid-request"
    [record] = of_request(world, "bad-frame-0001")
    assert (record["op"], record["outcome"], record["phase"]) == ("format_disk", "invalid",
                                                                  "single")
    assert record["client"] == "somewhere" and record["actor"] is None
    assert record["peer"]["uid"] == 0 and "unknown operation" in record["error"]


# -- reading it: API and CLI -----------------------------------------------------------------

async def test_audit_api_filters_and_pages_for_admins_only(api: Any, world: World,
                                                           tokens: Tokens) -> None:
    admin_h = {"private-token": tokens.admin}
    name = await make_container(api, admin_h)
    await api.get(f"/api/v1/containers/{name}", headers=admin_h)
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        r = await api.get(f"/api/v1/audit/?container={name}&limit=1{cursor}", headers=admin_h)
        assert r.status == 200, await r.text()
        page = await r.json()
        seen += page["records"]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert [(x["op"], x["phase"]) for x in seen] == [
        ("create_container", "start"), ("create_container", "end"), ("container_info", "single")]
    r = await api.get("/api/v1/audit?op=create_container&outcome=ok&since=2000-01-01",
                      headers=admin_h)
    assert all(x["op"] == "create_container" for x in (await r.json())["records"])
    for scope in ("operate", "read"):
        r = await api.get("/api/v1/audit", headers={"private-token": getattr(tokens, scope)})
        assert r.status == 403
    for query in ("outcome=great", "since=yesterday", "limit=0", "limit=x", "colour=red",
                  "container=../etc"):
        r = await api.get(f"/api/v1/audit?{query}", headers=admin_h)
        assert r.status == 400, query


def test_admin_cli_lists_filters_and_verifies(world: World, tokens: Tokens,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    name = new_name()
    call(world, ops.CreateContainer(name, "recorder"))
    table = lwp_admin(world, "audit", "--container", name).splitlines()
    assert table[0].split()[:4] == ["TS", "SEQ", "PHASE", "OUTCOME"]
    assert [line.split()[2] for line in table[1:]] == ["start", "end"]
    [line] = lwp_admin(world, "audit", "--json", "--op", "create_container", "--container", name,
                       "--outcome", "ok").splitlines()
    assert json.loads(line)["container"] == name
    assert lwp_admin(world, "--json", "audit", "--container", name, "--limit", "1").count("\n") == 1
    assert verify(world, capsys)[0] == 0


# -- kill -9 in the middle of a create ---------------------------------------------------------

def _group(pgid: int) -> list[int]:
    """Live members of a process group."""
    stats = ((int(pid), audit.proc_stat(pid)) for pid in os.listdir("/proc") if pid.isdigit())
    return [pid for pid, st in stats if st is not None and st[0] == pgid and st[2] not in "ZX"]


def _wait_for(predicate: Any, what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_create_is_recorded_interrupted_and_leaves_no_half_container(
        dedicated: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = dedicated
    w.start_helper()
    name, request_id = new_name(), uuid.uuid4().hex
    failures: list[BaseException] = []

    def create() -> None:
        try:
            call(w, ops.CreateContainer(name, "slow"), request_id=request_id)
        except LwpError as exc:  # the helper dies under it
            failures.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    head_path = os.path.join(w.base, "audit", audit.HEAD)

    def child() -> Any:
        head = audit.read_head(os.path.join(w.base, "audit"))
        return head and [e["child"] for e in head["open"].values() if e["child"]]
    [[pgid, _born]] = _wait_for(child, "the create's child in " + head_path)
    _wait_for(lambda: len(_group(pgid)) >= 3, "the template to run")  # child, sh, sleep
    assert w.process is not None
    w.process.kill()
    w.process.wait()
    orphans = _wait_for(lambda: _group(pgid), "the template to outlive the helper")
    os.unlink(w.socket)  # the dead helper's
    w.start_helper()  # the socket appears only after recovery
    thread.join(30)
    assert failures and isinstance(failures[0], LwpError)

    start, end = of_request(w, request_id)
    assert start["phase"] == "start" and start["op"] == "create_container"
    assert end["phase"] == "end" and end["outcome"] == "interrupted"
    assert end["recovery"]["container"] == "destroyed: incomplete"
    assert end["recovery"]["orphans_killed"] >= 1 and end["recovery"]["start_seq"] == start["seq"]
    assert end["actor"] == start["actor"] and end["container"] == name
    assert orphans and _group(pgid) == []  # the template outlived the helper; recovery ended it
    assert name not in w.container_dirs()  # fully gone
    assert audit.read_head(os.path.join(w.base, "audit"))["open"] == {}  # type: ignore[index]
    # Nothing is run again, and the helper serves as before.
    assert call(w, ops.ListContainers()) == []
    assert verify(w, capsys)[0] == 0
    w.stop_helper()
    w.start_helper()  # a second start finds nothing left to recover
    assert len(of_request(w, request_id)) == 2


async def test_recovery_keeps_a_complete_create_and_destroys_a_half_made_one(
        world: World) -> None:
    cfg = load_helper_config(world.config)
    containers = Containers(cfg)
    complete, half, cloned, theirs = new_name(), new_name(), new_name(), new_name()
    for name in (complete, half, cloned, theirs):
        await ask(world, ops.CreateContainer(name, "recorder"))
    with open(os.path.join(world.lxcpath, half, "partial"), "w"):
        pass  # liblxc's marker of a create that never finished

    def entry(op: str, name: str, preexisting: bool | None) -> dict[str, Any]:
        meta = {} if preexisting is None else {"preexisting": preexisting}
        return {"start": {"op": op, "container": name}, "meta": meta}
    assert await settle_container(entry("create_container", complete, False), containers,
                                  world.lxcpath) == "kept: complete"
    assert await settle_container(entry("create_container", half, False), containers,
                                  world.lxcpath) == "destroyed: incomplete"
    assert (await settle_container(entry("clone_container", cloned, False), containers,
                                   world.lxcpath)).startswith("destroyed")
    assert (await settle_container(entry("clone_container", theirs, True), containers,
                                   world.lxcpath)).startswith("kept: it existed before")
    assert await settle_container(entry("start_container", theirs, False), containers,
                                  world.lxcpath) == "untouched"
    dirs = world.container_dirs()
    assert complete in dirs and theirs in dirs and half not in dirs and cloned not in dirs


async def test_recovery_thaws_a_container_a_cut_short_freeze_left_freezing(
        world: World, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_helper_config(world.config)
    frozen = new_name()
    await ask(world, ops.CreateContainer(frozen, "busybox"))
    await ask(world, ops.StartContainer(frozen))
    await ask(world, ops.FreezeContainer(frozen))
    entry = {"start": {"op": "freeze_container", "container": frozen}, "meta": {}}
    # A freeze that finished is kept as it is.
    assert await settle_container(entry, Containers(cfg), world.lxcpath) == "untouched: frozen"
    assert Containers(cfg).state_of(frozen) == "FROZEN"
    await ask(world, ops.StopContainer(frozen))

    # FREEZING cannot be made on demand (it lasts as long as the kernel takes), so liblxc's
    # answers are stood in for here; the thaw is the same call a missed deadline makes.
    marker = tmp_path / "thawed"

    class Stuck(Containers):
        def state_of(self, name: str) -> str:
            return "FREEZING"

    def thaw(containers: Containers, name: str) -> None:
        marker.write_text(name)
    freeze = policy.RULES["freeze_container"]
    monkeypatch.setitem(policy.RULES, "freeze_container", dataclasses.replace(
        freeze, on_timeout=thaw))
    entry = {"start": {"op": "freeze_container", "container": "t-stuck"}, "meta": {}}
    assert await settle_container(entry, Stuck(cfg), world.lxcpath) == \
        "thawed: the freeze was cut short"
    assert marker.read_text() == "t-stuck"


# -- rotation under concurrent load --------------------------------------------------------------

def test_rotation_under_concurrent_mutations_keeps_every_record_once(
        dedicated: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = dedicated
    configure(w, audit_rotate_bytes=4096)
    w.start_helper()
    token = call(w, ops.CreateToken(None, "load", "admin"))["token"]
    # request id -> (mutating, the outcome the client saw). Under a loaded CI machine a
    # liblxc step may fail or time out; the trail must say so exactly as the client saw it.
    issued: dict[str, tuple[bool, str]] = {}

    async def one_client(i: int) -> None:
        client = HelperClient(w.socket)
        name = new_name()
        # No list_containers here: listing while another client destroys a container can
        # fail inside liblxc (a race in containers.list_containers, reported separately).
        steps: list[Any] = [ops.CreateContainer(name, "busybox"), ops.ListTokens(),
                            ops.StartContainer(name), ops.ContainerInfo(name),
                            ops.FreezeContainer(name), ops.UnfreezeContainer(name),
                            ops.StopContainer(name), ops.ContainerInfo(name),
                            ops.DestroyContainer(name)]
        try:
            for request in steps:
                envelope = ops.Envelope(uuid.uuid4().hex, token, f"client-{i}", request)
                try:
                    await client.call(envelope)
                    outcome = "ok"
                except LwpError as exc:
                    outcome = audit.OUTCOME_OF_CODE[exc.code]
                # This test's own reads (not a protocol flag: the helper's table decides).
                mutating = not isinstance(request, ops.ListTokens | ops.ContainerInfo)
                issued[envelope.request_id] = (mutating, outcome)
        finally:
            await client.close()

    async def load() -> None:
        await asyncio.gather(*(one_client(i) for i in range(6)))
    run(load())
    w.stop_helper()  # writes the counts of the last window

    records = trail(w)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    by_request: dict[str, list[tuple[str, str | None]]] = {}
    for r in records:
        by_request.setdefault(r["request_id"], []).append((r["phase"], r["outcome"]))
    for request_id, (mutating, outcome) in issued.items():
        if mutating:  # every change: its own start and end
            assert by_request[request_id] == [("start", None), ("end", outcome)]
        elif request_id in by_request:  # a read: written if its key's first in the window
            assert by_request[request_id] == [("single", outcome)]
    # ... and every read is accounted for: written, or in its key's summary.
    reads = [r for r in records if r["op"] in ("list_tokens", "container_info")]
    assert sum(r["summary"]["count"] if r["phase"] == "summary" else 1 for r in reads) == sum(
        not mutating for mutating, _ in issued.values())
    # Besides: the token's creation, and summaries (which name no single request).
    assert set(by_request) - set(issued) - {None} == {records[0]["request_id"]}
    assert sum(outcome == "ok" for _, outcome in issued.values()) > len(issued) // 2
    rotated = [n for n in os.listdir(os.path.join(w.base, "audit"))
               if audit.ROTATED_RE.fullmatch(n)]
    assert len(rotated) >= 5
    assert verify(w, capsys)[0] == 0
    assert_no_secret(w, [token])


# -- the frontend user cannot touch the trail ----------------------------------------------------

def _as_user(user: str, attempts: list[tuple[str, str]]) -> dict[str, str]:
    """Try each (action, path) as `user`; what happened to each."""
    def attempt() -> bytes:
        results = {}
        for action, path in attempts:
            try:
                ACTIONS[action](path)
                results[f"{action} {path}"] = "allowed"
            except PermissionError:
                results[f"{action} {path}"] = "denied"
            except OSError as exc:
                results[f"{action} {path}"] = f"error {exc.errno}"
        return json.dumps(results).encode()
    return dict(json.loads(as_user(user, attempt)))


ACTIONS = {
    "append": lambda p: open(p, "ab").close(),
    "truncate": lambda p: open(p, "r+b").close(),
    "read": lambda p: open(p, "rb").close(),
    "rename": lambda p: os.rename(p, p + ".moved"),
    "delete": os.unlink,
    "create": lambda p: open(p, "xb").close(),
}


@pytest.mark.parametrize("user", ["lwp", "nobody"])
def test_the_frontend_user_cannot_write_rename_or_delete_the_trail(
        world: World, user: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        pytest.fail(f"user {user} is missing on this host")
    call(world, ops.ListContainers())
    directory = os.path.join(world.base, "audit")
    assert entry.pw_uid != 0 and entry.pw_gid not in (0, os.stat(directory).st_gid)
    trail_file = os.path.join(directory, audit.CURRENT)
    key = load_helper_config(world.config).audit_key_file
    attempts = [(action, path) for path in (trail_file, os.path.join(directory, audit.HEAD))
                for action in ("append", "truncate", "rename", "delete")]
    attempts += [("create", os.path.join(directory, "forged.log")), ("read", key),
                 ("append", key)]
    results = _as_user(user, attempts)
    assert set(results.values()) == {"denied"}, results
    assert verify(world, capsys)[0] == 0


def test_sigterm_mid_create_lets_it_finish_and_records_it_ok(
        dedicated: World) -> None:
    # A plain stop (SIGTERM) drains requests under way: the create completes, its client gets
    # the reply, and the trail closes it as ok; nothing is left for recovery.
    w = dedicated
    w.start_helper()
    name, request_id = new_name(), uuid.uuid4().hex

    def create() -> None:
        call(w, ops.CreateContainer(name, "slow"), request_id=request_id)
    thread = threading.Thread(target=create)
    thread.start()
    _wait_for(lambda: of_request(w, request_id), "the start record")
    assert w.process is not None
    w.process.send_signal(signal.SIGTERM)
    assert w.process.wait(30) == 0
    w.process = None
    thread.join(30)
    w.start_helper()
    phases = [(r["phase"], r["outcome"]) for r in of_request(w, request_id)]
    assert phases == [("start", None), ("end", "ok")]
    assert name in w.container_dirs()


# -- last: nothing the run wrote holds a token secret -------------------------------------------

def test_no_token_secret_in_the_trail_or_the_helper_log(world: World, tokens: Tokens) -> None:
    assert trail(world)  # the run above wrote plenty
    assert_no_secret(world, [tokens.admin, tokens.operate, tokens.read, *CHOSEN_SECRETS,
                             "d41d8cd98f00b204e9800998ecf8427e", "duplicate-token-000000000000"])
