"""Run one blocking liblxc call in a forked child, with a deadline the parent enforces.

Why a child: liblxc's start() moves its caller into the container's monitor cgroups for good,
a template may run for minutes, and a hung call (freeze, a stuck template) must be killable
without taking the helper down. The child never returns into the event loop: it always _exits.
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import tempfile
from collections.abc import Callable

from protocol.errors import LwpError

OUTPUT_TAIL = 600  # characters of a failed child's output that go into the error message
PR_SET_PDEATHSIG = 1


async def run_isolated(call: Callable[[], None], deadline: float,
                       on_child: Callable[[int], None] | None = None) -> None:
    """Run `call` in a child; re-raise its LwpError here, or `timeout` after `deadline` s.

    `on_child` learns the child's pid (its process group) before the child may begin: the
    audit trail keeps it, so a helper restarted after a kill -9 can end what is left."""
    with tempfile.TemporaryFile() as result, tempfile.TemporaryFile() as output:
        gate_r, gate_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            _child(call, result.fileno(), output.fileno(), gate_r, parent)
        os.close(gate_r)
        try:
            if on_child is not None:
                on_child(pid)
            os.write(gate_w, b"go")
        except BaseException:
            os.kill(pid, signal.SIGKILL)  # it never began; don't leave it waiting
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(gate_w)
        pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)
        loop.add_reader(pidfd, on_exit)
        try:
            await asyncio.wait_for(asyncio.shield(exited), deadline)
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            raise LwpError("timeout", f"the operation did not finish within {deadline:g} s "
                                      "and was ended") from None
        except asyncio.CancelledError:
            os.killpg(pid, signal.SIGKILL)  # the helper is shutting down; don't block on it
            raise
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            # The child has exited (or was killed just now): reap it without blocking long.
            os.waitpid(pid, 0)
        result.seek(0)
        outcome = result.read()
        if outcome:
            error = json.loads(outcome)
            message = error["message"]
            if error["code"] == "operation-failed":
                output.seek(0, os.SEEK_END)
                output.seek(max(0, output.tell() - OUTPUT_TAIL * 4))
                tail = output.read().decode("utf-8", "replace").strip()
                tail = " ".join(tail.split())[-OUTPUT_TAIL:]
                if tail:
                    message = f"{message}: {tail}"
            raise LwpError(error["code"], message)


def _child(call: Callable[[], None], result_fd: int, output_fd: int, gate_fd: int,
           parent: int) -> None:
    code = 1
    try:
        # Own process group, so a timeout kills the template and whatever it started too.
        os.setsid()
        # Die with the helper (its process group is ended by the next helper's recovery),
        # and begin only once the helper has noted our pid: no window where we are unknown.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent or os.read(gate_fd, 2) != b"go":
            return
        os.close(gate_fd)
        for fd in (1, 2):
            os.dup2(output_fd, fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            call()
            code = 0
        except LwpError as exc:
            _write(result_fd, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 — reported as a code, never as a traceback
            _write(result_fd, "internal-error", f"unexpected {type(exc).__name__} in liblxc call")
    finally:
        os._exit(code)


def _write(fd: int, code: str, message: str) -> None:
    os.write(fd, json.dumps({"code": code, "message": message}).encode())
