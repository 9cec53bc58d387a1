"""Tokens limited to containers (issue #13, section 1): a compromised frontend (user lwp) sending
raw frames with a limited token cannot see or touch a container outside its patterns, nor mint
tokens, nor read the trail; through HTTP the same; the patterns are in the trail's actor.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from frontend.accesslog import AccessLogger
from frontend.app import make_app
from helperd.tokenstore import TokenStore, private_path
from protocol import framing, ops, rules, tokens
from protocol.errors import LwpError
from tests.conftest import (
    FIRST_RELEASE_SCHEMA,
    World,
    as_user,
    destroy_world,
    make_world,
    trail,
)
from tests.test_attack_token_lock import SERVICE_USER, ensure_service_user

pytestmark = [pytest.mark.lxc]


class Scoped:
    """A world whose helper serves lwp, two containers (one inside the token's patterns, one
    outside), and a limited admin token whose patterns cover the first only."""

    def __init__(self, world: World) -> None:
        self.world = world
        tag = uuid.uuid4().hex[:8]
        self.pattern = f"t-{tag}-in-*"
        self.inside = f"t-{tag}-in-a"
        self.outside = f"t-{tag}-out-a"
        self.missing = f"t-{tag}-gone"  # never made: what "does not exist" answers
        self.tag = tag
        for name in (self.inside, self.outside):
            world.call(ops.CreateContainer(name, "busybox"))
        # Through a raw frame, so that a helper that does not know `containers` refuses it
        # (old code: invalid-request "containers: unknown field") instead of the test itself.
        created = raw_call(world.socket, "create_token", {
            "description": "limited admin", "scope": "admin", "containers": [self.pattern]})
        self.token: str = created["token"]
        self.token_id: int = created["id"]


@pytest.fixture(scope="module")
def scoped() -> Iterator[Scoped]:
    ensure_service_user()
    w = make_world()
    with open(w.config) as f:
        text = f.read()
    with open(w.config, "w") as f:
        f.write(text.replace('socket_group = "nogroup"', f'socket_group = "{SERVICE_USER}"')
                .replace("allowed_users = []", f'allowed_users = ["{SERVICE_USER}"]'))
    try:
        w.start_helper()
        yield Scoped(w)
    finally:
        destroy_world(w)


def raw_call(path: str, op: str, args: dict[str, Any], token: str | None = None) -> Any:
    """One hand-made frame, as a compromised frontend may write it: no ops.Request built on
    this side, so nothing here checks what the helper must check."""
    frame = {"id": uuid.uuid4().hex, "op": op, "token": token, "client": "10.9.9.9",
             "args": args}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(framing.encode_frame(frame))
        head = b""
        while len(head) < framing.HEADER.size:
            head += s.recv(framing.HEADER.size - len(head))
        length = framing.body_length(head)
        body = b""
        while len(body) < length:
            chunk = s.recv(length - len(body))
            if not chunk:
                raise ConnectionError("the helper hung up")
            body += chunk
    return ops.decode_reply(framing.decode_untrusted_body(body))


def answers_as_lwp(path: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each call's answer — ["ok", result] or [code, message] — sent by a child that dropped
    to lwp for good, over the helper's socket."""
    def attempt() -> bytes:
        out: list[Any] = []
        for op, args in calls:
            try:
                out.append(["ok", raw_call(path, op, args, token)])
            except LwpError as exc:
                out.append([exc.code, exc.message])
            except OSError as exc:
                out.append(["os-error", str(exc)])
        return json.dumps(out).encode()
    return list(json.loads(as_user(SERVICE_USER, attempt)))


def state_of(world: World, name: str) -> str:
    import lxc  # the test reads the state as liblxc has it, not as the helper says
    return str(lxc.Container(name, world.lxcpath).state)


# -- the attack: raw frames with a limited token --------------------------------------------

# The ops on one existing container, with the args that name it (`NAME` is replaced).
ON_ONE = [("container_info", {"name": "NAME"}), ("start_container", {"name": "NAME"}),
          ("stop_container", {"name": "NAME"}), ("freeze_container", {"name": "NAME"}),
          ("unfreeze_container", {"name": "NAME"}), ("restart_container", {"name": "NAME"}),
          ("destroy_container", {"name": "NAME", "force": True}),
          ("clone_container", {"name": "COPY", "source": "NAME"})]


def _on(name: str, copy: str) -> list[tuple[str, dict[str, Any]]]:
    return [(op, {k: name if v == "NAME" else copy if v == "COPY" else v
                  for k, v in args.items()}) for op, args in ON_ONE]


