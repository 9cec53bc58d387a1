"""The OpenAPI 3.1 document of the RestAPI, generated from the route table (frontend/api.py ROUTES).

Paths, operations, patterns, scopes, actions, `force` words, number limits and error codes come
from frontend/ and protocol/ themselves, so the document cannot drift from what is served.
"""
from __future__ import annotations

import copy
import functools
import re
from typing import Any

from frontend.api import ROUTES
from frontend.errors import STATUS
from frontend.surface import ACTIONS, NUMBER_MAX, Route, force_pattern
from protocol import ops, rules, session
from protocol.errors import CODES

JSON = "application/json"
# What a list of containers can say about a state (liblxc's states, lower-cased by the helper).
STATES = ("stopped", "starting", "running", "stopping", "aborting", "freezing", "frozen", "thawed")
ANY_REQUEST = (401, 429, 503)
FORWARDED = (403, 502, 504)


def _anchored(pattern: re.Pattern[str]) -> str:
    # Python's fullmatch is JSON Schema's ^...$ (these patterns use no Python-only syntax).
    return f"^{pattern.pattern}$"


def _string(pattern: re.Pattern[str], max_length: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "pattern": _anchored(pattern)}
    if max_length is not None:
        out["maxLength"] = max_length
    return out


NAME = _string(rules.NAME_RE)
NULLABLE_TIME = {"type": ["number", "null"]}
# A token's containers (rules.container_patterns); null or absent: every container.
CONTAINER_PATTERNS = {
    "type": ["array", "null"], "items": _string(rules.PATTERN_RE), "minItems": 1,
    "maxItems": rules.MAX_PATTERNS,
    "description": "name patterns (* and ? stand for characters) of the only containers the "
                   "token sees; others answer as if they did not exist, and such a token "
                   "cannot mint or list tokens, read the audit trail or the host report. "
                   "null or absent: every container"}
# Python's str.isprintable() (the rule for free text) depends on the Unicode version and has no
# JSON Schema pattern; this one is exact for ASCII and names the rule for the rest.
TEXT = {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]*$",
        "description": "printable characters (no control characters, no line breaks)"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # Optional body fields: JSON null means the same as leaving the field out.
    return {**schema, "type": [schema["type"], "null"]}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False}


OK = _object(["status"], status={"type": "string", "enum": ["ok"]})
PRIVILEGED = {"type": "boolean",
              "description": "no id map: root in the container is root on the host"}
