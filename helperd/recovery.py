"""Crash recovery at helper start: settle the containers the last helper's changes left.

Nothing is run again. The isolated child's process group (a template may still be running) is
ended first; then, as each op's row in policy.RULES says, a build is left fully there or fully
gone (through Containers.remove_remains, as a failed create), a change left stuck is undone, and
the operation's record is closed as `interrupted`.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from helperd import policy
from helperd.audit import AuditWriter, Pending, proc_stat, utc_now
from helperd.containers import Containers
from helperd.isolate import run_isolated
from helperd.policy import Rule
from protocol import rules
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


async def _remove(containers: Containers, name: str, path: str) -> str:
    """Remove a half-made container through the code a failed create uses."""
    try:
        await run_isolated(functools.partial(containers.remove_remains, name), 60)
    except LwpError as exc:
        log.info("audit recovery: removing %s: %s", name, exc.message)
    if os.path.lexists(path):
        raise OSError(f"{path} is still there after its remains were removed")
    return "destroyed"


async def _unstick(rule: Rule, containers: Containers, name: str) -> str:
    """A change cut short can leave the container in its row's `stuck_state` for good (a
    freeze: FREEZING): undo it, as a missed deadline does. A finished one is kept."""
    state = containers.state_of(name)
    if state != rule.stuck_state or rule.on_timeout is None:
        return f"untouched: {state.lower()}"
    await run_isolated(functools.partial(rule.on_timeout, containers, name), 60)
    return rule.undone


async def settle_container(entry: dict[str, Any], containers: Containers, lxcpath: str) -> str:
    """As the op's row says: keep a complete build or remove a half-made one; undo a change
    left stuck; leave the rest. Say which, and why."""
    start = entry["start"]
    rule = policy.RULES.get(str(start.get("op")))
    if rule is None or not (rule.builds_rootfs or rule.stuck_state):
        return "untouched"
    name = rules.container_name(str(start.get("container")))
    if rule.stuck_state:
        return await _unstick(rule, containers, name)
    path = os.path.join(lxcpath, name)
    preexisting = entry.get("meta", {}).get("preexisting")
    if preexisting:
        return "kept: it existed before the request"
    if not os.path.lexists(path):
        return "absent: nothing was made"
    # A copy may have written its config before its rootfs was fully copied: unless we know
    # the name was free before, only liblxc's create marker tells complete from half-made.
    if rule.builds_rootfs == policy.COPY and preexisting is False:
        return await _remove(containers, name, path) + ": a clone cut short cannot be trusted"
    if _complete(path):
        return "kept: complete"
    return await _remove(containers, name, path) + ": incomplete"


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
