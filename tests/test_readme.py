"""The README's examples, run as written against a real helper and frontend.

Only the address (the test server's port), the token, the container names (unique to this run)
and the configuration file (the test world's) are substituted; every command must succeed, in
order, as a new user's would. (Install, `make run` and the walk-through on a fresh booted
Debian 12: `make readme-test`.)
"""
from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import uuid
from typing import Any

import pytest

from tests.conftest import PYTHON, ROOT, World

pytestmark = pytest.mark.lxc

README_URL = "http://127.0.0.1:5000"


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block after `heading`, continuation lines joined."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    after = text[text.index(heading):]
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None, f"no sh block after {heading!r}"
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_the_walk_through_is_found_and_stops_before_it_clones() -> None:
    commands = readme_block("### curl")
    actions = [c for c in commands if c.startswith("curl")]
    assert len(actions) >= 8
    clone = next(i for i, c in enumerate(actions) if '"clone": "web1"' in c)
    assert any('"action": "stop"' in c and c.endswith("/web1") for c in actions[:clone])


async def test_the_readme_curl_walk_through_works_as_written(api: Any, tokens: Any) -> None:
    base = str(api.make_url("")).rstrip("/")
    suffix = uuid.uuid4().hex[:6]
    names = {"web1": f"readme1-{suffix}", "web2": f"readme2-{suffix}"}
    for command in readme_block("### curl"):
        argv = shlex.split(command, comments=True)
        if argv[0] != "curl":
            assert argv[0].startswith("T="), f"an unexpected line in the walk-through: {command}"
            continue
        argv = [_substitute(arg, base, tokens.admin, names) for arg in argv]
        process = await asyncio.create_subprocess_exec(
            *argv, "-sS", "-w", "\n%{http_code}", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
        body, _, status = out.decode().rpartition("\n")
        assert process.returncode == 0 and status == "200", \
            f"{command}\n-> exit {process.returncode}, HTTP {status}: {body} {err.decode()}"


def _substitute(arg: str, base: str, token: str, names: dict[str, str]) -> str:
    arg = arg.replace(README_URL, base).replace("$T", token)
    for readme_name, ours in names.items():
        arg = re.sub(rf"\b{readme_name}\b", ours, arg)
    return arg


# The admin CLI as the README writes it, and as the package installs it (lwp-admin): both
# are this module, given the world's configuration instead of /etc/lwp/lwp.toml.
ADMIN = [PYTHON, "-m", "helperd.admin"]
# Examples that follow a log for ever, or need journald: shown by deb-test's booted system.
FOLLOWERS = ("tail", "journalctl")


def as_admin_cli(argv: list[str], config: str) -> list[str]:
    if argv[:3] == ADMIN:
        return [*ADMIN, "--config", config, *argv[3:]]
    assert argv[0] == "lwp-admin", argv
    return [*ADMIN, "--config", config, *argv[1:]]


def test_the_admin_cli_examples_work_as_written(fresh_world: World) -> None:
    fresh_world.start_helper()  # a store of its own: the example revokes token 2
    for command in readme_block("### Tokens: the admin CLI"):
        argv = as_admin_cli(shlex.split(command, comments=True), fresh_world.config)
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, f"{command}\n-> exit {done.returncode}: {done.stderr}"


async def test_the_audit_examples_work_as_written(api: Any, tokens: Any, world: World) -> None:
    base = str(api.make_url("")).rstrip("/")
    ran = 0
    for command in readme_block("Follow, filter and verify it"):
        argv = shlex.split(command, comments=True)
        if argv[0] in FOLLOWERS:
            continue
        if argv[0] == "curl":
            argv = [arg.replace(README_URL, base).replace("$ADMIN", tokens.admin) for arg in argv]
            argv += ["-sS", "-w", "\n%{http_code}"]
        else:
            argv = as_admin_cli(argv, world.config)
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, f"{command}\n-> exit {process.returncode}: {err.decode()}"
        if argv[0] == "curl":
            assert out.decode().rpartition("\n")[2] == "200", out.decode()
        ran += 1
    assert ran == 5
