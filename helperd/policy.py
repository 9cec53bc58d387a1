"""The helper's policy: RULES says, for every op protocol declares and no other, what root does.

Read it top to bottom as OpenSSH's mon_dispatch; the server and crash recovery only follow it.
"""
from __future__ import annotations

import enum
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helperd import audit, doctor, sessions
from helperd.config import HelperConfig
from helperd.containers import Containers
from protocol import errors, ops, rules, tokens
from protocol.errors import LwpError
from protocol.session import CreateSession, EndSession, SessionInfo
from protocol.stream import SubscribeEvents

if TYPE_CHECKING:
    from helperd.server import Actor, Helper

log = logging.getLogger("lwp.helperd")
# Room left under the frontend's wait for the helper to report a missed deadline itself.
DEADLINE_MARGIN = 5.0
# A build (template run or rootfs copy) runs for seconds on end: at this lower CPU priority (its
# processes inherit it), so that the requests answered meanwhile keep their pace. For good:
# raising it again would need CAP_SYS_NICE, which the helper's unit does not grant; the worker
# retires instead (isolate.py).
BUILD_NICE = 10
TEMPLATE, COPY = "template", "copy"  # how a row builds a root filesystem


class Kind(enum.Enum):
    """What an op does, which fixes what its method is called on and where it runs."""

    READ = "a Containers method (containers, request), in the read thread pool"
    HOST_READ = "a function (helper, request) reading the host or trail, in the read thread pool"
    TOKEN_READ = "a coroutine (helper, request, actor) reading the token store, on its thread"  # noqa: S105 — a description, not a secret
    TOKEN_CHANGE = "a coroutine (helper, request, actor) changing the token store, on its thread"  # noqa: S105
    LIVE = ("a coroutine (helper, request, actor) answering from what the helper keeps live "
            "(helperd/live.py: the state table, the event bus), on the loop")
    CONTAINER_CHANGE = ("a Containers method (containers, request), in a worker process, "
                        "holding "
                        "each named container's lock, audited `start` before it and `end` after")

    @property
    def read(self) -> bool:
        """Changes nothing: audited as one counted record, refused at the lower space floor."""
        return self not in (Kind.TOKEN_CHANGE, Kind.CONTAINER_CHANGE)


class Limited(enum.Enum):
    """How a row holds a token limited to containers (its `containers` patterns) to them."""

    NAMED = ("every container the request names (the row's `locks`) must match: one that "
             "exists outside is answered as missing, a new name outside is forbidden")
    LISTED = "its result lists only the containers that match"
    NEVER = "refused: tokens, the trail and the host report are for unlimited tokens only"
    UNNAMED = "names no container and tells of none: the same for every token"


def _its_name(request: Any) -> tuple[str, ...]:
    return (request.name,)


def _nothing(request: Any) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Rule:
    """One row: protocol's op (its request class and scope live there), and what root does."""

    name: str  # the op in protocol.ops.OPS
    kind: Kind
    call: Callable[..., Any]  # the method itself, never a name to look up
    # Builds a root filesystem, from a TEMPLATE or as a COPY: runs niced, and whatever it left
    # is removed when it fails, misses its deadline or is cut short by a crash
    # (Containers.remove_remains). A copy writes its config before its rootfs is whole, so
    # recovery cannot trust a cut-short copy that looks complete; a template run it can.
    builds_rootfs: str | None = None
    # The one place that says which containers a request names: a change holds their locks,
    # and a token limited to containers must match every one (see `limited`).
    locks: Callable[[Any], tuple[str, ...]] = _its_name
    # Those of them it brings into being (a create's or clone's new name): outside a limited
    # token's patterns they are forbidden whether taken or free, so nothing tells which.
    makes: Callable[[Any], tuple[str, ...]] = _nothing
    limited: Limited = Limited.NAMED
    # The code a missing container gets from this op's method (Containers._existing):
    # a container a limited token may not see gets the very same answer.
    missing: str = "no-such-container"
    # Its own deadline instead of the frontend's wait - DEADLINE_MARGIN / [helperd.op_timeouts].
    own_deadline: Callable[[HelperConfig], float] | None = None
    # Run (isolated) on the target after a missed deadline, and by recovery on a target left
    # in `stuck_state` by a helper that died during the change.
    on_timeout: Callable[[Containers, str], None] | None = None
    stuck_state: str | None = None
    undone: str = ""  # what recovery's record says after it ran `on_timeout`

    @property
    def op(self) -> ops.Op:
        return ops.OPS[self.name]

    @property
    def read(self) -> bool:
        return self.kind.read

    def deadline(self, cfg: HelperConfig) -> float:
        """How long the helper lets it run: under the frontend's wait, so that the helper
        reports a missed deadline itself; `[helperd.op_timeouts]` may shorten it."""
        if self.own_deadline is not None:
            return self.own_deadline(cfg)
        return cfg.op_timeouts.get(self.name, self.op.timeout - DEADLINE_MARGIN)

    def after_timeout(self, containers: Containers, name: str,
                      preexisting: bool) -> Callable[[], None] | None:
        """What to run after a change missed its deadline (it never ran its own cleanup)."""
        if self.builds_rootfs:
            # Only if the name was free when it began: else what is there is not its.
            return None if preexisting else functools.partial(containers.remove_remains, name)
        if self.on_timeout is not None:
            return functools.partial(self.on_timeout, containers, name)
        return None