@pytest.mark.security
def test_limited_token_over_raw_frames_sees_a_container_outside_as_one_that_does_not_exist(
        scoped: Scoped) -> None:
    w = scoped.world
    copy = f"t-{scoped.tag}-in-copy"
    before = w.container_dirs()
    listing, *outside = answers_as_lwp(w.socket, scoped.token, [
        ("list_containers", {}), *_on(scoped.outside, copy)])
    missing = answers_as_lwp(w.socket, scoped.token, _on(scoped.missing, copy))
    # Absent from the list; the one inside is there.
    assert listing[0] == "ok"
    assert [c["container"] for c in listing[1]] == [scoped.inside]
    # Every call on it answers word for word as on a name that was never made: info 404's
    # not-found, the rest no-such-container, clone from it too.
    for (op, _), got, expected in zip(ON_ONE, outside, missing, strict=True):
        assert got == [expected[0], expected[1].replace(scoped.missing, scoped.outside)], op
        assert got[0] in ("not-found", "no-such-container"), (op, got)
    # Nothing happened to it, and no copy was made.
    assert state_of(w, scoped.outside) == "STOPPED"
    assert w.container_dirs() == before


@pytest.mark.security
def test_limited_token_over_raw_frames_cannot_create_or_clone_to_a_name_outside(
        scoped: Scoped) -> None:
    w = scoped.world
    before = w.container_dirs()
    fresh = f"t-{scoped.tag}-out-new"
    answers = answers_as_lwp(w.socket, scoped.token, [
        ("create_container", {"name": fresh, "template": "busybox"}),
        # Taken or free, a name outside is forbidden the same: nothing says which.
        ("create_container", {"name": scoped.outside, "template": "busybox"}),
        ("clone_container", {"name": fresh, "source": scoped.inside}),
        ("clone_container", {"name": scoped.outside, "source": scoped.inside})])
    assert [a[0] for a in answers] == ["forbidden"] * 4, answers
    assert answers[0][1].replace(fresh, "X") == answers[1][1].replace(scoped.outside, "X")
    assert w.container_dirs() == before


@pytest.mark.security
def test_limited_admin_over_raw_frames_cannot_mint_list_or_revoke_tokens_nor_read_the_trail(
        scoped: Scoped) -> None:
    w = scoped.world
    victim = w.call(ops.CreateToken(None, "someone else's", "read"))
    answers = answers_as_lwp(w.socket, scoped.token, [
        ("create_token", {"scope": "admin"}),
        ("create_token", {"scope": "read", "containers": [scoped.pattern]}),
        ("list_tokens", {}), ("revoke_token", {"id": victim["id"]}),
        ("revoke_token", {"id": scoped.token_id}), ("query_audit", {}), ("host_report", {})])
    assert [a[0] for a in answers] == ["forbidden"] * 7, answers
    # The other token still works: nothing was revoked.
    assert w.call(ops.ListContainers(), token=victim["token"])


@pytest.mark.security
def test_limited_token_works_inside_its_patterns(scoped: Scoped) -> None:
    """The limit is a limit, not a refusal of everything: inside, the token acts."""
    w = scoped.world
    copy = f"t-{scoped.tag}-in-b"
    answers = answers_as_lwp(w.socket, scoped.token, [
        ("container_info", {"name": scoped.inside}),
        ("clone_container", {"name": copy, "source": scoped.inside}),
        ("destroy_container", {"name": copy, "force": False})])
    assert [a[0] for a in answers] == ["ok"] * 3, answers
    assert answers[0][1]["name"] == scoped.inside
    assert copy not in w.container_dirs()


def test_a_limited_tokens_records_carry_its_patterns_in_the_actor(scoped: Scoped) -> None:
    w = scoped.world
    with pytest.raises(LwpError):
        w.call(ops.StartContainer(scoped.missing), token=scoped.token)
    mine = [r for r in trail(w) if (r.get("actor") or {}).get("token_id") == scoped.token_id]
    assert mine and all(r["actor"]["containers"] == [scoped.pattern] for r in mine)
    made = [r for r in trail(w) if r.get("op") == "create_token"
            and (r.get("args") or {}).get("containers") == [scoped.pattern]]
    assert made, "create_token's record names the patterns it was given"


# -- the same through HTTP ----------------------------------------------------------------

@pytest.fixture
async def http(scoped: Scoped) -> Any:
    server = TestServer(make_app(scoped.world.frontend))
    await server.start_server(access_log_class=AccessLogger)
    client = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_tokens_route_takes_and_shows_containers(scoped: Scoped, http: Any) -> None:
    root = scoped.world.call(ops.CreateToken(None, "http admin", "admin"))["token"]
    headers = {"private-token": root}
    r = await http.post("/api/v1/tokens", headers=headers,
                        json={"scope": "operate", "containers": ["web-*", "db-?"]})
    assert r.status == 200, await r.text()
    made = (await r.json())["id"]
    r = await http.get("/api/v1/tokens", headers=headers)
    listed = {t["id"]: t for t in await r.json()}
    assert listed[made]["containers"] == ["web-*", "db-?"]
    assert listed[scoped.token_id]["containers"] == [scoped.pattern]
    assert all(t["containers"] is None for i, t in listed.items()
               if i not in (made, scoped.token_id))
    for bad in ([], ["../x"], ["[ab]"], ["a" * 65], [7], "web-*",
                ["x"] * (rules.MAX_PATTERNS + 1)):
        r = await http.post("/api/v1/tokens", headers=headers, json={"containers": bad})
        assert r.status == 400, bad
        assert (await r.json())["code"] == "invalid-request"


