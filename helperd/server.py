"""The helper's connections: peer check, strict decoding, authorisation, then policy.RULES.

A frame that fails to decode ends the connection after an error reply; a request that decodes is
re-validated and re-authorised here, whatever the frontend checked, and run as its rule says.
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
import struct
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from helperd import audit, policy, sessions
from helperd.config import HelperConfig
from helperd.containers import Containers
from helperd.isolate import Workers, run_isolated
from helperd.live import Live
from helperd.policy import Kind, Rule
from helperd.recovery import recover
from helperd.tokenstore import TokenStore
from protocol import framing, ops, rules, tokens
from protocol.errors import LwpError
from protocol.limits import Buckets
from protocol.stream import SubscribeEvents

log = logging.getLogger("lwp.helperd")
T = TypeVar("T")
# Token ids the per-token limiter remembers at most (least recently seen forgotten first).
LIMITED_TOKENS = 10_000
MIB = 1024 * 1024
SPACE_LOG_INTERVAL = 60.0  # seconds between log lines about the floor (each refusal is counted)
_space_logged = [-SPACE_LOG_INTERVAL]
# The audit records of the request being executed, for `mutate` to open and annotate.
CURRENT_CALL: contextvars.ContextVar[audit.Call] = contextvars.ContextVar("audit_call")
# The request being executed on this connection, for `mutate` to check its token again.
CURRENT_ENVELOPE: contextvars.ContextVar[ops.Envelope] = contextvars.ContextVar("envelope")
# The connection a request came on, for subscribe_events to stream on.
CURRENT_WRITER: contextvars.ContextVar[asyncio.StreamWriter] = contextvars.ContextVar("writer")


MALLOC_TRIM_INTERVAL = 2.0  # seconds


def _trim_malloc() -> None:
    """Hand the heap's free pages back to the kernel, which glibc does not do by itself after
    concurrent reads (measured: see bench/README.md). In a reader thread, at most every
    MALLOC_TRIM_INTERVAL seconds."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


