"""The helper's event bus: numbered events, a bounded replay history, bounded subscriber queues.

Publishing never waits and never fails: a subscriber whose queue is full is dropped (told why on
its next read) rather than slowing the publisher or anyone else. Ids only grow within one run.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

HISTORY = 4096  # events kept for replay (Last-Event-ID); older ids get an explicit reset
QUEUE_LIMIT = 1024  # events one subscriber may have unread before it is dropped as too slow


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str  # "lifecycle", "operation", "audit", ...
    container: str | None  # the container it concerns, for filters; None: none in particular
    data: Mapping[str, object]
    at: float = field(default_factory=time.time)


class Dropped(Exception):
    """The subscription has ended: "slow" (its queue overflowed) or "closed"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"subscription ended: {reason}")
        self.reason = reason


Want = Callable[[Event], bool]


class Subscription:
    """One subscriber's queue; read with `await sub.get()` or `async for`."""

    __slots__ = ("_bus", "_items", "_limit", "_want", "_wake", "ended")

    def __init__(self, bus: Bus, limit: int, want: Want | None) -> None:
        self._bus, self._limit, self._want = bus, limit, want
        self._items: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.ended: str | None = None

    def _offer(self, event: Event) -> bool:
        """Queue `event` if this subscriber wants it; False when the queue is full."""
        if self._want is not None and not self._want(event):
            return True
        if len(self._items) >= self._limit:
            return False
        self._items.append(event)
        self._wake.set()
        return True

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._items.clear()  # a dropped subscriber holds no memory while it dawdles
            self._wake.set()

    async def get(self) -> Event:
        while not self._items:
            if self.ended is not None:
                raise Dropped(self.ended)
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    def pending(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._bus._forget(self)
        self._end("closed")

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.get()
        except Dropped:
            raise StopAsyncIteration from None


class Bus:
    """Events in one order for every subscriber; the last HISTORY of them kept for replay."""

    def __init__(self, history: int = HISTORY, queue_limit: int = QUEUE_LIMIT) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._queue_limit = queue_limit
        self.last_id = 0
        self.dropped = 0  # subscribers dropped as too slow, ever (a metric)

    def publish(self, type_: str, container: str | None, data: Mapping[str, object]) -> Event:
        self.last_id += 1
        event = Event(self.last_id, type_, container, data)
        self._history.append(event)
        for sub in [s for s in self._subscribers if not s._offer(event)]:
            self._subscribers.discard(sub)
            self.dropped += 1
            sub._end("slow")
        return event

    def since(self, after: int) -> list[Event] | None:
        """The events after id `after`, or None when some of them are no longer kept (or the
        id was never given in this run): the caller must tell its client to start over."""
        if after > self.last_id:
            return None
        first = self._history[0].id if self._history else self.last_id + 1
        if after + 1 < first:
            return None
        return [e for e in self._history if e.id > after]

    def subscribe(self, want: Want | None = None, limit: int | None = None) -> Subscription:
        sub = Subscription(self, limit or self._queue_limit, want)
        self._subscribers.add(sub)
        return sub

    def _forget(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
