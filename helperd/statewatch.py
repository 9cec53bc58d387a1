"""The helper's table of every container's state in its lxcpath, and its lifecycle events.

A state enters the table only as monitor.py's trusted path reports it: liblxc's notifications
(lxcnotify) and our own requests only say *which* container to ask again, and a slow sweep asks
about all of them. One probe per container at a time, so its events keep their order.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from helperd import lxcnotify, monitor
from helperd.eventbus import Bus
from protocol import rules

log = logging.getLogger("lwp.helperd.statewatch")

EXTERNAL = "external"  # the cause of a change no request of ours made
SWEEP_INTERVAL = 30.0  # seconds: the sweep only catches what notifications missed
SWEEP_CHUNK = 64  # containers probed per job, so hints are confirmed between chunks
PROBE_THREADS = 4  # one monitor that answers slowly (5 s at most) holds up only its own name
FLUSH_TIMEOUT = 5.0  # the list waits at most this long for hints under confirmation

Probe = Callable[[str], "str | None"]


class StateWatch:
    """{name: STATE} for one lxcpath, published as "lifecycle" events on `bus`."""

    def __init__(self, lxcpath: str, bus: Bus | None = None, *,
                 sweep_interval: float = SWEEP_INTERVAL, follow: bool = True,
                 probe: Probe | None = None, names: Callable[[], Iterable[str]] | None = None,
                 ) -> None:
        self.lxcpath = lxcpath
        self.bus = bus if bus is not None else Bus()
        self.table: dict[str, str] = {}
        self.sweep_interval = sweep_interval
        self.sweeps = 0
        self.follower = lxcnotify.Follower(lxcpath, self._on_notice, self.resync) \
            if follow else None
        self._probe = probe or self._trusted_state
        self._names = names or self._defined_names
        self._pool = ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="statewatch")
        self._pending: dict[str, float] = {}  # name -> when first hinted (monotonic)
        self._inflight: set[str] = set()
        self._causes: dict[str, str] = {}  # name -> the request id changing it now
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._resync = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.latencies: list[float] = []  # hint -> published, seconds (the last 10,000)

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fill the table (before the helper serves its first list), then follow changes."""
        await self._sweep()
        self._tasks = [asyncio.create_task(self._confirm_loop(), name="statewatch-confirm"),
                       asyncio.create_task(self._sweep_loop(), name="statewatch-sweep")]
        if self.follower is not None:
            self._tasks.append(asyncio.create_task(self.follower.run(),
                                                   name="statewatch-follow"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- reads ------------------------------------------------------------------------------

    def states(self) -> dict[str, str]:
        return dict(self.table)

    async def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Wait until every notification delivered so far is confirmed into the table."""
        if self.follower is not None:
            self.follower.drain()
        if self._pending or self._inflight:
            self._idle.clear()
            self._wake.set()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("state confirmations still under way after %g s", timeout)

    # -- changes ----------------------------------------------------------------------------

    def hint(self, name: str) -> None:
        """Ask about `name` again soon (a notification, a request of ours, a doubt)."""
        if rules.NAME_RE.fullmatch(name):
            self._pending.setdefault(name, time.monotonic())
            self._idle.clear()
            self._wake.set()

    def resync(self) -> None:
        """Notifications may have been missed: sweep everything now."""
        self._resync.set()

    @asynccontextmanager
    async def caused_by(self, name: str, cause: str) -> AsyncIterator[None]:
        """Changes to `name` seen while the block runs are `cause`'s (a request id), and the
        state it leaves is confirmed before the block's caller goes on."""
        self._causes[name] = cause
        try:
            yield
        finally:
            self.hint(name)
            await self.flush()
            if self._causes.get(name) == cause:
                del self._causes[name]

    def _on_notice(self, notice: lxcnotify.Notice) -> None:
        self.hint(notice.name)

    async def _confirm_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            for name in [n for n in self._pending if n not in self._inflight]:
                since = self._pending.pop(name)
                self._inflight.add(name)
                future = loop.run_in_executor(self._pool, self._probe, name)
                future.add_done_callback(functools.partial(self._confirmed, name, since))
            if not self._pending and not self._inflight:
                self._idle.set()

    def _confirmed(self, name: str, since: float, future: asyncio.Future[str | None]) -> None:
        self._inflight.discard(name)
        if not future.cancelled():
            exc = future.exception()
            if exc is None:
                self._apply(name, future.result())
                self._latency(time.monotonic() - since)
            else:
                log.warning("container %s: its state could not be read: %s", name, exc)
        self._wake.set()  # a hint that came meanwhile, or the idle check

    def _latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        if len(self.latencies) > 10_000:
            del self.latencies[:5_000]

    def _apply(self, name: str, new: str | None) -> None:
        old = self.table.get(name)
        if new == old:
            return
        if new is None:
            del self.table[name]
        else:
            self.table[name] = new
        self.bus.publish("lifecycle", name, {
            "container": name, "old": old, "new": new,
            "cause": self._causes.get(name, EXTERNAL)})

    # -- the sweep --------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._resync.wait(), self.sweep_interval)
            except TimeoutError:
                pass
            self._resync.clear()
            try:
                await self._sweep()
            except OSError as exc:
                log.warning("the state sweep of %s failed: %s", self.lxcpath, exc)

    async def _sweep(self) -> None:
        """Ask about every container there is and every one in the table, a chunk at a time;
        names hinted meanwhile are left to their own (newer) confirmation."""
        loop = asyncio.get_running_loop()
        names = sorted(set(await loop.run_in_executor(self._pool, self._names)) | set(self.table))
        for at in range(0, len(names), SWEEP_CHUNK):
            chunk = [n for n in names[at:at + SWEEP_CHUNK]
                     if n not in self._pending and n not in self._inflight]
            self._inflight.update(chunk)
            try:
                found = await loop.run_in_executor(self._pool, self._probe_all, chunk)
            finally:
                self._inflight.difference_update(chunk)
            for name, state in found.items():
                if name not in self._pending:
                    self._apply(name, state)
            self._wake.set()
        self.sweeps += 1

    def _probe_all(self, names: list[str]) -> dict[str, str | None]:
        return {name: self._probe(name) for name in names}

    # -- liblxc, through the trusted path ---------------------------------------------------

    def _defined_names(self) -> list[str]:
        """Names of containers with a config, as liblxc's list_defined_containers finds them;
        names no client could address are not the API's."""
        with os.scandir(self.lxcpath) as entries:
            return [e.name for e in entries
                    if rules.NAME_RE.fullmatch(e.name)
                    and os.path.isfile(os.path.join(self.lxcpath, e.name, "config"))]

    def _trusted_state(self, name: str) -> str | None:
        """The monitor's state if root answers on its socket; None once the container is
        gone (stopped and without a config)."""
        try:
            state = monitor.state(self.lxcpath, name)
        except monitor.Untrusted:
            state = "STOPPED"  # monitor.py has logged who holds the name
        if state == "STOPPED" and not os.path.isfile(os.path.join(self.lxcpath, name, "config")):
            return None
        return STATES.get(state, state)


# One shared string per state, so a table of many entries holds only its names.
STATES = {s: s for s in monitor.STATES}
