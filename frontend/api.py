"""The seed's RestAPI as aiohttp handlers: HTTP in, protocol requests out, JSON back.

Every /api/ path is authenticated before routing is honoured, so an anonymous client learns
nothing (not even whether a path exists). Bodies are parsed strictly, naming the bad field.
"""
from __future__ import annotations

import json
import logging
import math
import time
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from frontend import clientaddr, present
from frontend import session as browser
from frontend.accesslog import safe_target
from frontend.auth import QUERY_KEY, TokenReader, presented_token
from frontend.config import Network
from frontend.errors import error_response, new_request_id, refusal
from frontend.events import Streams
from frontend.metrics import Metrics
from frontend.ratelimit import AuthFailures
from frontend.surface import ACTIONS, TRUE_WORDS, Route, number
from protocol import VERSION, ops, rules, tokens
from protocol.client import HelperClient
from protocol.errors import LwpError, invalid
from protocol.limits import Buckets
from protocol.session import CreateSession, EndSession, SessionInfo
from protocol.stream import SubscribeEvents
from protocol.tokens import TokenRecord

log = logging.getLogger("lwp.frontend")
OK = {"status": "ok"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# GET /api/v1/audit's query parameters: QueryAudit's fields.
AUDIT_TEXT = ("since", "until", "container", "actor", "op", "outcome")
AUDIT_NUMBERS = ("limit", "cursor")
# Paths outside /api/ that need a token all the same (/metrics: scraped with a read token).
AUTHENTICATED = frozenset({"/api", "/metrics", "/metrics/"})
# Token ids the per-token limiter remembers at most (its memory bound).
LIMITED_TOKENS = 10_000
# Signing in needs no credential (it carries one): the only such route.
SIGN_IN = ("POST", frozenset({"/api/v1/session", "/api/v1/session/"}))
# What a sign-in answers (the helper's reply also has the secret, which goes in the cookie).
SESSION_FIELDS = ("id", "user", "scope", "expires", "idle")


class Api:
    def __init__(self, client: HelperClient, tokens: TokenReader, failures: AuthFailures,
                 proxies: Sequence[Network] = (), token_limit: Buckets | None = None,
                 document: dict[str, Any] | None = None, streams: Streams | None = None,
                 meter: Metrics | None = None, base_path: str = "/",
                 origins: Sequence[str] = ()) -> None:
        self.client = client
        self.streams = streams or Streams("")  # GET /api/v1/events
        self.meter = meter or Metrics()  # GET /metrics
        self.document = document or {}  # GET /api/v1/openapi.json's answer
        self.base_path = base_path  # the session cookie's Path: where the browser sees us
        self.origins = frozenset(origins)  # public origins besides our own (a proxy's)
        self.token_limit = token_limit
        self.tokens = tokens
        self.failures = failures
        self.proxies = proxies
        self._ops: dict[Handler, tuple[type, ...]] = {}

    def routes(self) -> list[web.RouteDef]:
        """ROUTES, served. Every route answers with and without a trailing slash; no redirects
        (the reference's redirect turned a PUT into a GET). A path's methods are added one
        after the other, so aiohttp gives them one resource: it resolves a request by trying
        the resources in turn, an await each, so fewer resources answer sooner."""
        defs = []
        for path in dict.fromkeys(row.path for row in ROUTES):
            for slash in ("", "/"):
                for row in ROUTES:
                    if row.path == path:
                        handler = types.MethodType(row.handler, self)
                        self._ops[handler] = row.ops
                        defs.append(web.route(row.method, path + slash, handler))
        return defs

    # -- middlewares ----------------------------------------------------------------------

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = new_request_id()
        request["request_id"] = request_id
        try:
            response = await handler(request)
        except LwpError as exc:
            response = error_response(exc)
        except ConnectionError:
            raise  # the client went away mid-request: aiohttp drops it quietly, so do we
        except web.HTTPException as exc:  # aiohttp's own refusal: no route, method, too large
            response = refusal(exc.status, exc.reason, exc.headers.get("Allow", ""))
        except Exception:  # noqa: BLE001 — logged in full here, never shown to the client
            log.exception("request %s failed unexpectedly", request_id)
            response = error_response(LwpError("internal-error", "internal error"))
        response.headers["X-Request-Id"] = request_id
        return response

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        client = request["client"] = clientaddr.of_request(request, self.proxies)
        if request.path.startswith("/api/") or request.path in AUTHENTICATED:
            # A limited client is refused before its token is looked at: a right guess made
            # while limited must be worth nothing.
            wait = self.failures.retry_after(client)
            if wait > 0:
                self.failures.refused(client, _request_line(request), wait)
                response = error_response(LwpError(
                    "rate-limited", "too many failed authentications; try again later"))
                response.headers["Retry-After"] = str(math.ceil(wait))
                return response
            if request.method == SIGN_IN[0] and request.path in SIGN_IN[1]:
                # Any cookie or token sent along is ignored: a stale cookie must not stand
                # between a user and signing in again. The limit above applies all the same.
                return await handler(request)
            token = presented_token(request)
            via_cookie = token is None and browser.presented_session(request) is not None
            if via_cookie:
                token = browser.presented_session(request)
                # The cookie rides along with any request a browser makes, whoever's page
                # made it: one that changes something must prove it is our page's.
                refusal = browser.csrf_refusal(request, self.origins)
                if refusal is not None:
                    log.warning("refused a cookie request from %s: %s: %s", client, refusal,
                                _request_line(request))
                    raise LwpError("forbidden", f"Forbidden: {refusal}")
            # A header may carry any bytes (aiohttp keeps non-UTF-8 as surrogates): one that
            # cannot be a token is a failed authentication like any other, not a store error.
            shaped = token is not None and rules.token_shaped(token)
            record = self.tokens.lookup(token) if token and shaped else None
            if record is not None and (record.kind == tokens.SESSION) != via_cookie:
                # A session only in its cookie (no script can read it, so none can send it
                # elsewhere); an API token never in one (the cookie is ambient, a token not).
                record = None
            if record is None:
                reason = ("no-token" if not token else "unknown-or-expired-token" if shaped
                          else "malformed-token")
                self.failures.failed(client, reason, _request_line(request))
                raise LwpError("unauthorized", "Unauthorized")
            request["token"] = token
            request["record"] = record
        return await handler(request)

    # -- forwarding -------------------------------------------------------------------------

    async def call(self, request: web.Request, req: Any) -> Any:
        op = ops.OP_OF_REQUEST[type(req)]
        record: TokenRecord = request["record"]
        if not rules.scope_allows(record.scope, op.scope):
            raise LwpError("forbidden", "Forbidden")
        if self.token_limit is not None:
            # Keyed by the verified token's id, never by what the client sent.
            wait = self.token_limit.take(record.id, time.monotonic())
            if wait > 0:
                raise LwpError("rate-limited", "too many requests with this token; try again "
                               "later", retry_after=wait)
        envelope = ops.Envelope(request["request_id"], request["token"], request["client"], req)
        return await self.client.call(envelope)

    def permit(self, request: web.Request) -> None:
        """403 before a body is read if the token may call none of its route's operations:
        a token without the scope gets no parser to work on (call() checks the one chosen)."""
        record: TokenRecord = request["record"]
        candidates = self._ops[request.match_info.route.handler]
        if not any(rules.scope_allows(record.scope, ops.OP_OF_REQUEST[c].scope)
                   for c in candidates):
            raise LwpError("forbidden", "Forbidden")

    # -- handlers -----------------------------------------------------------------------

    async def list_containers(self, request: web.Request) -> web.Response:
        return web.json_response(await self.call(request, ops.ListContainers()))

    async def container_info(self, request: web.Request) -> web.Response:
        info = await self.call(request, ops.ContainerInfo(request.match_info["name"]))
        return web.json_response(present.container_info(info))

    async def container_action(self, request: web.Request) -> web.Response:
        name = rules.container_name(request.match_info["name"])
        self.permit(request)
        body = await json_object(request)
        action = field(body, "action", str)
        _no_others(body, {"action"})
        if action not in ACTIONS:
            raise invalid("action", f"must be one of {', '.join(ACTIONS)}")
        await self.call(request, ACTIONS[action](name))
        return web.json_response(OK)

    async def create_container(self, request: web.Request) -> web.Response:
        self.permit(request)
        body = await json_object(request)
        _no_others(body, {"name", "template", "clone", "store", "xargs", "privileged"})
        name = field(body, "name", str)
        template = field(body, "template", str, required=False)
        clone = field(body, "clone", str, required=False)
        store = field(body, "store", str, required=False)
        privileged = body.get("privileged")
        if privileged is not None and not isinstance(privileged, bool):
            raise invalid("privileged", "must be true or false")
        if (template is None) == (clone is None):
            raise invalid("template", "give exactly one of template or clone")
        req: Any
        if template is not None:
            xargs = field(body, "xargs", (str, list), required=False)
            if isinstance(xargs, list) and not all(isinstance(x, str) for x in xargs):
                raise invalid("xargs", "must be a string or a list of strings")
            words = tuple(rules.split_xargs(xargs)) if xargs is not None else ()
            req = ops.CreateContainer(name, template, store, words, bool(privileged))
        else:
            if body.get("xargs") not in (None, "", []):
                raise invalid("xargs", "applies to templates only, not to clones")
            if privileged:
                raise invalid("privileged", "applies to templates only: a clone keeps its "
                                            "source's id map")
            req = ops.CloneContainer(name, clone, store)
        await self.call(request, req)
        return web.json_response(OK)

    async def destroy_container(self, request: web.Request) -> web.Response:
        name = rules.container_name(request.match_info["name"])
        force = TRUE_WORDS.get(request.rel_url.query.get("force", "false").lower())
        if force is None:
            raise invalid("force", "must be true or false")
        await self.call(request, ops.DestroyContainer(name, force))
        return web.json_response(OK)

    async def create_token(self, request: web.Request) -> web.Response:
        self.permit(request)
        body = await json_object(request)
        _no_others(body, {"token", "description", "scope", "expires", "containers"})
        scope = field(body, "scope", str, required=False)
        containers = field(body, "containers", list, required=False)
        if containers is not None and not all(isinstance(c, str) for c in containers):
            raise invalid("containers", "must be a list of name patterns (strings)")
        req = ops.CreateToken(
            token=field(body, "token", str, required=False),
            description=field(body, "description", str, required=False) or "",
            # Only an absent scope means admin: "" is a mistake, not a default.
            scope="admin" if scope is None else scope,
            expires=field(body, "expires", (int, float), required=False),
            containers=None if containers is None else tuple(containers))
        result = await self.call(request, req)
        reply: dict[str, Any] = {**OK, "id": result["id"]}
        if result["token"] is not None:
            reply["token"] = result["token"]
        return web.json_response(reply)

    async def revoke_token(self, request: web.Request) -> web.Response:
        result = await self.call(request, ops.RevokeToken(token=request.match_info["token"]))
        return web.json_response({**OK, "id": result["id"]})

    async def revoke_token_by_id(self, request: web.Request) -> web.Response:
        token_id = number(request.match_info["id"])
        if token_id is None:
            raise invalid("id", "must be a positive integer")
        result = await self.call(request, ops.RevokeToken(id=token_id))
        return web.json_response({**OK, "id": result["id"]})

    async def create_session(self, request: web.Request) -> web.Response:
        """Sign in: a host account (PAM, in the helper) or an API token, exchanged for a
        session in an HttpOnly cookie. The answer body never holds the secret."""
        if browser.origin_refusal(request, self.origins) is not None:
            raise LwpError("forbidden", "Forbidden: cross-origin")  # a login CSRF
        body = await json_object(request)
        _no_others(body, {"username", "password", "token"})
        req = CreateSession(field(body, "username", str, required=False),
                            field(body, "password", str, required=False),
                            field(body, "token", str, required=False))
        envelope = ops.Envelope(request["request_id"], None, request["client"], req)
        try:
            result = await self.client.call(envelope)
        except LwpError as exc:
            if exc.code == "unauthorized":  # counted with bad tokens, per client address
                self.failures.failed(request["client"], "sign-in-refused",
                                     _request_line(request))
            raise
        response = web.json_response({key: result[key] for key in SESSION_FIELDS})
        browser.set_cookie(response, result["secret"], self.base_path,
                           browser.is_secure(request, self.origins))
        return response

    async def end_session(self, request: web.Request) -> web.Response:
        """Sign out: the helper deletes the session; the cookie is cleared as well."""
        result = await self.call(request, EndSession())
        response = web.json_response({**OK, "id": result["id"]})
        browser.clear_cookie(response, self.base_path, browser.is_secure(request, self.origins))
        return response

    async def session_info(self, request: web.Request) -> web.Response:
        return web.json_response(await self.call(request, SessionInfo()))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    async def subscribe_events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events (frontend/events.py): one helper stream per client stream."""
        return await self.streams.handle(request)

    async def helper_metrics(self, request: web.Request) -> web.Response:
        """Prometheus text: this frontend's counters and the helper's (frontend/metrics.py)."""
        return await self.meter.scrape(request, self.call)

    async def host_report(self, request: web.Request) -> web.Response:
        """The helper's host check (as `lwp-admin doctor`), and this frontend's version: a
        frontend not restarted after an upgrade runs other code than the helper."""
        findings = await self.call(request, ops.HostReport())
        same = any(f["check"] == "version" and f"lxc-web-panel {VERSION} " in f["detail"]
                   for f in findings)
        findings.append({"check": "frontend version", "status": "ok" if same else "warning",
                         "detail": f"lxc-web-panel {VERSION} (frontend)",
                         "fix": "" if same else "systemctl restart lwp-frontend"})
        return web.json_response(findings)

    async def list_templates(self, request: web.Request) -> web.Response:
        return web.json_response(await self.call(request, ops.ListTemplates()))

    async def list_tokens(self, request: web.Request) -> web.Response:
        return web.json_response(await self.call(request, ops.ListTokens()))

    async def query_audit(self, request: web.Request) -> web.Response:
        """One page of the audit trail; pass `cursor=<next_cursor>` for the next."""
        query = request.rel_url.query
        for key in query:
            if key not in AUDIT_TEXT and key not in AUDIT_NUMBERS and key != QUERY_KEY:
                raise invalid(key, "unknown query parameter")
        values: dict[str, Any] = {key: query[key] for key in AUDIT_TEXT if key in query}
        for key in AUDIT_NUMBERS:
            if key in query:
                values[key] = number(query[key])
                if values[key] is None:
                    raise invalid(key, "must be a non-negative integer")
        return web.json_response(await self.call(request, ops.QueryAudit(**values)))

    async def container_config(self, request: web.Request) -> web.Response:
        """Limits and autostart in force, and where they were read (cgroup or config)."""
        req = ops.ContainerConfig(request.match_info["name"])
        return web.json_response(await self.call(request, req))

    async def set_container_config(self, request: web.Request) -> web.Response:
        """Change limits and autostart: given fields are set, null ones removed, others kept.
        The body goes through the wire's own strict decoder: one type rule on both sides."""
        name = rules.container_name(request.match_info["name"])
        self.permit(request)
        body = await json_object(request)
        for key in body:
            if key not in ops.CONFIG_SETTINGS:
                raise invalid(rules.shown(key), "unknown field")
        # JSON Schema's integer is any number without a fraction: 274.0 is 274.
        args: dict[str, Any] = {
            key: int(value) if isinstance(value, float) and value.is_integer() else value
            for key, value in body.items() if value is not None}
        args.update(name=name, unset=[key for key, value in body.items() if value is None])
        await self.call(request, ops.decode_args("set_container_config", args))
        return web.json_response(OK)


CONTAINER = "/api/v1/containers/{name}"
# The route table: the one source of what is served and of what the OpenAPI document says.
ROUTES = (
    Route("GET", "/api/v1/containers", Api.list_containers, (ops.ListContainers,),
          "containers and their states", "ContainerList"),
    Route("PUT", "/api/v1/containers", Api.create_container,
          (ops.CreateContainer, ops.CloneContainer),
          "create a container from a template (unprivileged unless `privileged` is asked for "
          "and allowed) or as a clone (synchronous)", "Ok",
          body="CreateContainer", errors=(409, 500)),
    Route("GET", CONTAINER, Api.container_info, (ops.ContainerInfo,),
          "a container's state and usage", "ContainerInfo", errors=(400, 404)),
    Route("POST", CONTAINER, Api.container_action, tuple(ACTIONS.values()),
          f"{', '.join(list(ACTIONS)[:-1])} or {list(ACTIONS)[-1]}", "Ok",
          body="Action", errors=(409, 500)),
    Route("DELETE", CONTAINER, Api.destroy_container, (ops.DestroyContainer,),
          "destroy a container; a running one only with force", "Ok",
          errors=(400, 409, 500), query=("force",)),
    Route("GET", "/api/v1/tokens", Api.list_tokens, (ops.ListTokens,),
          "every token, its scope and containers, never a secret (unlimited admin tokens)",
          "TokenList"),
    Route("POST", "/api/v1/tokens", Api.create_token, (ops.CreateToken,),
          "register or generate a token, for every container or limited to name patterns "
          "(unlimited admin tokens)", "TokenCreated", body="CreateToken", errors=(409,)),
    Route("DELETE", "/api/v1/tokens/{token}", Api.revoke_token, (ops.RevokeToken,),
          "revoke a token by its secret", "TokenRevoked", errors=(400, 404)),
    Route("DELETE", "/api/v1/tokens/id/{id}", Api.revoke_token_by_id, (ops.RevokeToken,),
          "revoke a token by its id", "TokenRevoked", errors=(400, 404)),
    # Served to any valid token, like every /api/ path: it names no secret, but the contract
    # is that an anonymous client learns nothing about the API's paths.
    Route("GET", "/api/v1/openapi.json", Api.openapi, (),
          "this document (any valid token)", "OpenApi"),
    Route("GET", "/api/v1/audit", Api.query_audit, (ops.QueryAudit,),
          "one page of the audit trail, filtered (admin tokens)", "AuditPage",
          errors=(400, 500), query=AUDIT_TEXT + AUDIT_NUMBERS),
    Route("GET", "/api/v1/host", Api.host_report, (ops.HostReport,),
          "what makes containers work or fail on this host (admin tokens)", "HostReport"),
    Route("GET", CONTAINER + "/config", Api.container_config, (ops.ContainerConfig,),
          "limits and autostart in force: from the cgroup while running, else the config",
          "ContainerConfig", errors=(400, 404)),
    Route("PATCH", CONTAINER + "/config", Api.set_container_config, (ops.SetContainerConfig,),
          "set limits (live while running, and in the config) and autostart; null removes",
          "Ok", body="ContainerConfigChange", errors=(409, 500)),
    Route("GET", "/api/v1/templates", Api.list_templates, (ops.ListTemplates,),
          "the templates, their options (and allowed values) and the stores a create may name",
          "TemplateCatalogue"),
    Route("GET", "/api/v1/events", Api.subscribe_events, (SubscribeEvents,),
          "Server-Sent Events: lifecycle, operation and (admin) audit events; Last-Event-ID "
          "replays what was missed or sends `reset`; an `end` event closes it", "Ok",
          errors=(400,), query=("types", "container"), media="text/event-stream",
          headers=("Last-Event-ID",)),
    # Outside /api/ where Prometheus expects it, authenticated all the same (AUTHENTICATED).
    Route("GET", "/metrics", Api.helper_metrics, (ops.HelperMetrics,),
          "Prometheus text format (read tokens; Authorization: Bearer works)", "Ok",
          media="text/plain"),
    Route("GET", "/api/v1/session", Api.session_info, (SessionInfo,),
          "who the presented credential is (a session or a token)", "SessionInfo"),
    # Needs no credential (it carries one): the one route the middleware lets through
    # unauthenticated, after the address limiter (openapi.py marks it `security: []`).
    Route("POST", "/api/v1/session", Api.create_session, (CreateSession,),
          "sign in with a host account (PAM) or exchange an API token for a session; sets "
          "the HttpOnly session cookie", "Session", body="CreateSession"),
    Route("DELETE", "/api/v1/session", Api.end_session, (EndSession,),
          "sign out: the session is revoked and its cookie cleared (cookie requests other "
          "than GET and HEAD need X-LWP-Request: 1 and our Origin); a token, not a session: 409",
          "SessionEnded", errors=(409,)),
)


def _request_line(request: web.BaseRequest) -> str:
    """Method and target for a log line, with every place a token can travel redacted."""
    return f"{request.method} {safe_target(request)}"


# No request body nests deeper than an object holding a list (xargs); refusing deeper ones
# early keeps a body of 50,000 `[` from reaching the parser's recursion limit.
MAX_NESTING = 8


def _no_constant(name: str) -> Any:
    raise invalid("body", f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a float out of range, read as inf
        raise invalid("body", f"the number {rules.shown(text)} is out of range")
    return value


def _nesting(raw: bytes) -> int:
    """How deep `raw`'s arrays and objects nest, counting only brackets outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING:
                    break
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: strict RFC 8259 (no NaN, no Infinity, no number out of
    range), nested MAX_NESTING deep at most; anything else is 400 naming why."""
    raw = await request.read()
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _nesting(raw) > MAX_NESTING:
        raise invalid("body", f"nests arrays and objects more than {MAX_NESTING} deep")
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise invalid("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return body


def field(body: dict[str, Any], key: str, kind: type | tuple[type, ...],
          required: bool = True) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(key, "missing")
        return None
    # JSON true/false are not numbers, whatever Python's bool subclassing says.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise invalid(key, "has the wrong type")
    return value


def _no_others(body: dict[str, Any], known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise invalid(rules.shown(key), "unknown field")  # quoted: a key is client input
