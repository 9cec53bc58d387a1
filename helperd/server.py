"""The helper's socket server: peer check, strict decoding, authorisation and the ALLOWED table.

ALLOWED *is* the policy (as in OpenSSH's monitor): one row per operation that protocol declares,
mapping it to its handler. A frame that fails to decode ends the connection after an error reply;
a request that decodes is re-validated and re-authorised here, whatever the frontend checked.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from helperd import audit, doctor, safedirs, sessions
from helperd.audit_recovery import recover
from helperd.config import HelperConfig
from helperd.containers import Containers
from helperd.isolate import Workers, run_isolated
from helperd.tokenstore import TokenStore
from protocol import framing, ops, rules, tokens
from protocol.config import ConfigError
from protocol.errors import LwpError
from protocol.limits import Buckets
from protocol.session import CreateSession, EndSession, SessionInfo

log = logging.getLogger("lwp.helperd")
T = TypeVar("T")
# Room left under the frontend's wait for the helper to report a missed deadline itself.
DEADLINE_MARGIN = 5.0
# Token ids the per-token limiter remembers at most (least recently seen forgotten first).
LIMITED_TOKENS = 10_000
MIB = 1024 * 1024
SPACE_LOG_INTERVAL = 60.0  # seconds between log lines about the floor (each refusal is counted)
_space_logged = [-SPACE_LOG_INTERVAL]
# The audit records of the request being executed, for `mutate` to open and annotate.
CURRENT_CALL: contextvars.ContextVar[audit.Call] = contextvars.ContextVar("audit_call")
# The request being executed on this connection, for `mutate` to check its token again.
CURRENT_ENVELOPE: contextvars.ContextVar[ops.Envelope] = contextvars.ContextVar("envelope")


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def _cap_malloc_arenas() -> None:
    """glibc gives every thread that mallocs an arena of its own (up to 8 per core), and the
    read pool's threads kept theirs: the helper grew from 26 to 41 MiB in 20k reads, 57 MiB
    in the N=100 benchmark's 100k. With 2 arenas it stays at 33 MiB (bench/README.md)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to cap
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)


MALLOC_TRIM_INTERVAL = 2.0  # seconds


