"""The state table follows liblxc's own notifications on real containers, believes only root,
confirms every hint, and feeds every subscriber every change in order (or drops it)."""
from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import stat
import statistics
import struct
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from helperd import lxcnotify, monitor
from helperd.eventbus import Bus, Dropped, Event
from helperd.statewatch import StateWatch
from tests.conftest import World, as_user, new_name

LXC_MONITORD = "/usr/libexec/lxc/lxc-monitord"
POWEROFF_TRIGGER = "poweroff-now"
# busybox init runs this once: it powers the container off from inside once the host leaves
# the trigger file in the rootfs (no lxc-attach needed, nothing from outside kills init).
INITTAB_LINE = (f"::once:/bin/sh -c 'while [ ! -e /{POWEROFF_TRIGGER} ]; do usleep 20000; "
                "done; exec /bin/poweroff'\n")


# -- helpers -----------------------------------------------------------------------------------

def create(world: World, name: str | None = None) -> str:
    import lxc  # the harness makes its containers; product code never imports lxc here
    name = name or new_name()
    c = lxc.Container(name, world.lxcpath)
    c.load_config(os.path.join(world.base, "default.conf"))
    assert c.create("busybox", 0, {}, "dir"), "busybox create failed"
    with open(os.path.join(world.lxcpath, name, "rootfs", "etc", "inittab"), "a") as f:
        f.write(INITTAB_LINE)
    return name


def clone(world: World, source: str) -> str:
    import lxc
    name = new_name()
    assert lxc.Container(source, world.lxcpath).clone(name, config_path=world.lxcpath), name
    return name