SCHEMAS: dict[str, Any] = {
    "Error": _object(["status", "error", "code"],
                     status={"type": "string", "enum": ["error"]},
                     error={"type": "string"},
                     code={"type": "string", "enum": sorted(CODES)}),
    "Ok": OK,
    "ContainerList": {"type": "array", "items": _object(
        ["container", "state"], container=NAME, state={"type": "string", "enum": list(STATES)})},
    "ContainerInfo": {"oneOf": [
        _object(["name", "state", "pid", "privileged"], name=NAME,
                state={"type": "string", "enum": ["STOPPED"]},
                pid={"type": "integer", "enum": [0]}, privileged=PRIVILEGED),
        _object(["name", "state", "pid", "ip", "link", "cpu_use", "memory_use", "kmem_use",
                 "blkio_use", "rx_bytes", "tx_bytes", "total_bytes", "privileged"],
                name=NAME, privileged=PRIVILEGED,
                state={"type": "string",
                       "enum": [s.upper() for s in STATES if s != "stopped"]},
                pid={"type": "string", "pattern": "^[0-9]+$"},
                **{key: {"type": "string"} for key in (
                    "ip", "link", "cpu_use", "memory_use", "kmem_use", "blkio_use", "rx_bytes",
                    "tx_bytes", "total_bytes")}),
    ]},
    "Action": _object(["action"], action={"type": "string", "enum": list(ACTIONS)}),
    "CreateContainer": {
        **_object(
            ["name"], name=NAME,
            template={**_nullable(_string(rules.TEMPLATE_RE)),
                      "description": "an installed template's name (lxc-<template>)"},
            clone={**_nullable(NAME), "description": "the name of a stopped container to copy"},
            store={**_nullable(_string(rules.STORE_RE)),
                   "description": "a backing store the configuration allows"},
            xargs={"description": "template options as --option=value words (a string split "
                                  "like a shell would, or a list); only options the "
                                  "configuration allows for that template",
                   "oneOf": [{"type": ["string", "null"]},
                             {"type": "array", "items": {"type": "string"},
                              "maxItems": rules.MAX_XARGS * 2}]},
            privileged={"type": ["boolean", "null"],
                        "description": "make it without an id map (root in it is root on "
                                       "the host): refused unless the helper's configuration "
                                       "allows it (helperd.allow_privileged); templates only"}),
        # Exactly one source (null counts as absent); xargs belong to templates only.
        "oneOf": [{"required": ["template"], "properties": {"template": {"type": "string"},
                                                            "clone": {"type": "null"}}},
                  {"required": ["clone"], "properties": {"clone": {"type": "string"},
                                                         "template": {"type": "null"},
                                                         "xargs": {"enum": [None, "", []]},
                                                         "privileged": {"enum": [None, False]}}}],
    },
    "TokenRecord": _object(
        ["id", "description", "scope", "created", "expires", "last_used", "containers"],
        id={"type": "integer", "minimum": 1},
        description={"type": "string"},
        scope={"type": "string", "enum": list(rules.SCOPES)},
        created={"type": "number"}, expires=NULLABLE_TIME, last_used=NULLABLE_TIME,
        containers=CONTAINER_PATTERNS),
    "CreateToken": _object(
        [],
        token={**_nullable(_string(rules.TOKEN_RE, rules.TOKEN_MAX)),
               "minLength": ops.TOKEN_FLOOR,
               "description": "a client-chosen secret, at least the configured minimum "
                              "length; absent: the server generates one and returns it once"},
        description={**_nullable(TEXT), "maxLength": rules.MAX_DESCRIPTION},
        scope={"enum": [*rules.SCOPES, None], "default": "admin"},
        expires={"type": ["number", "null"], "exclusiveMinimum": 0,
                 "maximum": rules.EXPIRES_MAX,
                 "description": "Unix time after which the token is refused (finite, at "
                                "most the end of the year 9999)"},
        containers=CONTAINER_PATTERNS),
    "TokenCreated": _object(["status", "id"], status={"type": "string", "enum": ["ok"]},
                            id={"type": "integer", "minimum": 1},
                            token={"type": "string"}),
    "TokenRevoked": _object(["status", "id"], status={"type": "string", "enum": ["ok"]},
                            id={"type": "integer", "minimum": 1}),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


REQUEST_ID = {"X-Request-Id": {"required": True, "description": "this request's id, also in "
                               "the audit trail", "schema": {"type": "string"}}}


def _responses(ok: str, *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "success", "headers": REQUEST_ID,
                                   "content": {JSON: {"schema": _ref(ok)}}}}
    for status in sorted(set(errors)):
        codes = sorted(code for code, s in STATUS.items() if s == status)
        headers = dict(REQUEST_ID)
        if status == 429:
            headers["Retry-After"] = {"required": True, "description": "seconds to wait",
                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}}
        out[str(status)] = {"description": " or ".join(codes), "headers": headers,
                            "content": {JSON: {"schema": _ref("Error")}}}
    return out


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


# ISO 8601 as the audit filter reads it (datetime.fromisoformat), kept to what a pattern can
# promise is a real date: any day up to the 28th of any month.
ISO_TIME = ("^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
            "(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,6})?)?"
            "(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?$")