def _trim_malloc() -> None:
    """Hand the heap's free pages back to the kernel, which glibc does not do by itself:
    concurrent reads (16 lists of 100 containers at once) left the helper at 42 MiB for
    good. ~1-2 ms in a reader thread, at most every MALLOC_TRIM_INTERVAL seconds."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


@dataclass(frozen=True)
class Actor:
    """Who a request acts for, as the helper itself verified it."""

    token_id: int | None  # None: root on the host, through the admin CLI
    description: str
    scope: str


class _Slot:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass(frozen=True)
class Peer:
    uid: int
    pid: int


class Helper:
    def __init__(self, cfg: HelperConfig, containers: Containers, tokens: TokenStore,
                 audit_writer: audit.AuditWriter) -> None:
        self.cfg = cfg
        self.containers = containers
        self.tokens = tokens
        self.audit = audit_writer
        _cap_malloc_arenas()
        self.readers = ThreadPoolExecutor(cfg.read_workers, thread_name_prefix="lxc-read")
        self.workers = Workers(containers.perform)
        self._locks: dict[str, _Slot] = {}
        self._trimmed = 0.0
        self._busy = 0  # requests executing now
        self._connections = 0  # peer connections being served
        self._by_uid: dict[int, int] = {}  # the same, per peer uid
        self._drained = asyncio.Event()
        self._drained.set()

    async def drain(self, grace: float) -> bool:
        """Wait up to `grace` s for executing requests to finish; False if some did not."""
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            return False
        return True

    # -- connection handling ------------------------------------------------------------

    def _refusal(self, uid: int) -> str | None:
        """Why a new connection from `uid` may not be served now, or None if it may.

        Root (the admin CLI) may use every slot; the others stop short of the slots kept for
        root, and each uid at its own cap, so no peer can lock root or another peer out."""
        cfg = self.cfg
        if self._connections >= cfg.max_connections:
            return f"{self._connections} connections already"
        if uid == 0:
            return None
        if self._connections - self._by_uid.get(0, 0) >= (
                cfg.max_connections - cfg.root_reserved_connections):
            return "the remaining connections are kept for root"
        if self._by_uid.get(uid, 0) >= cfg.max_connections_per_uid:
            return f"uid {uid} has {cfg.max_connections_per_uid} connections already"
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        peer = Peer(uid, pid)
        if uid != 0 and uid not in self.cfg.allowed_uids:
            log.warning("refused connection from uid %d pid %d: not an allowed peer", uid, pid)
            writer.close()
            return
        refusal = self._refusal(uid)
        if refusal is not None:
            # Even an allowed peer (a frontend gone wrong) may not tie up the helper.
            log.warning("refused connection from uid %d pid %d: %s", uid, pid, refusal)
            writer.close()
            return
        self._connections += 1
        self._by_uid[uid] = self._by_uid.get(uid, 0) + 1
        # Only a connection's first header has a deadline: a connection that never asks holds
        # a slot for nothing. Later ones have none, so the frontend's pooled connections may
        # idle between requests (a close racing a request on it would lose that request).
        first_frame: float | None = self.cfg.first_frame_timeout
        try:
            while True:
                try:
                    if first_frame is None:  # the hot path: no timer at all
                        header = await reader.readexactly(framing.HEADER.size)
                    else:
                        async with asyncio.timeout(first_frame):
                            header = await reader.readexactly(framing.HEADER.size)
                        first_frame = None
                except asyncio.IncompleteReadError:
                    return  # a clean hang-up between frames
                except TimeoutError:
                    log.info("closed a connection from uid %d pid %d: no request within %g s",
                             uid, pid, self.cfg.first_frame_timeout)
                    return
                obj: object = None
                try:
                    length = framing.body_length(header)
                    try:
                        async with asyncio.timeout(self.cfg.frame_timeout):
                            body = await reader.readexactly(length)
                    except TimeoutError:
                        raise LwpError("protocol-error", f"the rest of a frame did not arrive "
                                       f"within {self.cfg.frame_timeout:g} s") from None
                    obj = framing.decode_body(body)
                    envelope = ops.decode_request(obj)
                except LwpError as exc:
                    # The stream cannot be trusted past a bad frame: answer once, then hang up.
                    log.warning("bad frame from uid %d pid %d: %s", uid, pid, exc.message)
                    await self.audit_refused(obj, peer, exc)
                    writer.write(framing.encode_frame(ops.encode_error(exc)))
                    await writer.drain()
                    return
                self._busy += 1
                self._drained.clear()
                CURRENT_ENVELOPE.set(envelope)  # for `mutate` to check its token again
                try:
                    reply = await self.execute(envelope, peer)
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._drained.set()
                try:
                    frame = framing.encode_frame(reply, framing.MAX_REPLY)
                except LwpError as exc:  # a result too large even for a reply: say so
                    log.error("%s: %s", envelope.request_id, exc.message)
                    frame = framing.encode_frame(ops.encode_error(exc))
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections -= 1
            self._by_uid[uid] -= 1
            if not self._by_uid[uid]:
                del self._by_uid[uid]
            writer.close()

    async def execute(self, envelope: ops.Envelope, peer: Peer) -> dict[str, Any]:
        """Run one request; its audit records are on disk before the reply is returned."""
        op = envelope.op
        call = audit.Call(self.audit, peer.uid, peer.pid)
        call.describe(envelope, read=envelope.op.name in {  # wired to the policy table at merge
            "list_containers", "container_info", "list_tokens", "query_audit", "host_report",
            "session_info"})
        token = CURRENT_CALL.set(call)
        try:
            reply, code, message, result = await self._run(envelope, peer, call)
            try:
                await call.finish(code, message, result)
            except audit.AuditError as exc:
                log.error("%s %s: %s", envelope.request_id, op.name, exc)
                return ops.encode_error(LwpError("internal-error", "the audit trail cannot "
                                                 "be written; the outcome is unrecorded"))
        finally:
            CURRENT_CALL.reset(token)
        log.debug("%s %s %s in %.1f ms", envelope.request_id, op.name, code or "ok",
                  (time.monotonic() - call.started) * 1000)
        return reply

    async def _run(self, envelope: ops.Envelope, peer: Peer,
                   call: audit.Call) -> tuple[dict[str, Any], str | None, str | None, Any]:
        """The reply, and the error code, message and result its audit record needs."""
        op = envelope.op
        try:
            actor = self.authorize(envelope, peer, call)
            self.limit(actor)
            self.check_space(op.name)
            result = await ALLOWED[op.name](self, envelope.request, actor)
        except LwpError as exc:
            log.info("%s %s by uid %d: %s (%s)", envelope.request_id, op.name, peer.uid,
                     exc.code, exc.message)
            return ops.encode_error(exc), exc.code, exc.message, None
        except audit.AuditError as exc:  # the start record could not be written: not run
            log.error("%s %s: %s", envelope.request_id, op.name, exc)
            error = LwpError("internal-error", "the audit trail cannot be written; "
                                               "the operation was not run")
            return ops.encode_error(error), error.code, str(exc), None
        except Exception:  # noqa: BLE001 — logged here in full, sent as a bare code
            log.exception("%s %s failed unexpectedly", envelope.request_id, op.name)
            error = LwpError("internal-error", "unexpected failure in the helper")
            return ops.encode_error(error), error.code, error.message, None
        return ops.encode_ok(result), None, None, result

    async def audit_refused(self, obj: object, peer: Peer, exc: LwpError) -> None:
        """Record a frame that did not decode (what of it can be read) before answering it."""
        call = audit.Call(self.audit, peer.uid, peer.pid)
        call.describe_refused(obj)
        try:
            await call.finish(exc.code, exc.message)
        except audit.AuditError as error:
            log.error("bad frame from uid %d pid %d not audited: %s", peer.uid, peer.pid, error)

    @functools.cached_property
    def token_limit(self) -> Buckets:
        return Buckets(self.cfg.token_requests_burst, self.cfg.token_requests_per_second,
                       LIMITED_TOKENS)

    def limit(self, actor: Actor) -> None:
        """Requests per token id, whatever the frontend limited (it may be compromised).
        Root's own CLI (no token) is never limited: it is how an operator gets back in."""
        if actor.token_id is None:
            return
        wait = self.token_limit.take(actor.token_id, time.monotonic())
        if wait > 0:
            raise LwpError("rate-limited", f"too many requests with this token; retry in "
                           f"{wait:.1f} s", retry_after=wait)

    def check_space(self, op: str) -> None:
        """Below the free-space floor under the trail reads are refused, below the reserve
        changes too: a change must never run without room for its records."""
        st = os.statvfs(self.cfg.audit_dir)
        free = st.f_bavail * st.f_frsize
        change = op not in {  # wired to the policy table at merge
            "list_containers", "container_info", "list_tokens", "query_audit", "host_report"}
        floor = self.cfg.audit_reserve_bytes if change else self.cfg.audit_min_free_bytes
        if free < floor:
            now = time.monotonic()
            if now - _space_logged[0] >= SPACE_LOG_INTERVAL:
                _space_logged[0] = now
                log.error("audit: %d MiB free under %s, under the %d MiB floor for %s",
                          free // MIB, self.cfg.audit_dir, floor // MIB,
                          "changes" if change else "reads")
            raise LwpError("insufficient-storage", f"the audit trail's disk has {free // MIB} "
                           f"MiB free, under the floor for {'changes' if change else 'reads'}; "
                           "an operator must make room")

    async def recover(self, in_flight: list[dict[str, Any]]) -> int:
        """Close what a killed helper left in flight; run before the socket is served."""
        return await recover(self.audit, in_flight, self.containers, self.cfg.lxcpath)

    def authorize(self, envelope: ops.Envelope, peer: Peer, call: audit.Call) -> Actor:
        actor = self.identify(envelope, peer)
        call.set_actor(**dataclasses.asdict(actor))  # who asked, even if the scope refuses
        if not rules.scope_allows(actor.scope, envelope.op.scope):
            raise LwpError("forbidden", "Forbidden")
        return actor

    def identify(self, envelope: ops.Envelope, peer: Peer) -> Actor:
        if envelope.token is None:
            if envelope.op.name in ops.ANONYMOUS_OPS:
                # Signing in: the request carries the credential, checked by its handler.
                return Actor(None, "sign-in", "read")
            # Only root on this host may act without a token: that is the admin CLI, and
            # the way the first admin token comes to exist.
            if peer.uid == 0:
                return Actor(None, "root (local admin CLI)", "admin")
            raise LwpError("unauthorized", "Unauthorized")
        record = self.tokens.verify(envelope.token)
        if record is None:
            raise LwpError("unauthorized", "Unauthorized")
        return Actor(record.id, record.description, record.scope)

    @functools.cached_property
    def password_check(self) -> sessions.PasswordCheck:
        return sessions.PasswordCheck(self.cfg.session)

    # -- running work -------------------------------------------------------------------

    def deadline(self, op: str) -> float:
        """How long the helper lets an op run: under the frontend's wait, so that the helper
        reports a missed deadline itself; `[helperd.op_timeouts]` may shorten it."""
        return self.cfg.op_timeouts.get(op, ops.OPS[op].timeout - DEADLINE_MARGIN)

    async def read(self, call: Callable[..., T], *args: Any, op: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: no extra task per read (~10 us less each).
            async with asyncio.timeout(self.deadline(op)):
                result = await loop.run_in_executor(self.readers, call, *args)
        except TimeoutError:
            raise LwpError("timeout", f"{op} did not finish in time") from None
        now = time.monotonic()
        if now - self._trimmed >= MALLOC_TRIM_INTERVAL:
            self._trimmed = now
            self.readers.submit(_trim_malloc)
        return result

    @contextlib.asynccontextmanager
    async def locked(self, *names: str) -> AsyncIterator[None]:
        """Serialise mutations per container (in a fixed order, so two never deadlock).

        A lock lives only while someone holds or awaits it, so the table stays small.
        """
        ordered = sorted(set(names))
        for name in ordered:
            self._locks.setdefault(name, _Slot()).users += 1
        try:
            async with contextlib.AsyncExitStack() as stack:
                for name in ordered:
                    await stack.enter_async_context(self._locks[name].lock)
                yield
        finally:
            for name in ordered:
                slot = self._locks[name]
                slot.users -= 1
                if slot.users == 0:
                    del self._locks[name]

    def _still_authorized(self, op: ops.Op) -> None:
        """Verify the request's token again; unknown provenance is refused (fails closed)."""
        envelope = CURRENT_ENVELOPE.get(None)
        if envelope is None:
            raise LwpError("unauthorized", "Unauthorized")
        if envelope.token is None:
            return  # root's admin CLI: allowed by its peer uid, which cannot change
        record = self.tokens.verify(envelope.token)
        if record is None:
            raise LwpError("unauthorized", "Unauthorized: the token was revoked or expired "
                                           "while the change waited for the container")
        if not rules.scope_allows(record.scope, op.scope):
            raise LwpError("forbidden", "Forbidden")

    async def mutate(self, request: Any, *names: str, deadline: float | None = None,
                     on_timeout: Callable[[bool], None] | None = None) -> dict[str, str]:
        """Run a container change in a worker process, holding the containers' locks.

        After a missed deadline `on_timeout` runs (isolated too), told whether the target
        existed before the change began."""
        op = ops.OP_OF_REQUEST[type(request)]
        limit = self.deadline(op.name) if deadline is None else deadline
        call = CURRENT_CALL.get()
        async with self.locked(*names):
            # The wait for the lock may have been long (a create ahead of this change): the
            # token must still be good when the change begins, not only when it was asked.
            self._still_authorized(op)
            # The start record is durable before liblxc is touched; whether the target
            # existed lets a recovery tell a create's own remains from someone else's.
            preexisting = os.path.lexists(
                os.path.join(self.cfg.lxcpath, rules.container_name(request.name)))
            await call.begin({"preexisting": preexisting})
            try:
                await self.workers.run(request, limit, call.child_started)
            except LwpError as exc:
                if exc.code == "timeout" and on_timeout is not None:
                    await run_isolated(functools.partial(on_timeout, preexisting), limit,
                                       call.child_started)
                raise
        return {}


# -- the ALLOWED table: every operation protocol declares, and nothing else ----------------

Handler = Callable[[Helper, Any, Actor], Awaitable[Any]]


async def _list_containers(h: Helper, req: ops.ListContainers, actor: Actor) -> Any:
    return await h.read(h.containers.list_containers, op="list_containers")


async def _container_info(h: Helper, req: ops.ContainerInfo, actor: Actor) -> Any:
    return await h.read(h.containers.container_info, req.name, op="container_info")


async def _named_mutation(h: Helper, req: Any, actor: Actor) -> Any:
    return await h.mutate(req, req.name)


async def _freeze_container(h: Helper, req: ops.FreezeContainer, actor: Actor) -> Any:
    # liblxc's freeze can wait for ever on a cgroup stuck in FREEZING.
    return await h.mutate(req, req.name, deadline=h.cfg.freeze_timeout,
                          on_timeout=lambda _existed: h.containers.thaw_after_timeout(req.name))


async def _create_container(h: Helper, req: ops.CreateContainer, actor: Actor) -> Any:
    return await h.mutate(req, req.name, on_timeout=_remains_of(h, req.name))


async def _clone_container(h: Helper, req: ops.CloneContainer, actor: Actor) -> Any:
    return await h.mutate(req, req.name, req.source, on_timeout=_remains_of(h, req.name))


def _remains_of(h: Helper, name: str) -> Callable[[bool], None]:
    """A create or clone killed at its deadline never ran its own cleanup: remove what it
    made, but only if the name was free when it began (else what is there is not its)."""
    def remove(existed: bool) -> None:
        if not existed:
            h.containers.remove_remains(name)
    return remove


async def _create_token(h: Helper, req: ops.CreateToken, actor: Actor) -> Any:
    if not rules.scope_allows(actor.scope, req.scope):
        raise LwpError("forbidden", "a token can only create tokens of its own scope or lower")
    # On the store's own thread: a commit and a publish (fsyncs) must not stall the loop.
    token_id, token = await h.tokens.run(h.tokens.create, req.token, req.description,
                                         req.scope, req.expires)
    log.info("token %d (%s, %s) created by %s", token_id, req.description, req.scope,
             actor.description)
    # The token goes back only when the helper generated it: a client-chosen one it already has.
    return {"id": token_id, "token": token if req.token is None else None}


async def _revoke_token(h: Helper, req: ops.RevokeToken, actor: Actor) -> Any:
    record = await h.tokens.run(h.tokens.revoke, req.token, req.id)
    log.info("token %d (%s) revoked by %s", record.id, record.description, actor.description)
    return {"id": record.id}


async def _list_tokens(h: Helper, req: ops.ListTokens, actor: Actor) -> Any:
    return [record.public() for record in await h.tokens.run(h.tokens.list)]


async def _create_session(h: Helper, req: CreateSession, actor: Actor) -> Any:
    """Sign in with a host account (PAM) or an API token; mint a session token."""
    policy = h.cfg.session
    if req.token is not None:
        record = h.tokens.verify(req.token)
        if record is None or record.kind != tokens.API:
            raise sessions.refused()  # the frontend counts it as a failed authentication
        user, scope, parent = None, record.scope, record.id
        description = f"token {record.id}: {record.description}"
    else:
        assert req.username is not None and req.password is not None  # the request's rule
        envelope = CURRENT_ENVELOPE.get()
        signed = await h.password_check(req.username, req.password, envelope.client)
        user, scope, parent, description = signed.user, signed.scope, None, signed.user
    session_id, secret = await h.tokens.run(h.tokens.create_session, user, description, scope,
                                            policy.idle, policy.lifetime, parent)
    log.info("session %d for %s (%s) opened", session_id, description, scope)
    record = h.tokens.verify(secret)
    return {"id": session_id, "secret": secret, "user": user, "scope": scope,
            "expires": None if record is None else record.expires, "idle": policy.idle}


def _presented(h: Helper) -> tokens.TokenRecord | None:
    envelope = CURRENT_ENVELOPE.get(None)
    return None if envelope is None or envelope.token is None else h.tokens.verify(
        envelope.token)


async def _end_session(h: Helper, req: EndSession, actor: Actor) -> Any:
    """Sign out: the presented session is deleted from the store, not only forgotten."""
    record = _presented(h)
    if record is None or record.kind != tokens.SESSION:
        raise LwpError("invalid-request", "only a session can be ended here; revoke a token "
                                          "with DELETE /api/v1/tokens/id/<id>")
    await h.tokens.run(h.tokens.revoke, None, record.id)
    log.info("session %d for %s ended: signed out", record.id, record.description)
    return {"id": record.id}


async def _session_info(h: Helper, req: SessionInfo, actor: Actor) -> Any:
    record = _presented(h)
    if record is None:  # root's CLI
        return {"id": None, "kind": "local", "user": "root", "scope": actor.scope,
                "expires": None, "idle": None}
    return {"id": record.id, "kind": record.kind, "user": record.user, "scope": record.scope,
            "expires": record.expires, "idle": record.idle}


async def _query_audit(h: Helper, req: ops.QueryAudit, actor: Actor) -> Any:
    try:
        return await h.read(audit.query, h.cfg.audit_dir, req, op="query_audit")
    except (OSError, audit.AuditError) as exc:
        raise audit.lookup_error(exc) from None


async def _host_report(h: Helper, req: ops.HostReport, actor: Actor) -> Any:
    return await h.read(doctor.report, h.cfg, op="host_report")


ALLOWED: dict[str, Handler] = {
    "list_containers": _list_containers,
    "container_info": _container_info,
    "start_container": _named_mutation,
    "stop_container": _named_mutation,
    "freeze_container": _freeze_container,
    "unfreeze_container": _named_mutation,
    "restart_container": _named_mutation,
    "create_container": _create_container,
    "clone_container": _clone_container,
    "destroy_container": _named_mutation,
    "create_token": _create_token,
    "revoke_token": _revoke_token,
    "list_tokens": _list_tokens,
    "query_audit": _query_audit,
    "host_report": _host_report,
    "create_session": _create_session,
    "end_session": _end_session,
    "session_info": _session_info,
}


@dataclass(frozen=True)
class Listener:
    """The socket the helper serves, and the file it bound (None: systemd's, not its own)."""

    sock: socket.socket
    made: tuple[str, int, int] | None = None  # path, st_dev, st_ino of the file it bound

    def remove(self) -> None:
        """Unlink the socket file this helper made, if it is still that file (at exit)."""
        if self.made is None:
            return
        path, dev, ino = self.made
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == (dev, ino):
                os.unlink(path)


def _socket_activated() -> bool:
    return (os.environ.get("LISTEN_PID") == str(os.getpid())
            and os.environ.get("LISTEN_FDS") == "1")


def claim_socket_path(cfg: HelperConfig, gid: int) -> None:
    """Make the socket's directory (0750 root:gid; a symlink there is refused) and clear a
    stale socket; refuse to start if a live helper answers on it. Run first of all: a second
    helper must not open the trail and "recover" the first one's operations in flight."""
    if _socket_activated():
        return  # systemd holds the socket: there is nothing of ours to claim
    # The frontend's group must traverse the directory.
    safedirs.ensure_dir(os.path.dirname(cfg.socket), gid, 0o750)
    _clear_stale(cfg.socket)


def listening_socket(cfg: HelperConfig, gid: int) -> Listener:
    """The socket systemd passed us (socket activation), or one we make: 0660 root:gid in 0750."""
    if _socket_activated():
        sock = socket.socket(fileno=3)
        if sock.family != socket.AF_UNIX:
            raise RuntimeError("the socket systemd passed is not a Unix socket")
        return Listener(sock)
    claim_socket_path(cfg, gid)  # again: cheap, and the path is checked right before the bind
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # 0660 from the start, root:root until the chown: never others'
    try:
        sock.bind(cfg.socket)
    finally:
        os.umask(old_umask)
    sock.listen(128)  # at once: a bound socket that refuses would look stale to a prober
    info = os.lstat(cfg.socket)
    os.chown(cfg.socket, 0, gid, follow_symlinks=False)
    return Listener(sock, (cfg.socket, info.st_dev, info.st_ino))


STALE_PROBE_TIMEOUT = 2.0  # seconds: a live helper accepts at once, even when busy


def _clear_stale(path: str) -> None:
    """Remove a socket left by a helper that is gone; refuse to start beside a live one, or
    over anything that is not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path}: exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(STALE_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except FileNotFoundError:
            return  # gone meanwhile
        except ConnectionRefusedError:
            os.unlink(path)  # nothing listens: a helper that stopped without removing it
            return
        except OSError:
            pass  # a timeout (a full backlog) is a live listener too
    raise ConfigError(f"{path}: another helper is serving on this socket; stop it first "
                      "(the helper does not take over a live socket)")