@dataclass(frozen=True)
class Actor:
    """Who a request acts for, as the helper itself verified it."""

    token_id: int | None  # None: root on the host, through the admin CLI
    description: str
    scope: str
    # The name patterns of the only containers it may see; None: every container. Recorded
    # in the audit actor of every record of its requests, so the trail shows the limit.
    containers: tuple[str, ...] | None = None


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
        self.readers = ThreadPoolExecutor(cfg.read_workers, thread_name_prefix="lxc-read")
        self.workers = Workers(functools.partial(policy.perform, containers))
        self.live = Live(cfg.lxcpath)  # the state table, the event bus, the streams, counters
        # Streams opened by a subscribe_events request, by request id, until its reply is out.
        self.opened: dict[str, tuple[Any, int | None]] = {}
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
        # Read exactly what the reader lacks (a header, then its body), so each part has its
        # own deadline and bytes of a next frame stay in the stream until it is its turn.
        frames = framing.FrameReader(framing.MAX_FRAME)
        try:
            while True:
                try:
                    if first_frame is None:  # the hot path: no timer at all
                        header = await reader.readexactly(frames.missing)
                    else:
                        async with asyncio.timeout(first_frame):
                            header = await reader.readexactly(frames.missing)
                        first_frame = None
                except asyncio.IncompleteReadError:
                    return  # a clean hang-up between frames
                except TimeoutError:
                    log.info("closed a connection from uid %d pid %d: no request within %g s",
                             uid, pid, self.cfg.first_frame_timeout)
                    return
                obj: object = None
                try:
                    body = frames.feed(header)  # None: the header is in and within the cap
                    while body is None:
                        try:
                            async with asyncio.timeout(self.cfg.frame_timeout):
                                body = frames.feed(await reader.readexactly(frames.missing))
                        except TimeoutError:
                            raise LwpError("protocol-error", f"the rest of a frame did not "
                                           f"arrive within {self.cfg.frame_timeout:g} s") from None
                    obj = framing.decode_untrusted_body(body)
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
                CURRENT_WRITER.set(writer)
                try:
                    reply = await self.execute(envelope, peer)
                    events = self.opened.pop(envelope.request_id, None)
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
                if events is not None:
                    if reply.get("ok") is not True:  # refused after all (its audit failed)
                        self.live.discard(*events)
                        return
                    # The connection is the stream's from now on, until either side ends it.
                    await self.live.run_stream(*events)
                    return
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
        call.describe(envelope, read=policy.RULES[op.name].read)
        token = CURRENT_CALL.set(call)
        try:
            reply, code, message, result = await self._run(envelope, peer, call)
            self.live.observe(op.name, code is None, time.monotonic() - call.started)
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
        rule = policy.RULES[op.name]
        try:
            actor = self.authorize(envelope, peer, call)
            self.limit(actor)
            self.check_space(rule)
            result = await self.dispatch(rule, envelope.request, actor)
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

    def check_space(self, rule: Rule) -> None:
        """Below the free-space floor under the trail reads are refused, below the reserve
        changes too: a change must never run without room for its records."""
        st = os.statvfs(self.cfg.audit_dir)
        free = st.f_bavail * st.f_frsize
        change = not rule.read
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
        if actor.containers is not None:  # whatever the frontend checked: the helper decides
            policy.check_limited(policy.RULES[envelope.op.name], envelope.request,
                                 actor.containers)
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
        return Actor(record.id, record.description, record.scope, record.containers)

    @functools.cached_property
    def password_check(self) -> sessions.PasswordCheck:
        return sessions.PasswordCheck(self.cfg.session)

    def presented(self) -> tokens.TokenRecord | None:
        """The live record of the token the request being run presented (None: root's CLI,
        or a token gone meanwhile)."""
        envelope = CURRENT_ENVELOPE.get(None)
        if envelope is None or envelope.token is None:
            return None
        return self.tokens.verify(envelope.token)

    def client(self) -> str:
        """The client address the frontend reported for the request being run."""
        envelope = CURRENT_ENVELOPE.get(None)
        return "unknown" if envelope is None else envelope.client

    # -- running work, as the request's rule says ------------------------------------------

    async def dispatch(self, rule: Rule, request: Any, actor: Actor) -> Any:
        """Call the rule's method on what its kind names, where its kind runs it; a listing
        is cut to what a token limited to containers may see."""
        result = await self._call(rule, request, actor)
        if actor.containers is not None and rule.limited is policy.Limited.LISTED:
            return policy.only_visible(result, actor.containers)
        return result

    async def _call(self, rule: Rule, request: Any, actor: Actor) -> Any:
        if rule.kind is Kind.CONTAINER_CHANGE:
            return await self.change(rule, request)
        if rule.kind is Kind.READ:
            return await self.read(rule, rule.call, self.containers, request)
        if rule.kind is Kind.HOST_READ:
            return await self.read(rule, rule.call, self, request)
        return await rule.call(self, request, actor)  # the token store and the live table

    async def read(self, rule: Rule, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: no extra task per read.
            async with asyncio.timeout(rule.deadline(self.cfg)):
                result = await loop.run_in_executor(self.readers, call, *args)
        except TimeoutError:
            raise LwpError("timeout", f"{rule.name} did not finish in time") from None
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

    def open_events(self, req: SubscribeEvents, actor: Actor) -> dict[str, Any]:
        """A stream for this connection, run once its reply (the start frame) is out."""
        envelope = CURRENT_ENVELOPE.get()
        # The token's record again, for its expiry: the stream ends at it, to the second.
        token = self.tokens.verify(envelope.token) if envelope.token is not None else None
        if envelope.token is not None and token is None:
            raise LwpError("unauthorized", "Unauthorized")
        events = self.live.open_stream(req, actor.scope, token, CURRENT_WRITER.get())
        self.opened[envelope.request_id] = (events, actor.token_id)
        return events.start()

    async def change(self, rule: Rule, request: Any) -> dict[str, str]:
        """Run a container change in a worker process, holding the containers' locks; after a
        missed deadline, run (isolated too) what the rule says undoes its half-done work."""
        limit = rule.deadline(self.cfg)
        call = CURRENT_CALL.get()
        async with self.locked(*rule.locks(request)):
            # The wait for the lock may have been long (a create ahead of this change): the
            # token must still be good when the change begins, not only when it was asked.
            self._still_authorized(rule.op)
            # The start record is durable before liblxc is touched; whether the target
            # existed lets a recovery tell a create's own remains from someone else's.
            preexisting = os.path.lexists(
                os.path.join(self.cfg.lxcpath, rules.container_name(request.name)))
            await call.begin({"preexisting": preexisting})
            try:
                # Its state changes carry the request id; creates, clones and destroys are
                # "operation" events as well.
                async with self.live.changing(rule.name, rule.locks(request),
                                              CURRENT_ENVELOPE.get().request_id):
                    await self.workers.run(request, limit, call.child_started)
            except LwpError as exc:
                undo = rule.after_timeout(self.containers, request.name, preexisting)
                if exc.code == "timeout" and undo is not None:
                    await run_isolated(undo, limit, call.child_started)
                raise
        return {}
