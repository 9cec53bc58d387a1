"""The README's curl walk-through, run as written against a real helper and frontend.

Only the address (the test server's port), the token and the container names (unique to this
run) are substituted; every command must succeed, in order, as a new user's would.
"""
from __future__ import annotations

import asyncio
import os
import re
import shlex
import uuid
from typing import Any

import pytest

from tests.conftest import ROOT

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