# -- the methods that are not Containers': tokens, the trail, the host ------------------------

async def create_token(h: Helper, req: ops.CreateToken, actor: Actor) -> Any:
    if not rules.scope_allows(actor.scope, req.scope):
        raise LwpError("forbidden", "a token can only create tokens of its own scope or lower")
    # On the store's own thread: a commit and a publish (fsyncs) must not stall the loop.
    token_id, token = await h.tokens.run(h.tokens.create, req.token, req.description,
                                         req.scope, req.expires, req.containers)
    log.info("token %d (%s, %s, containers %s) created by %s", token_id, req.description,
             req.scope, "all" if req.containers is None else ",".join(req.containers),
             actor.description)
    # The token goes back only when the helper generated it: a client-chosen one it already has.
    return {"id": token_id, "token": token if req.token is None else None}


async def revoke_token(h: Helper, req: ops.RevokeToken, actor: Actor) -> Any:
    record = await h.tokens.run(h.tokens.revoke, req.token, req.id)
    log.info("token %d (%s) revoked by %s", record.id, record.description, actor.description)
    h.live.revoked(record.id)  # its event streams end now
    return {"id": record.id}


async def list_tokens(h: Helper, req: ops.ListTokens, actor: Actor) -> Any:
    return [record.public() for record in await h.tokens.run(h.tokens.list)]


async def create_session(h: Helper, req: CreateSession, actor: Actor) -> Any:
    """Sign in with a host account (PAM) or an API token: mint a session, a token of kind
    `session` bound to the user. The secret goes back once, for the frontend's cookie."""
    cfg = h.cfg.session
    if req.token is not None:
        record = h.tokens.verify(req.token)
        if record is None or record.kind != tokens.API:
            raise sessions.refused()  # the frontend counts it as a failed authentication
        user, scope, parent = None, record.scope, record.id
        description = f"token {record.id}: {record.description}"
    else:
        assert req.username is not None and req.password is not None  # the request's rule
        signed = await h.password_check(req.username, req.password, h.client())
        user, scope, parent, description = signed.user, signed.scope, None, signed.user
    session_id, secret = await h.tokens.run(h.tokens.create_session, user, description, scope,
                                            cfg.idle, cfg.lifetime, parent)
    log.info("session %d for %s (%s) opened", session_id, description, scope)
    record = h.tokens.verify(secret)
    return {"id": session_id, "secret": secret, "user": user, "scope": scope,
            "expires": None if record is None else record.expires, "idle": cfg.idle}


async def end_session(h: Helper, req: EndSession, actor: Actor) -> Any:
    """Sign out: the presented session is deleted from the store, not only forgotten."""
    record = h.presented()
    if record is None or record.kind != tokens.SESSION:
        # 409, not 400: the request is well-formed; the credential is not a session.
        raise LwpError("invalid-state", "only a session can be ended here; revoke a token "
                                          "with DELETE /api/v1/tokens/id/<id>")
    await h.tokens.run(h.tokens.revoke, None, record.id)
    log.info("session %d for %s ended: signed out", record.id, record.description)
    return {"id": record.id}


