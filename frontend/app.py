"""The map of the frontend service: configuration, collaborators, routes and middlewares."""
from __future__ import annotations

import logging

from aiohttp import web

from frontend import openapi
from frontend.api import LIMITED_TOKENS, Api
from frontend.auth import TokenReader
from frontend.config import FrontendConfig
from frontend.events import Streams
from frontend.metrics import Metrics
from frontend.pages import Pages
from frontend.ratelimit import AuthFailures, FailureLimiter, LogLimiter
from protocol.client import HelperClient
from protocol.limits import Buckets


def make_app(cfg: FrontendConfig) -> web.Application:
    client = HelperClient(cfg.socket)
    failures = AuthFailures(
        FailureLimiter(cfg.auth_failures_burst, cfg.auth_failures_per_minute,
                       cfg.auth_limit_clients),
        LogLimiter(logging.getLogger("lwp.frontend.auth"), cfg.auth_log_per_minute))
    streams = Streams(cfg.socket)
    meter = Metrics()
    api = Api(client, TokenReader(cfg.state_dir), failures, cfg.trusted_proxies,
              Buckets(cfg.token_requests_burst, cfg.token_requests_per_second, LIMITED_TOKENS),
              openapi.document(cfg.token_min_length), streams, meter,
              base_path=cfg.base_path, origins=cfg.origins)
    # Errors wrap authentication, which wraps routing: an anonymous client gets 401 on
    # every /api/ path and method, before a 404 or 405 could tell it anything. Metrics see
    # every response as the client gets it.
    app = web.Application(middlewares=[meter.middleware, api.errors, api.authenticate],
                          client_max_size=cfg.max_body)
    app.add_routes(api.routes())
    app.add_routes(Pages().routes())  # the web panel: static files, no authentication

    async def close_client(_app: web.Application) -> None:
        await client.close()

    app.on_shutdown.append(streams.shutdown)
    app.on_cleanup.append(close_client)
    return app
