"""Rate limits for hostile input: failed authentications per client, and log lines per minute.

Both are bounded in memory whatever an attacker sends: the limiter forgets the least recently
seen client once it holds `max_clients`, and the log limiter keeps two numbers.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# IPv6 clients are limited per /64: one subscriber usually holds a whole /64, so limiting
# single addresses would hand an attacker 2^64 fresh budgets.
IPV6_PREFIX = 64


@functools.lru_cache(maxsize=1024)  # called on every request with a resolved address
def client_key(address: str) -> str:
    """The unit a limit applies to: an IPv4 address, or the /64 an IPv6 address is in."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # e.g. "unknown" or a Unix socket: one bucket for all of them
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """A token bucket per client: each failure takes one; empty means refused until refilled.

    A refused client is refused before its credential is even looked at, so a correct guess
    made while limited is worth nothing. Clients never share a bucket, so one client's
    failures never limit another.
    """

    def __init__(self, burst: int, per_minute: float, max_clients: int) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may try now."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = self._refill(bucket, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def failed(self, key: str, now: float) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        self._buckets.move_to_end(key)
        bucket.tokens = max(0.0, self._refill(bucket, now) - 1.0)
        bucket.updated = now

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)

    def _make_room(self) -> None:
        # Least recently failed first: forgetting a client only ever gives it a fresh budget,
        # never takes one from anybody else.
        while len(self._buckets) >= self.max_clients:
            self._buckets.popitem(last=False)


class LogLimiter:
    """At most `per_minute` lines a minute through `log`; the rest are counted, then summed up."""

    WINDOW = 60.0

    def __init__(self, log: logging.Logger, per_minute: int) -> None:
        self.log = log
        self.per_minute = per_minute
        self._window_start = -math.inf
        self._sent = 0
        self._dropped = 0

    def warning(self, now: float, msg: str, *args: object) -> None:
        if now - self._window_start >= self.WINDOW:
            if self._dropped:
                self.log.warning("%d more such lines were not logged in the last %.0f s",
                                 self._dropped, now - self._window_start)
            self._window_start, self._sent, self._dropped = now, 0, 0
        if self._sent < self.per_minute:
            self._sent += 1
            self.log.warning(msg, *args)
        else:
            self._dropped += 1


class AuthFailures:
    """The frontend's answer to failed authentication: a limit per client and a bounded log.

    A log line names the client, the reason and the request line (token path segment and
    query redacted by the caller) — never anything of the token itself.
    """

    def __init__(self, limiter: FailureLimiter, log: LogLimiter,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = limiter
        self.log = log
        self.clock = clock

    def retry_after(self, client: str) -> float:
        return self.limiter.retry_after(client_key(client), self.clock())

    def failed(self, client: str, reason: str, target: str) -> None:
        now = self.clock()
        self.limiter.failed(client_key(client), now)
        self.log.warning(now, "authentication failed: client=%s reason=%s request=%r",
                         client, reason, target)

    def refused(self, client: str, target: str, retry_after: float) -> None:
        self.log.warning(self.clock(), "authentication refused: client=%s reason=rate-limited "
                         "retry_after=%.0fs request=%r", client, retry_after, target)
