"""The HTTP surface's words, each defined once: a route row's shape, the actions, the `force`
words and the number rule. The handlers (frontend/api.py) and the document (frontend/openapi.py)
both import them, so what is served and what is documented cannot differ.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import ops, rules

# The seed's actions, plus unfreeze and restart: POST /api/v1/containers/{name}'s `action`.
ACTIONS: dict[str, type] = {
    "start": ops.StartContainer,
    "stop": ops.StopContainer,
    "freeze": ops.FreezeContainer,
    "unfreeze": ops.UnfreezeContainer,
    "restart": ops.RestartContainer,
}
# The seed's `force` words (DELETE's query parameter), matched case-insensitively.
TRUE_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# A number in a path or a query (a token id, an audit limit or cursor): ASCII digits, at most
# this many, so int() never meets a huge string and the value fits the helper's integers.
MAX_DIGITS = 18
NUMBER_MAX = 10**MAX_DIGITS - 1


def number(raw: str) -> int | None:
    """`raw` as a non-negative integer if it is one by the number rule, else None."""
    if not rules.ascii_digits(raw) or len(raw) > MAX_DIGITS:
        return None
    return int(raw)


def force_pattern() -> str:
    """TRUE_WORDS as the JSON Schema pattern of a case-insensitive match."""
    def anycase(word: str) -> str:
        return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)
    return f"^({'|'.join(anycase(word) for word in TRUE_WORDS)})$"


@dataclass(frozen=True, eq=False)
class Route:
    """One row of the route table: what is served, and all the document says about it.

    `handler` is an Api method (unbound); its name is the operationId. `ops` are the protocol
    requests it may send (empty: it answers without the helper); a handler reading a body is
    refused before reading it unless the token's scope allows one of them. `errors` are the
    statuses beyond those every such route can meet (see openapi.py)."""
    method: str
    path: str
    handler: Callable[..., Any]
    ops: tuple[type, ...]
    summary: str
    ok: str  # the schema of a 200's body
    body: str | None = None  # the schema of the request body, if it takes one
    errors: tuple[int, ...] = ()
    query: tuple[str, ...] = ()  # the query parameters' names (their schemas: openapi.py)