async def session_info(h: Helper, req: SessionInfo, actor: Actor) -> Any:
    record = h.presented()
    if record is None:  # root's CLI
        return {"id": None, "kind": "local", "user": "root", "scope": actor.scope,
                "expires": None, "idle": None}
    return {"id": record.id, "kind": record.kind, "user": record.user, "scope": record.scope,
            "expires": record.expires, "idle": record.idle}


def query_audit(h: Helper, req: ops.QueryAudit) -> Any:
    try:
        return audit.query(h.cfg.audit_dir, req)
    except (OSError, audit.AuditError) as exc:
        raise audit.lookup_error(exc) from None


def host_report(h: Helper, req: ops.HostReport) -> Any:
    return doctor.report(h.cfg)


def list_templates(h: Helper, req: ops.ListTemplates) -> Any:
    """What a create may name, from the configuration the helper checks creates against: a
    client offers these choices (an option's `values` is null when its value is free text)."""
    cfg = h.cfg

    def options(template: str) -> list[dict[str, Any]]:
        values = cfg.template_values.get(template, {})
        return [{"name": o, "values": sorted(values[o]) if o in values else None}
                for o in sorted(cfg.template_options.get(template, ()))]

    return {"templates": [{"name": t, "options": options(t)} for t in sorted(cfg.templates)],
            "stores": sorted(cfg.stores)}


async def list_containers(h: Helper, req: ops.ListContainers, actor: Actor) -> Any:
    """From the state table (helperd/statewatch.py), after every notification liblxc has
    delivered is confirmed: no liblxc call per container."""
    return await h.live.list_containers()


async def subscribe_events(h: Helper, req: SubscribeEvents, actor: Actor) -> Any:
    """The reply is the stream's start frame; the server then hands the connection to the
    stream (helperd/eventstream.py), which ends when the token is revoked or expires."""
    return h.open_events(req, actor)


async def helper_metrics(h: Helper, req: ops.HelperMetrics, actor: Actor) -> Any:
    return h.live.snapshot()


def _freeze_timeout(cfg: HelperConfig) -> float:
    return cfg.freeze_timeout


def _name_and_source(request: ops.CloneContainer) -> tuple[str, ...]:
    return (request.name, request.source)


def only_visible(result: list[dict[str, Any]],
                 patterns: tuple[str, ...]) -> list[dict[str, Any]]:
    """A listing cut to what a limited token may see (Limited.LISTED)."""
    return [item for item in result if rules.in_patterns(item["container"], patterns)]


def check_limited(rule: Rule, request: Any, patterns: tuple[str, ...]) -> None:
    """Refuse what a token limited to `patterns` may not do; answer a container it may not
    see exactly as one that does not exist (the same code and message, before any other
    check of the op: the op's own method would give that answer first)."""
    if rule.limited is Limited.NEVER:
        raise LwpError("forbidden", "Forbidden: a token limited to containers cannot do this")
    if rule.limited in (Limited.LISTED, Limited.UNNAMED):
        return
    if getattr(request, "privileged", False):  # root in it is root on the host: unlimited only
        raise LwpError("forbidden", "Forbidden: a token limited to containers cannot make a "
                                    "privileged container")
    made = rule.makes(request)
    names = rule.locks(request)
    for name in names:  # the existing ones first, as the ops themselves look at them first
        if name not in made and not rules.in_patterns(name, patterns):
            raise errors.missing_container(name, rule.missing)
    for name in made:
        if not rules.in_patterns(name, patterns):
            raise LwpError("forbidden", f"Forbidden: {name!r} is outside this token's "
                                        "containers")


READ, HOST_READ, LIVE = Kind.READ, Kind.HOST_READ, Kind.LIVE
TOKEN_READ, TOKEN_CHANGE, CONTAINER_CHANGE = Kind.TOKEN_READ, Kind.TOKEN_CHANGE, \
    Kind.CONTAINER_CHANGE
