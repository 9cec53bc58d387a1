"""The worker processes that run container changes: reuse, errors, deadlines, hygiene."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helperd import isolate, policy
from helperd.containers import Containers
from helperd.isolate import Workers, run_isolated
from protocol import ops
from protocol.errors import LwpError


def _job(request: Any) -> None:
    """What the test workers do, chosen by the container name of the request."""
    name = request.name
    if name == "fails":
        os.write(2, b"liblxc says: no cgroup for you\n")  # as liblxc writes: to the fd
        raise LwpError("operation-failed", "liblxc could not start container 'fails'")
    if name == "crashes":
        raise ZeroDivisionError("a secret detail of the crash")
    if name == "dies":
        os._exit(3)
    if name == "hangs":
        with open(os.environ["LWP_TEST_PIDFILE"], "w") as f:
            f.write(str(subprocess.Popen(["sleep", "60"]).pid))
        time.sleep(60)


@pytest.fixture
def workers(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    monkeypatch.setenv("LWP_TEST_PIDFILE", str(tmp_path / "grandchild"))
    pool = Workers(_job)
    pool.fill()
    yield pool
    pool.close()


async def _run(pool: Workers, name: str, deadline: float = 10) -> int:
    pids: list[int] = []
    await pool.run(ops.StartContainer(name), deadline, pids.append)
    return pids[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def test_changes_run_in_one_reused_worker_not_in_the_helper(workers: Workers) -> None:
    first = await _run(workers, "ok")
    second = await _run(workers, "ok")
    assert first == second != os.getpid()
    assert _alive(first)


async def test_a_refusal_comes_back_with_its_code_and_the_output_tail(workers: Workers) -> None:
    with pytest.raises(LwpError) as err:
        await _run(workers, "fails")
    assert err.value.code == "operation-failed"
    assert err.value.message == ("liblxc could not start container 'fails': "
                                 "liblxc says: no cgroup for you")
    await _run(workers, "ok")  # and the workers go on serving


async def test_a_refused_change_leaves_its_worker_in_service(workers: Workers) -> None:
    pids: list[int] = []
    for _ in range(2):
        with pytest.raises(LwpError) as err:
            await workers.run(ops.StartContainer("fails"), 10, pids.append)
        # Each job's output is its own: the last one's is not repeated.
        assert err.value.message.count("no cgroup for you") == 1
    assert await _run(workers, "ok") == pids[0] == pids[1]


async def test_a_worker_retires_after_its_quota_of_jobs(workers: Workers,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolate, "MAX_JOBS", 2)
    workers.close()
    workers.fill()  # forked after the change, so the workers count to 2
    pids = [await _run(workers, "ok") for _ in range(3)]
    assert pids[0] == pids[1] != pids[2]
    assert not _alive(pids[0])


async def test_an_unexpected_error_is_a_bare_code_without_the_traceback(
        workers: Workers) -> None:
    with pytest.raises(LwpError) as err:
        await _run(workers, "crashes")
    assert err.value.code == "internal-error"
    assert "secret" not in err.value.message and "Traceback" not in err.value.message


async def test_a_worker_that_dies_is_reported_and_replaced(workers: Workers) -> None:
    pids: list[int] = []
    with pytest.raises(LwpError) as err:
        await workers.run(ops.StartContainer("dies"), 10, pids.append)
    assert err.value.code == "internal-error"
    assert "exit status 3" in err.value.message
    assert not _alive(pids[0])
    assert await _run(workers, "ok") != pids[0]


async def test_a_missed_deadline_kills_the_worker_and_its_process_group(
        workers: Workers, tmp_path: Any) -> None:
    pids: list[int] = []
    started = time.monotonic()
    with pytest.raises(LwpError) as err:
        await workers.run(ops.StartContainer("hangs"), 0.5, pids.append)
    assert err.value.code == "timeout"
    assert time.monotonic() - started < 3
    grandchild = int((tmp_path / "grandchild").read_text())
    for _ in range(100):  # the sleep's parent is gone: init reaps it a moment later
        if not _alive(grandchild):
            break
        await asyncio.sleep(0.02)
    assert not _alive(pids[0]) and not _alive(grandchild)
    assert await _run(workers, "ok") != pids[0]


async def test_a_cancelled_change_ends_its_worker(workers: Workers) -> None:
    pids: list[int] = []
    task = asyncio.ensure_future(workers.run(ops.StartContainer("hangs"), 30, pids.append))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pids[0])


async def test_a_worker_validates_its_job_again() -> None:
    worker = isolate._Worker.spawn(lambda wire: _job(isolate.WorkerJob.from_wire(wire).request))
    try:
        forged = {"op": "start_container", "args": {"name": "../../etc"}}
        with pytest.raises(LwpError) as err:
            await worker.call(forged, 10)
        assert err.value.code == "invalid-request"
    finally:
        worker.kill()


@pytest.mark.parametrize("wire", [
    None, [], {"op": "start_container"}, {"op": 1, "args": {"name": "web"}},
    {"op": "format_disk", "args": {}},
    {"op": "start_container", "args": {"name": "web"}, "token": None},
    {"id": "job", "op": "start_container", "token": None, "client": "x",
     "args": {"name": "web"}}], ids=["null", "list", "no args", "op not str", "unknown op",
                                     "extra field", "an envelope"])
def test_a_worker_job_is_exactly_op_and_args(wire: object) -> None:
    with pytest.raises(LwpError) as err:
        isolate.WorkerJob.from_wire(wire)
    assert err.value.code == "invalid-request"


def test_a_worker_job_carries_the_request_and_nothing_else() -> None:
    job = isolate.WorkerJob(ops.CloneContainer("copy", "web"))
    assert job.to_wire() == {"op": "clone_container",
                             "args": {"name": "copy", "source": "web", "store": None}}
    assert isolate.WorkerJob.from_wire(job.to_wire()) == job


async def test_workers_hold_none_of_the_helpers_descriptors() -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pool = Workers(_job, spare=1)
    try:
        pool.fill()
        pid = await _run(pool, "ok")
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        assert fds == [0, 1, 2, isolate.WORKER_FD]
        assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2")
    finally:
        pool.close()
        listener.close()


async def test_run_isolated_uses_a_fresh_worker_each_time() -> None:
    pids: list[int] = []
    for _ in range(2):
        await run_isolated(lambda: None, 10, pids.append)
    assert pids[0] != pids[1] and not _alive(pids[0]) and not _alive(pids[1])
    with pytest.raises(LwpError) as err:
        await run_isolated(lambda: sys.exit(0), 10)
    assert err.value.code == "internal-error"


def test_cgroup_home_is_where_this_process_is() -> None:
    home = isolate.CgroupHome()
    assert home.dirs and all(os.path.isfile(os.path.join(d, "cgroup.procs")) for d in home.dirs)
    for d in home.dirs:
        with open(os.path.join(d, "cgroup.procs")) as f:
            assert str(os.getpid()) in f.read().split()
    assert home.restore()


async def test_builds_run_niced_in_a_worker_that_then_retires(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def report(self: Containers, req: Any) -> None:
        # The worker's priority, sent back the only way a job can: as its outcome.
        raise LwpError("invalid-state", f"nice {os.getpriority(os.PRIO_PROCESS, 0)}")

    for op in ("create_container", "clone_container", "start_container"):
        monkeypatch.setitem(policy.RULES, op, dataclasses.replace(policy.RULES[op], call=report))
    backend = Containers.__new__(Containers)  # perform() needs no configuration
    pool = Workers(functools.partial(policy.perform, backend), spare=1)
    pool.fill()  # forked after the patch, so the workers report
    try:
        seen = []
        for request in (ops.StartContainer("t-a"), ops.CreateContainer("t-a", "busybox"),
                        ops.StartContainer("t-a"), ops.CloneContainer("t-b", "t-a"),
                        ops.StartContainer("t-b")):
            pids: list[int] = []
            with pytest.raises(LwpError) as err:
                await pool.run(request, 10, pids.append)
            seen.append((type(request).__name__, err.value.message, pids[0]))
    finally:
        pool.close()
    nice = f"nice {policy.BUILD_NICE}"
    assert [m for _, m, _ in seen] == ["nice 0", nice, "nice 0", nice, "nice 0"]
    pids = [p for _, _, p in seen]
    # The start's worker takes the create, which leaves it niced: it retires, and the next
    # change gets a fresh worker at the helper's priority.
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0