COUNT = {"type": "integer", "minimum": 0, "maximum": NUMBER_MAX}
# A query parameter's schema, by name: a route's row names its parameters, this says what
# each admits (a name a row uses and this lacks fails at import).
QUERY: dict[str, dict[str, Any]] = {
    "force": {"type": "string", "pattern": force_pattern()},
    "since": {"type": "string", "pattern": ISO_TIME},
    "until": {"type": "string", "pattern": ISO_TIME},
    "container": NAME,
    "actor": {**TEXT, "minLength": 1, "maxLength": rules.MAX_DESCRIPTION,
              "description": "a token id (digits 0-9 only), or part of a token's description"},
    "op": {"type": "string", "enum": sorted(ops.OPS)},
    "outcome": {"type": "string", "enum": list(ops.AUDIT_OUTCOMES)},
    "limit": {**COUNT, "minimum": 1, "maximum": ops.AUDIT_MAX_LIMIT},
    "cursor": {**COUNT, "description": "next_cursor of the previous page"},
    "types": {"type": "string", "pattern": "^(lifecycle|operation|audit)"
                                           "(,(lifecycle|operation|audit))*$"},
}
# A request header's schema, by name.
HEADER: dict[str, dict[str, Any]] = {
    "Last-Event-ID": {"type": "string", "pattern": "^[0-9a-f]{16}-[0-9]{1,15}$"},
}
# A path parameter's schema, by name.
IN_PATH: dict[str, dict[str, Any]] = {
    "name": NAME,
    "token": _string(rules.TOKEN_RE, rules.TOKEN_MAX),
    "id": {"type": "integer", "minimum": 1, "maximum": NUMBER_MAX},
}


def _operation(row: Route) -> dict[str, Any]:
    # Errors any /api/ request can meet: no or a bad token, too many of those, an unreadable
    # store; a forwarded one: a scope too small, the helper's own failures; a body: its own.
    errors = [*ANY_REQUEST, *(FORWARDED if row.ops else ()), *((400, 413) if row.body else ()),
              *row.errors]
    out: dict[str, Any] = {"operationId": row.handler.__name__, "summary": row.summary}
    if row.query:
        out["parameters"] = [_query_param(name, QUERY[name]) for name in row.query]
    if row.body:
        out["requestBody"] = _body(row.body)
    out["responses"] = _responses(row.ok, *errors)
    if row.media != JSON:  # a stream or a scrape: text, not a JSON schema
        out["responses"]["200"]["content"] = {row.media: {"schema": {"type": "string"}}}
    if row.headers:
        out.setdefault("parameters", []).extend(
            {"name": name, "in": "header", "required": False, "schema": HEADER[name]}
            for name in row.headers)
    return out


def paths(routes: tuple[Route, ...]) -> dict[str, dict[str, Any]]:
    """Path -> method -> operation, from the route table. Every route also answers with a
    trailing slash, unredirected."""
    out: dict[str, dict[str, Any]] = {}
    for row in routes:
        item = out.setdefault(row.path, {})
        names = re.findall(r"{(\w+)}", row.path)
        if names:
            item["parameters"] = [_path_param(name, IN_PATH[name]) for name in names]
        item[row.method.lower()] = _operation(row)
    return out


PATHS = paths(ROUTES)
# Signing in takes its credential in the body: no security scheme applies.
PATHS["/api/v1/session"]["post"]["security"] = []
SCHEMAS["AuditPage"] = _object(
    ["records", "next_cursor"], records={"type": "array", "items": {"type": "object"}},
    next_cursor={"type": ["integer", "null"]})
SCHEMAS["HostReport"] = {"type": "array", "items": _object(
    ["check", "status", "detail", "fix"], check={"type": "string"},
    status={"enum": ["ok", "warning", "problem"]}, detail={"type": "string"},
    fix={"type": "string"})}
SIZE_WORDS = "bytes, or digits and a unit M, G or T (powers of 1024)"
SIZE: dict[str, Any] = {"description": SIZE_WORDS,
        "oneOf": [{"type": "integer", "minimum": rules.SIZE_MIN, "maximum": rules.SIZE_MAX},
                  {"type": "string", "pattern": _anchored(rules.SIZE_RE)}]}
