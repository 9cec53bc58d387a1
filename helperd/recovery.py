"""At helper start: close every operation the last helper left in flight as `interrupted`.

Nothing is run again. The isolated child's process group (a template may still be running)
is ended first, then a create or clone is left fully there or fully gone, never half-made, and
a container a cut-short freeze left FREEZING is thawed.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

from helperd.audit import AuditWriter, Pending, proc_stat, utc_now
from helperd.containers import Containers
from helperd.isolate import run_isolated
from protocol import ops, rules
from protocol.errors import LwpError

log = logging.getLogger("lwp.helperd.audit")
ORPHAN_GRACE = 5.0  # seconds to wait for killed orphans to be gone
INTERRUPTED = "the helper stopped before the operation finished; it was not run again"
# liblxc's marker of a create in progress: present after a create, the container is half-made.
PARTIAL = "partial"


def _group_members(pgid: int, born: int | None) -> list[int]:
    """Live processes in the child's group that started no earlier than the child did."""
    members = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        stat = proc_stat(pid)
        if stat is None or stat[0] != pgid or stat[2] in ("Z", "X"):
            continue
        if born is None or stat[1] >= born:
            members.append(int(pid))
    return members


def _kill(pid: int, pgid: int, born: int | None) -> bool:
    """SIGKILL one process through a pidfd, after checking it is still the one we saw."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        stat = proc_stat(pid)  # the pidfd pins the process: re-check it is the same one
        if stat is None or stat[0] != pgid or (born is not None and stat[1] < born):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def end_orphans(child: list[int | None] | None) -> int:
    """Kill what is left of an isolated child's process group; return how many were killed."""
    if not child or child[0] is None:
        return 0
    pgid, born = int(child[0]), child[1]
    killed: set[int] = set()
    deadline = time.monotonic() + ORPHAN_GRACE
    while True:
        members = _group_members(pgid, born)
        if not members:
            return len(killed)
        if time.monotonic() > deadline:
            log.error("audit recovery: processes %s of group %d survive SIGKILL", members, pgid)
            return len(killed)
        killed.update(pid for pid in members if _kill(pid, pgid, born))
        time.sleep(0.05)


def _complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config")) \
        and not os.path.lexists(os.path.join(path, PARTIAL))


async def _destroy(containers: Containers, name: str, path: str) -> str:
    try:
        await run_isolated(lambda: containers.destroy_container(ops.DestroyContainer(name, True)),
                           60)
    except LwpError as exc:  # e.g. not even defined yet: the directory is all there is
        log.info("audit recovery: liblxc destroy of %s: %s", name, exc.message)
    if os.path.lexists(path):
        shutil.rmtree(path)
    return "destroyed"


async def _settle_freeze(containers: Containers, name: str) -> str:
    """A freeze cut short can leave the container FREEZING for good: thaw it, as a missed
    deadline does. A finished freeze (FROZEN) is kept, as a finished create is."""
    state = containers.state_of(name)
    if state != "FREEZING":
        return f"untouched: {state.lower()}"
    await run_isolated(lambda: containers.thaw_after_timeout(name), 60)
    return "thawed: the freeze was cut short"


async def settle_container(entry: dict[str, Any], containers: Containers, lxcpath: str) -> str:
    """Keep a complete container or destroy a half-made one; thaw a half-frozen one; say
    which, and why."""
    start = entry["start"]
    if start.get("op") == "freeze_container":
        return await _settle_freeze(containers, rules.container_name(str(start.get("container"))))
    if start.get("op") not in ("create_container", "clone_container"):
        return "untouched"
    name = rules.container_name(str(start.get("container")))
    path = os.path.join(lxcpath, name)
    preexisting = entry.get("meta", {}).get("preexisting")
    if preexisting:
        return "kept: it existed before the request"
    if not os.path.lexists(path):
        return "absent: nothing was made"
    # A clone may have written its config before its rootfs was fully copied: unless we know
    # the name was free before, only liblxc's create marker tells complete from half-made.
    if start["op"] == "clone_container" and preexisting is False:
        return await _destroy(containers, name, path) + ": a clone cut short cannot be trusted"
    if _complete(path):
        return "kept: complete"
    return await _destroy(containers, name, path) + ": incomplete"


async def recover(writer: AuditWriter, in_flight: list[dict[str, Any]],
                  containers: Containers, lxcpath: str,
                  orphans: Callable[[list[int | None] | None], int] = end_orphans) -> int:
    """Write the `interrupted` end of each operation left in flight; return how many."""
    for entry in sorted(in_flight, key=lambda e: int(e["start"].get("seq", 0))):
        killed = orphans(entry.get("child"))
        try:
            decision = await settle_container(entry, containers, lxcpath)
        except (OSError, LwpError) as exc:
            decision = f"could not be settled: {exc}"
            log.error("audit recovery: %s", decision)
        record = {k: v for k, v in entry["start"].items() if k not in ("seq", "chain")}
        record.update(ts=utc_now(), phase="end", outcome="interrupted", error=INTERRUPTED,
                      duration_ms=None,
                      recovery={"orphans_killed": killed, "container": decision,
                                "start_seq": entry["start"].get("seq")})
        await writer.write(Pending(record, closes=entry["key"]))
        log.warning("audit recovery: %s %s (request %s) interrupted; container %s",
                    record.get("op"), record.get("container"), record.get("request_id"),
                    decision)
    return len(in_flight)