def lxc_start(world: World, name: str) -> subprocess.Popen[bytes]:
    # An outside actor, as an admin on the host would be: not the helper, not its library.
    return subprocess.Popen(["lxc-start", "-P", world.lxcpath, "-n", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def lxc_stop(world: World, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["lxc-stop", "-k", "-P", world.lxcpath, "-n", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Called in a thread from async tests: the event loop must go on reading notifications."""
    for p in procs:
        assert p.wait(30) == 0, p.args


async def next_where(sub: Any, container: str, new: str, timeout: float = 10) -> Event:
    """The next lifecycle event of `container` reaching `new`, skipping its others."""
    async def scan() -> Event:
        while True:
            event = await sub.get()
            if event.container == container and event.data["new"] == new:
                return event
    return await asyncio.wait_for(scan(), timeout)


async def known(watch: StateWatch, *names: str) -> None:
    """Made outside the watch (which only the sweep would notice): hinted, as a create by the
    API hints its new container."""
    for name in names:
        watch.hint(name)
    await watch.flush()
    assert all(watch.table[n] == "STOPPED" for n in names)


def run_dirs(lxcpath: str) -> str:
    return f"{lxcnotify.RUNDIR}/lxc{lxcpath}"


@pytest.fixture
def cleanup_run(fresh_world: World) -> Iterator[World]:
    """The fresh world, and afterwards the /run/lxc directories made for its lxcpath."""
    yield fresh_world
    # Only the world's own lxcpath's directory: /run/lxc/tmp/lwp-test-xxx and below.
    shutil.rmtree(f"{lxcnotify.RUNDIR}/lxc{fresh_world.base}", ignore_errors=True)


@pytest.fixture
async def watch(cleanup_run: World) -> AsyncIterator[StateWatch]:
    w = StateWatch(cleanup_run.lxcpath)
    await w.start()
    await wait_for_source(w, "fifo")
    try:
        yield w
    finally:
        await w.stop()


async def wait_for_source(w: StateWatch, source: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    assert w.follower is not None
    while w.follower.source != source:
        assert time.monotonic() < deadline, f"source {w.follower.source}, not {source}"
        await asyncio.sleep(0.02)


# -- the message format and the bus (no containers) ----------------------------------------------

def msg(name: str, value: int, type_: int = 0) -> bytes:
    return lxcnotify.MSG.pack(type_, name.encode(), value)


def test_parse_returns_whole_messages_and_keeps_the_rest() -> None:
    data = msg("web", 2) + msg("db", 0, 2) + msg("x", 1)[:100]
    notices, rest, refused = lxcnotify.parse(data)
    assert [(n.name, n.kind, n.value) for n in notices] == [("web", "state", 2), ("db", "exit", 0)]
    assert rest == msg("x", 1)[:100] and refused == 0
    assert lxcnotify.MSG.size == 264  # sizeof(struct lxc_msg) in liblxc 5.0.2


def test_parse_refuses_unaddressable_names_unknown_types_and_states() -> None:
    data = msg("../etc", 2) + msg("web", 9) + msg("web", 2, type_=7) + msg("-n", 2) + msg("ok", 6)
    notices, rest, refused = lxcnotify.parse(data)
    assert [n.name for n in notices] == ["ok"] and refused == 4 and rest == b""


async def test_a_slow_subscriber_is_dropped_and_the_others_get_everything() -> None:
    bus = Bus(queue_limit=10)
    slow, fast = bus.subscribe(), bus.subscribe()
    got: list[int] = []
    for i in range(25):
        bus.publish("lifecycle", "c", {"i": i})
        got.append((await fast.get()).id)  # the fast one keeps up
    assert got == list(range(1, 26))
    assert bus.subscribers == 1 and bus.dropped == 1
    with pytest.raises(Dropped) as ended:
        await slow.get()
    assert ended.value.reason == "slow"


async def test_a_publish_never_waits_for_subscribers() -> None:
    bus = Bus(queue_limit=1000)
    subs = [bus.subscribe() for _ in range(100)]
    started = time.perf_counter()
    for i in range(2000):  # twice what any queue holds: every subscriber is dropped midway
        bus.publish("lifecycle", "c", {"i": i})
    assert time.perf_counter() - started < 1.0
    assert bus.subscribers == 0 and all(s.ended == "slow" and s.pending() == 0 for s in subs)


def test_replay_gives_what_was_missed_or_none_for_a_reset() -> None:
    bus = Bus(history=5)
    for i in range(8):
        bus.publish("lifecycle", "c", {"i": i})
    assert [e.id for e in bus.since(5) or []] == [6, 7, 8]
    assert bus.since(3) == [e for e in bus.since(3) or []] and len(bus.since(3) or []) == 5
    assert bus.since(2) is None  # event 3 is no longer kept: the client must start over
    assert bus.since(99) is None  # an id this run never gave (the helper restarted)
    assert bus.since(8) == []


async def test_the_table_at_ten_thousand_entries_is_small() -> None:
    names = [f"container-{i:05d}" for i in range(10_000)]
    states = ("RUNNING", "STOPPED")
    names_size = sum(len(n) + 49 for n in names)  # the names themselves (str header 49 B)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    w = StateWatch("/nonexistent", follow=False, names=lambda: names,
                   probe=lambda n: states[int(n[-1]) % 2])
    await w.start()
    await w.stop()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    table = sum(s.size_diff for s in after.compare_to(before, "filename")
                if s.size_diff > 0)
    assert len(w.table) == 10_000
    print(f"\nstate table at N=10,000: {table / 1024:.0f} KiB allocated in all "
          f"(names alone {names_size / 1024:.0f} KiB, kept by the caller's list too)")
    assert table < 4 * 1024 * 1024


# -- real containers -----------------------------------------------------------------------------

@pytest.mark.lxc
async def test_poweroff_from_inside_is_seen_within_a_second(cleanup_run: World,
                                                          watch: StateWatch) -> None:
    world = cleanup_run
    name = create(world)
    await known(watch, name)
    sub = watch.bus.subscribe()
    await asyncio.to_thread(wait_all, [lxc_start(world, name)])
    await next_where(sub, name, "RUNNING")
    pid = monitor.init_pid(world.lxcpath, name)
    pidfd = os.pidfd_open(pid)  # the container's init, to know when it has really gone
    exited = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_reader(pidfd, lambda: exited.done() or exited.set_result(
        time.monotonic()))
    trigger = os.path.join(world.lxcpath, name, "rootfs", POWEROFF_TRIGGER)
    with open(trigger, "w"):
        pass
    asked = time.monotonic()
    try:
        event = await next_where(sub, name, "STOPPED", timeout=10)
        seen = time.monotonic()
        gone = await asyncio.wait_for(exited, 1)
    finally:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
    assert event.data["cause"] == "external"
    assert watch.table[name] == "STOPPED"
    # From the moment init exited: liblxc's teardown, its notification and our confirmation.
    # (busybox's own poweroff takes a second and more before that: it waits 1 s after TERM.)
    assert seen - gone < 1.0, f"the poweroff was seen {seen - gone:.3f} s after init exited"
    print(f"\npoweroff seen {(seen - gone) * 1000:.0f} ms after init exited "
          f"({(seen - asked) * 1000:.0f} ms after the trigger)")


@pytest.mark.lxc
async def test_lxc_start_outside_the_helper_is_seen_and_in_the_table_at_once(
        cleanup_run: World, watch: StateWatch) -> None:
    world = cleanup_run
    name = create(world)
    await known(watch, name)
    sub = watch.bus.subscribe()
    await asyncio.to_thread(wait_all, [lxc_start(world, name)])
    await watch.flush()  # what the list does: every notification delivered is in the table
    assert watch.table[name] == "RUNNING"
    event = await next_where(sub, name, "RUNNING", timeout=1)
    assert event.data["old"] in ("STOPPED", "STARTING") and event.data["cause"] == "external"
    await asyncio.to_thread(wait_all, [lxc_stop(world, name)])
    await watch.flush()
    assert watch.table[name] == "STOPPED"


@pytest.mark.lxc
async def test_fifty_concurrent_changes_reach_a_hundred_subscribers_in_order(
        cleanup_run: World, watch: StateWatch) -> None:
    world = cleanup_run
    first = create(world)
    names = [first] + [clone(world, first) for _ in range(24)]
    await known(watch, *names)
    subs = [watch.bus.subscribe() for _ in range(100)]
    asked = time.monotonic()
    watch.latencies.clear()
    await asyncio.to_thread(wait_all, [lxc_start(world, n) for n in names])  # 25 at once
    await asyncio.to_thread(wait_all, [lxc_stop(world, n) for n in names])  # 25 more
    await watch.flush()

    async def collect(sub: Any) -> list[Event]:
        got: list[Event] = []
        stopped: set[str] = set()
        while stopped != set(names):
            try:
                event = await asyncio.wait_for(sub.get(), 10)
            except TimeoutError:
                raise AssertionError(f"{len(got)} events; never stopped: "
                                     f"{set(names) - stopped}; table {watch.table}; "
                                     f"{[(e.container, e.data) for e in got]}") from None
            got.append(event)
            if event.data["new"] == "STOPPED" and event.data["old"] != "STOPPED":
                stopped.add(event.container or "")
        return got

    received = await asyncio.gather(*(collect(s) for s in subs))
    spent = time.monotonic() - asked
    reference = [e.id for e in received[0]]
    for got in received:
        assert [e.id for e in got] == reference  # every subscriber, every event, one order
    for name in names:
        chain = [e.data for e in received[0] if e.container == name]
        # In order per container: each change starts where the one before it ended.
        assert chain[0]["old"] == "STOPPED" and chain[-1]["new"] == "STOPPED"
        assert all(a["new"] == b["old"] for a, b in zip(chain, chain[1:], strict=False))
        assert "RUNNING" in [c["new"] for c in chain]
    assert len(reference) >= 50 and watch.bus.dropped == 0
    lat = sorted(watch.latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"\n{len(reference)} events to 100 subscribers in {spent:.2f} s; notification to "
          f"published: median {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
          f"({len(lat)} confirmations)")


@pytest.mark.lxc
async def test_the_sweep_catches_what_no_notification_told(cleanup_run: World) -> None:
    world = cleanup_run
    name = create(world)
    w = StateWatch(world.lxcpath, follow=False, sweep_interval=0.2)  # no notifications at all
    await w.start()
    try:
        assert w.table == {name: "STOPPED"}
        sub = w.bus.subscribe()
        await asyncio.to_thread(wait_all, [lxc_start(world, name)])
        event = await next_where(sub, name, "RUNNING", timeout=5)
        assert event.data["cause"] == "external"
        await asyncio.to_thread(wait_all, [lxc_stop(world, name)])
        await next_where(sub, name, "STOPPED", timeout=5)
        import lxc
        assert lxc.Container(name, world.lxcpath).destroy()
        gone = await asyncio.wait_for(sub.get(), 5)
        assert (gone.container, gone.data["new"]) == (name, None) and name not in w.table
    finally:
        await w.stop()


@pytest.mark.lxc
async def test_a_change_our_request_makes_carries_its_request_id(cleanup_run: World,
                                                                 watch: StateWatch) -> None:
    world = cleanup_run
    name = create(world)
    await known(watch, name)
    sub = watch.bus.subscribe()
    async with watch.caused_by(name, "req-42"):
        await asyncio.to_thread(wait_all, [lxc_start(world, name)])
    assert watch.table[name] == "RUNNING"
    event = await next_where(sub, name, "RUNNING", timeout=1)
    assert event.data["cause"] == "req-42"
    await asyncio.to_thread(wait_all, [lxc_stop(world, name)])
    event = await next_where(sub, name, "STOPPED")
    assert event.data["cause"] == "external"


@pytest.mark.lxc
async def test_lxc_monitord_is_followed_while_it_holds_the_fifo_then_the_fifo_itself(
        cleanup_run: World) -> None:
    world = cleanup_run
    name = create(world)
    monitord = subprocess.Popen([LXC_MONITORD, "--daemon", world.lxcpath],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w = StateWatch(world.lxcpath)
    try:
        address = lxcnotify.monitord_address(world.lxcpath)
        deadline = time.monotonic() + 10
        while not _listening(address):  # our address is liblxc's: lxc-monitord listens there
            assert time.monotonic() < deadline and monitord.poll() is None
            await asyncio.sleep(0.02)
        await w.start()
        await wait_for_source(w, "monitord")
        sub = w.bus.subscribe()
        await asyncio.to_thread(wait_all, [lxc_start(world, name)])
        await next_where(sub, name, "RUNNING", timeout=2)
        monitord.terminate()
        monitord.wait(10)
        await wait_for_source(w, "fifo")  # lxc-monitord gone: we read the FIFO ourselves
        await asyncio.to_thread(wait_all, [lxc_stop(world, name)])
        await next_where(sub, name, "STOPPED", timeout=2)
    finally:
        if monitord.poll() is None:
            monitord.kill()
            monitord.wait()
        await w.stop()


def _listening(address: bytes | None) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(address or b"")
        except OSError:
            return False
    return True


# -- attacks -------------------------------------------------------------------------------------

@pytest.mark.lxc
@pytest.mark.security
async def test_a_notification_is_a_hint_a_forged_state_is_never_published(
        cleanup_run: World, watch: StateWatch) -> None:
    world = cleanup_run
    name = create(world)
    await known(watch, name)
    sub = watch.bus.subscribe()
    # Even root's word is checked: a message saying "RUNNING" for a stopped container.
    fd = os.open(lxcnotify.fifo_path(world.lxcpath), os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, msg(name, 2) * 3)
    os.close(fd)
    await asyncio.sleep(0.2)
    await watch.flush()
    assert watch.follower is not None and watch.follower.received == 3
    assert watch.table[name] == "STOPPED" and sub.pending() == 0


@pytest.mark.lxc
@pytest.mark.security
async def test_only_root_can_write_a_notification(cleanup_run: World, watch: StateWatch) -> None:
    path = lxcnotify.fifo_path(cleanup_run.lxcpath)
    st = os.stat(path)
    assert stat.S_ISFIFO(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600

    def forge() -> bytes:
        try:
            os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except PermissionError:
            return b"refused"
        return b"opened"
    assert as_user("nobody", forge) == b"refused"


@pytest.mark.security
def test_a_fifo_others_could_write_is_not_read(cleanup_run: World) -> None:
    lxcpath = cleanup_run.lxcpath
    lxcnotify._make_dirs(lxcpath)
    os.mknod(lxcnotify.fifo_path(lxcpath), stat.S_IFIFO | 0o600)
    os.chmod(lxcnotify.fifo_path(lxcpath), 0o622)  # as if someone had loosened it
    with pytest.raises(lxcnotify.Refused):
        lxcnotify.open_fifo(lxcpath)
    os.unlink(lxcnotify.fifo_path(lxcpath))
    os.chmod(run_dirs(lxcpath), 0o777)  # a directory on the way anyone could write
    with pytest.raises(lxcnotify.Refused):
        lxcnotify.open_fifo(lxcpath)


@pytest.mark.lxc
@pytest.mark.security
async def test_a_squatter_on_lxc_monitords_socket_is_not_followed(cleanup_run: World) -> None:
    """While something holds the FIFO (as lxc-monitord does, starting up), any local user can
    bind lxc-monitord's abstract name and feed whoever connects forged notifications."""
    world = cleanup_run
    name = create(world)
    lxcnotify._make_dirs(world.lxcpath)
    path = lxcnotify.fifo_path(world.lxcpath)
    os.mknod(path, stat.S_IFIFO | 0o600)
    holder_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # root's lxc-monitord, as it locks
    fcntl.fcntl(holder_fd, lxcnotify.F_OFD_SETLK,
                lxcnotify.FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    address = lxcnotify.monitord_address(world.lxcpath)
    ready_r, ready_w = os.pipe()
    squatter = os.fork()
    if squatter == 0:  # nobody: binds the name and tells every client the container runs
        try:
            from tests.conftest import become
            become("nobody")
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(address or b"")
                s.listen(8)
                os.write(ready_w, b"x")
                while True:
                    client, _ = s.accept()
                    client.sendall(msg(name, 2) * 10)
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    w = StateWatch(world.lxcpath, sweep_interval=3600)
    try:
        await w.start()
        sub = w.bus.subscribe()
        await asyncio.sleep(0.5)
        assert w.follower is not None
        assert w.follower.source == "none" and w.follower.received == 0
        assert w.table[name] == "STOPPED" and sub.pending() == 0
    finally:
        await w.stop()
        os.kill(squatter, 9)
        os.waitpid(squatter, 0)
        os.close(holder_fd)
        os.close(ready_r)
        os.close(ready_w)


def test_flock_layout_is_the_kernels() -> None:
    # struct flock on x86_64 and other LP64 ABIs is 32 bytes: a wrong layout would lock
    # nothing, and the helper would read the FIFO beside lxc-monitord.
    assert lxcnotify.FLOCK.size == 32
    assert struct.calcsize("@hhqqi") <= lxcnotify.FLOCK.size


async def test_a_stopped_watch_leaves_no_fifo_and_no_directory_of_its_own(
        cleanup_run: World) -> None:
    w = StateWatch(cleanup_run.lxcpath)
    await w.start()
    await wait_for_source(w, "fifo")
    assert os.path.exists(lxcnotify.fifo_path(cleanup_run.lxcpath))
    await w.stop()
    assert not os.path.exists(lxcnotify.fifo_path(cleanup_run.lxcpath))
    assert not os.path.exists(run_dirs(cleanup_run.base))  # /run/lxc/tmp/lwp-test-…