@pytest.mark.security
async def test_limited_token_over_http_sees_only_its_containers(scoped: Scoped,
                                                                http: Any) -> None:
    headers = {"private-token": scoped.token}
    r = await http.get("/api/v1/containers", headers=headers)
    assert [c["container"] for c in await r.json()] == [scoped.inside]

    async def answer(method: str, name: str, **kw: Any) -> tuple[int, Any]:
        r = await http.request(method, f"/api/v1/containers/{name}", headers=headers, **kw)
        body = await r.json()
        return r.status, json.loads(json.dumps(body).replace(name, "NAME"))

    for method, kw in (("GET", {}), ("POST", {"json": {"action": "start"}}),
                       ("DELETE", {"params": {"force": "true"}})):
        got = await answer(method, scoped.outside, **kw)
        assert got == await answer(method, scoped.missing, **kw), method
        assert got[0] in (404, 409), got
    r = await http.put("/api/v1/containers", headers=headers,
                       json={"name": scoped.inside.replace("-in-", "-out-z"),
                             "clone": scoped.inside})
    assert r.status == 403
    for path in ("/api/v1/tokens", "/api/v1/audit", "/api/v1/host"):
        r = await http.get(path, headers=headers)
        assert r.status == 403, path
        assert (await r.json())["code"] == "forbidden", path
    r = await http.post("/api/v1/tokens", headers=headers, json={"scope": "read"})
    assert r.status == 403
    assert state_of(scoped.world, scoped.outside) == "STOPPED"


# -- the store: an older one gains the column ---------------------------------------------



def test_a_store_without_the_containers_column_keeps_its_tokens_unlimited(
        tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = TokenStore(state, gid=0, min_length=20)  # makes the key and the directories
    key = first.key
    first.close()
    os.unlink(private_path(state))
    old = "old-token-" + "x" * 20
    db = sqlite3.connect(private_path(state))
    db.execute(FIRST_RELEASE_SCHEMA)
    db.execute("INSERT INTO tokens (digest, description, scope, created) VALUES (?, ?, ?, ?)",
               (tokens.digest(key, old), "from before", "admin", 1.0))
    db.commit()
    db.close()
    store = TokenStore(state, gid=0, min_length=20)
    try:
        record = store.verify(old)
        assert record is not None and record.containers is None
        _id, new = store.create(None, "new", "read", None, ("web-*",))
        limited = store.verify(new)
        assert limited is not None and limited.containers == ("web-*",)
        reader = tokens.open_reader(state)  # the frontend's view: the published snapshot
        try:
            seen = tokens.lookup(reader, key, new, 0.0)
            assert seen is not None and seen.containers == ("web-*",)
        finally:
            reader.close()
    finally:
        store.close()


def test_a_damaged_containers_value_fails_closed() -> None:
    assert tokens.decode_containers("not json") == ()
    assert tokens.decode_containers('{"a": 1}') == ()
    assert tokens.decode_containers(None) is None
    assert not rules.in_patterns("web-1", ())


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "[ab]", "-x", "a b", "é*", "a" * 65,
                                 "web-*\n"])
def test_a_pattern_outside_the_rule_is_refused(bad: str) -> None:
    with pytest.raises(LwpError) as err:
        ops.CreateToken(containers=(bad,))
    assert err.value.code == "invalid-request"


def test_patterns_match_case_sensitively_and_whole() -> None:
    assert rules.in_patterns("web-1", ("web-*",))
    assert rules.in_patterns("db-1", ("web-*", "db-?"))
    assert not rules.in_patterns("db-12", ("db-?",))
    assert not rules.in_patterns("WEB-1", ("web-*",))
    assert not rules.in_patterns("xweb-1", ("web-*",))


def test_lwp_admin_adds_and_lists_a_limited_token(scoped: Scoped) -> None:
    from tests.test_admin_cli import admin
    w = scoped.world
    made = admin(w, "token", "add", "--scope", "read", "--description", "cli limited",
                 "--containers", "web-*", "--containers", "db-1")
    assert made.returncode == 0, made.stderr
    listed = admin(w, "token", "list")
    assert "cli limited [containers: web-* db-1]" in listed.stdout
    bad = admin(w, "token", "add", "--containers", "../x")
    assert bad.returncode == 1 and "invalid-request" in bad.stderr


def test_every_row_held_to_named_containers_names_them() -> None:
    """A row left at Limited.NAMED must name its request's containers (a row without any
    would fail every limited token's request): checked on a valid request of every op."""
    from helperd import policy
    from tools.fuzz_helper import example_requests
    for request in example_requests():
        rule = policy.rule_of(request)
        if rule.limited is not policy.Limited.NAMED:
            continue
        names = rule.locks(request)
        assert names, rule.name
        assert all(rules.NAME_RE.fullmatch(n) for n in names), rule.name
        assert set(rule.makes(request)) <= set(names), rule.name
