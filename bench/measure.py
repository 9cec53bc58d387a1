"""Timing the API side: one keep-alive HTTP connection, the helper's socket, and the statistics.

Every API sample is the wall time of one whole request as a client sees it (send, wait, read
the body); any status other than the expected one fails the run, so a benchmark of errors
cannot pass for a fast one.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import math
import statistics
import time
import uuid
from typing import Any

from protocol import ops
from protocol.client import HelperClient

IDLE_RECONNECT = 3.0  # seconds


class Http:
    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"Private-Token": token}
        self.last = 0.0

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> float:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if time.monotonic() - self.last > IDLE_RECONNECT:
            # The frontend closes a connection idle for its header_timeout (10 s): open a
            # new one here, outside the timing, rather than meet a closed one.
            self.conn.close()
            self.conn.connect()
        t0 = time.perf_counter()
        self.conn.request(method, path, data, headers)
        response = self.conn.getresponse()
        text = response.read()
        elapsed = time.perf_counter() - t0
        self.last = time.monotonic()
        if response.status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} (expected {expect}): "
                               f"{text[:300]!r}")
        return elapsed

    def times(self, reps: int, method: str, path: str, body: Any = None,
              expect: int = 200) -> list[float]:
        return [self.call(method, path, body, expect) for _ in range(reps)]

    def close(self) -> None:
        self.conn.close()


def socket_times(socket_path: str, token: str, request: ops.Request, reps: int) -> list[float]:
    """The same request straight to the helper's socket: the chain without HTTP and frontend."""
    async def go() -> list[float]:
        client = HelperClient(socket_path)
        out = []
        try:
            for _ in range(reps):
                envelope = ops.Envelope(uuid.uuid4().hex, token, "bench", request)
                t0 = time.perf_counter()
                await client.call(envelope)
                out.append(time.perf_counter() - t0)
        finally:
            await client.close()
        return out
    return asyncio.run(go())


def summary(samples: list[float]) -> dict[str, float]:
    """Median and p99 (nearest rank) in milliseconds, with the sample count."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000,
            "n": len(ordered)}
