"""Token buckets keyed by a string or number, bounded in memory: sans-I/O, the caller's clock.

Both daemons limit requests per token id with this (the frontend before forwarding, the helper
as the authority); forgetting a key only ever gives it a fresh budget, never takes one away.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class Buckets:
    """`burst` requests at once, then `per_second`; at most `max_keys` keys remembered."""

    def __init__(self, burst: int, per_second: float, max_keys: int) -> None:
        self.burst = float(burst)
        self.rate = per_second
        self.max_keys = max_keys
        self._tokens: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable, now: float) -> float:
        """Take one request's worth: 0.0 if granted, else the seconds until one would be."""
        tokens, updated = self._tokens.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if key not in self._tokens:
            while len(self._tokens) >= self.max_keys:
                self._tokens.popitem(last=False)  # the least recently seen
        self._tokens[key] = (tokens - 1.0 if tokens >= 1.0 else tokens, now)
        self._tokens.move_to_end(key)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._tokens)
