"""GET /api/v1/templates: the helper's own allow-lists for a create, as the panel offers them."""
from __future__ import annotations

import platform
from typing import Any

import pytest

from protocol import ops
from tests.conftest import Tokens, World

pytestmark = pytest.mark.lxc
# The test world's lwp.toml (tests/conftest.py write_config), as the helper reads it.
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
WORLD_CATALOGUE = {
    "templates": [
        {"name": "busybox", "options": []},
        {"name": "debian", "options": [{"name": "arch", "values": [ARCH]},
                                       {"name": "packages", "values": None},
                                       {"name": "release", "values": ["bookworm"]}]},
        {"name": "failing", "options": []},
        {"name": "recorder", "options": [{"name": "flavor", "values": None},
                                         {"name": "release", "values": None}]},
        {"name": "slow", "options": []},
    ],
    "stores": ["dir"],
}


async def test_templates_lists_the_configured_templates_options_and_stores(
        api: Any, tokens: Tokens) -> None:
    r = await api.get("/api/v1/templates", headers={"private-token": tokens.read})
    assert r.status == 200, await r.text()
    assert await r.json() == WORLD_CATALOGUE


async def test_templates_needs_a_token(api: Any) -> None:
    r = await api.get("/api/v1/templates/")
    assert r.status == 401


def test_the_helper_answers_list_templates_itself(world: World, tokens: Tokens) -> None:
    # Not only the frontend: the helper's own row, re-authorised there, for a read token.
    assert world.call(ops.ListTemplates(), token=tokens.read) == WORLD_CATALOGUE