CONFIG_VALUES: dict[str, dict[str, Any]] = {
    "memory_limit": SIZE,
    "memory_swap_limit": {**SIZE, "description": "cgroup v1: memory and swap together; "
                                                 "v2: swap alone. " + SIZE_WORDS},
    "cpus": {**_string(rules.CPUSET_RE), "description": "a cpuset list such as 0-1,3"},
    "cpu_weight": {"type": "integer", "minimum": rules.CPU_WEIGHT_MIN,
                   "maximum": rules.CPU_WEIGHT_MAX},
    "autostart": {"type": "boolean"},
    "autostart_delay": {"type": "integer", "minimum": 0, "maximum": rules.AUTOSTART_DELAY_MAX},
    "autostart_order": {"type": "integer", "minimum": -rules.AUTOSTART_ORDER_MAX,
                        "maximum": rules.AUTOSTART_ORDER_MAX},
}
assert set(CONFIG_VALUES) == set(ops.CONFIG_SETTINGS)
SCHEMAS["ContainerConfigChange"] = {
    **_object([], **{key: {"oneOf": [value, {"type": "null"}],
                           "description": "null removes the setting"}
                     for key, value in CONFIG_VALUES.items()}),
    "minProperties": 1}
SCHEMAS["ContainerConfig"] = _object(
    ["name", "source", "cgroup", *ops.CONFIG_SETTINGS], name=NAME,
    source={"enum": ["cgroup", "config"]}, cgroup={"enum": ["v1", "v2"]},
    **{key: {"type": ["integer", "string", "boolean", "null"]} for key in ops.CONFIG_SETTINGS})
SCHEMAS["TokenList"] = {"type": "array", "items": _ref("TokenRecord")}
SCHEMAS["CreateSession"] = {"oneOf": [
    _object(["username", "password"],
            username=_string(session.USER_RE, session.USER_MAX),
            # No NUL; the byte limit is not a schema rule: a quarter of it in characters
            # (4 bytes each at most) is what the document can promise.
            password={"type": "string", "minLength": 1,
                      "maxLength": session.PASSWORD_MAX_BYTES // 4, "pattern": "^[^\\x00]+$",
                      "description": f"at most {session.PASSWORD_MAX_BYTES} bytes in UTF-8, "
                                     "no NUL"}),
    _object(["token"], token=_string(rules.TOKEN_RE, rules.TOKEN_MAX))]}
SCHEMAS["Session"] = _object(
    ["id", "user", "scope", "expires", "idle"], id={"type": "integer", "minimum": 1},
    user={"type": ["string", "null"], "description": "the host account; null for a token"},
    scope={"type": "string", "enum": list(rules.SCOPES)},
    expires={"type": "number", "description": "Unix time at which the session ends anyway"},
    idle={"type": "number", "description": "seconds without a request that end it"})
SCHEMAS["SessionInfo"] = _object(
    ["id", "kind", "user", "scope", "expires", "idle"],
    id={"type": ["integer", "null"]}, kind={"enum": ["api", "session", "local"]},
    user={"type": ["string", "null"]}, scope={"type": "string", "enum": list(rules.SCOPES)},
    expires=NULLABLE_TIME, idle={"type": ["number", "null"]})
SCHEMAS["SessionEnded"] = SCHEMAS["TokenRevoked"]
SCHEMAS["OpenApi"] = {"type": "object", "required": ["openapi", "paths"]}
_STRINGS = {"type": "array", "items": {"type": "string"}}
SCHEMAS["TemplateCatalogue"] = _object(
    ["templates", "stores"], stores=_STRINGS,
    templates={"type": "array", "items": _object(
        ["name", "options"], name={"type": "string"},
        options={"type": "array", "items": _object(
            ["name", "values"], name={"type": "string"},
            # null: any value of the option's shape; a list: only these
            values={"type": ["array", "null"], "items": {"type": "string"}})})})


@functools.cache
def document(token_min_length: int = ops.TOKEN_FLOOR) -> dict[str, Any]:
    """The document, with the client-chosen token minimum this installation enforces."""
    schemas = copy.deepcopy(SCHEMAS)
    schemas["CreateToken"]["properties"]["token"]["minLength"] = token_min_length
    return {
        "openapi": "3.1.0",
        "info": {"title": "LXC Web Panel RestAPI", "version": "1",
                 "description": "The seed's RestAPI through a privilege split. Every path also "
                                "answers with a trailing slash. Every error has the Error shape."},
        "paths": PATHS,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "header": {"type": "apiKey", "in": "header", "name": "Private-Token"},
                "query": {"type": "apiKey", "in": "query", "name": "private_token"},
            },
        },
        "security": [{"header": []}, {"query": []}],
    }
