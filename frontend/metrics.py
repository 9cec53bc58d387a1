"""GET /metrics: the frontend's own counters (per route and status) and the helper's (per op,
container states, audit, events), in Prometheus' text format. `read` scope, as the API.

Route labels are aiohttp's route templates ("/api/v1/containers/{name}"), never the path a
client sent, so a scraper sees a bounded set and no client text; 401s are the auth failures.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from protocol import metrics, ops, rules

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Call = Callable[[web.Request, ops.Request], Awaitable[object]]
# Label values the helper may send, each checked before it is shown.
LABEL_CHECKS = {
    "container": lambda v: bool(rules.NAME_RE.fullmatch(v)),
    "state": lambda v: v in ("STOPPED", "STARTING", "RUNNING", "STOPPING", "ABORTING",
                             "FREEZING", "FROZEN", "THAWED"),
    "op": lambda v: v in ops.OPS,
    "outcome": lambda v: v in ("ok", "error"),
}


class Metrics:
    def __init__(self) -> None:
        self.requests = metrics.Family("lwp_http_requests_total", "counter",
                                       "HTTP requests by route, method and status")
        self.latency = metrics.Family("lwp_http_request_duration_seconds", "histogram",
                                      "HTTP request duration by route")
        self.auth_failures = metrics.Family("lwp_auth_failures_total", "counter",
                                            "requests refused as unauthenticated (401)")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.requests.inc((("route", route), ("method", request.method),
                           ("status", str(response.status))))
        self.latency.observe((("route", route),), time.monotonic() - started)
        if response.status == 401:
            self.auth_failures.inc()
        return response

    async def scrape(self, request: web.Request, call: Call) -> web.Response:
        snapshot = await call(request, ops.HelperMetrics())
        try:
            helper = metrics.decode_snapshot(snapshot, LABEL_CHECKS)
        except (ValueError, TypeError):
            helper = []  # the frontend's own figures still help: never a 500 for this
        text = metrics.render([self.requests, self.latency, self.auth_failures, *helper])
        return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})