NEVER = Limited.NEVER

# The policy. A frame that decodes to an op runs exactly what its row says, after the server has
# verified the token, the op's scope (protocol.ops.OPS), the token's rate and the trail's free
# space (the floor for reads or for changes, by `kind`). Adding an op is one row here plus one
# method: declare the op in protocol/ops.py (name, request class, scope, frontend wait), write the
# method (on Containers for a container read or change; here for the rest), add its Rule. Nothing
# else dispatches: test_tables proves RULES and protocol's OPS name the same ops.
RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("list_containers", LIVE, list_containers, locks=_nothing,
         limited=Limited.LISTED),
    Rule("container_info", READ, Containers.container_info, missing="not-found"),
    Rule("start_container", CONTAINER_CHANGE, Containers.start_container),
    Rule("stop_container", CONTAINER_CHANGE, Containers.stop_container),
    # liblxc's freeze can wait for ever on a cgroup stuck in FREEZING: a deadline of its own,
    # then a thaw, so the container is left running.
    Rule("freeze_container", CONTAINER_CHANGE, Containers.freeze_container,
         own_deadline=_freeze_timeout, on_timeout=Containers.thaw_after_timeout,
         stuck_state="FREEZING", undone="thawed: the freeze was cut short"),
    Rule("unfreeze_container", CONTAINER_CHANGE, Containers.unfreeze_container),
    Rule("restart_container", CONTAINER_CHANGE, Containers.restart_container),
    Rule("create_container", CONTAINER_CHANGE, Containers.create_container,
         builds_rootfs=TEMPLATE, makes=_its_name),
    Rule("clone_container", CONTAINER_CHANGE, Containers.clone_container, builds_rootfs=COPY,
         locks=_name_and_source, makes=_its_name),
    Rule("destroy_container", CONTAINER_CHANGE, Containers.destroy_container),
    # Tokens, the trail and the host speak of every container: none for a limited token.
    Rule("create_token", TOKEN_CHANGE, create_token, locks=_nothing, limited=NEVER),
    Rule("revoke_token", TOKEN_CHANGE, revoke_token, locks=_nothing, limited=NEVER),
    Rule("list_tokens", TOKEN_READ, list_tokens, locks=_nothing, limited=NEVER),
    Rule("query_audit", HOST_READ, query_audit, locks=_nothing, limited=NEVER),
    Rule("host_report", HOST_READ, host_report, locks=_nothing, limited=NEVER),
    Rule("container_config", READ, Containers.container_config, missing="not-found"),
    Rule("set_container_config", CONTAINER_CHANGE, Containers.set_container_config),
    Rule("list_templates", HOST_READ, list_templates, locks=_nothing,
         limited=Limited.UNNAMED),
    # The stream and the metrics speak of every container: not for a limited token (yet).
    Rule("subscribe_events", LIVE, subscribe_events, locks=_nothing, limited=NEVER),
    Rule("helper_metrics", LIVE, helper_metrics, locks=_nothing, limited=NEVER),
    # Sessions (#15): tokens of kind `session`; signing in needs no token (ops.ANONYMOUS_OPS).
    Rule("create_session", TOKEN_CHANGE, create_session, locks=_nothing,
         limited=Limited.UNNAMED),
    Rule("end_session", TOKEN_CHANGE, end_session, locks=_nothing,
         limited=Limited.UNNAMED),
    Rule("session_info", TOKEN_READ, session_info, locks=_nothing,
         limited=Limited.UNNAMED),
)}


def rule_of(request: Any) -> Rule:
    return RULES[ops.OP_OF_REQUEST[type(request)].name]


def perform(containers: Containers, request: ops.Request) -> None:
    """A worker's job: the container change its row names, niced if it builds a rootfs."""
    rule = rule_of(request)
    if rule.kind is not Kind.CONTAINER_CHANGE:  # a worker makes container changes only
        raise LwpError("internal-error", f"{rule.name} is not a container change")
    if rule.builds_rootfs:
        os.setpriority(os.PRIO_PROCESS, 0, BUILD_NICE)
    rule.call(containers, request)
