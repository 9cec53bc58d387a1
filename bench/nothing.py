"""A do-nothing aiohttp server: the ceiling the chain's fixed cost is compared with.

Same aiohttp, same event loop, same JSON response helper as the frontend; no middleware, no
token, no helper, no access log. `python3 -m bench.nothing PORT`
"""
from __future__ import annotations

import sys

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> int:
    app = web.Application()
    app.add_routes([web.get("/{tail:.*}", ok)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
