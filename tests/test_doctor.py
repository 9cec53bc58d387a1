"""The host check: what makes containers work or fail here, each finding with what to do."""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from helperd import config, doctor
from protocol import VERSION
from tests.conftest import ROOT, World, make_world

pytestmark = pytest.mark.lxc


@pytest.fixture
def fresh() -> Iterator[World]:
    w = make_world()  # no helper started: the doctor answers without it
    try:
        yield w
    finally:
        shutil.rmtree(w.base, ignore_errors=True)


def _findings(w: World) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in doctor.report(config.load(w.config))}


def test_a_default_config_naming_a_missing_bridge_is_a_problem_saying_what_to_do(
        fresh: World) -> None:
    with open(os.path.join(fresh.base, "default.conf"), "w") as f:
        f.write("lxc.net.0.type = veth\nlxc.net.0.link = lwpnobr0\n")
    found = _findings(fresh)["bridge"]
    assert found["status"] == "problem" and "lwpnobr0 does not exist" in found["detail"]
    assert "lxc.net.0.link" in found["fix"]


def test_an_empty_network_needs_no_bridge(fresh: World) -> None:
    assert _findings(fresh)["bridge"]["status"] == "ok"  # the test world's lxc.net.0.type = empty


def test_an_allowed_template_that_is_not_installed_is_a_problem(fresh: World) -> None:
    os.unlink(os.path.join(fresh.base, "templates", "lxc-slow"))
    found = _findings(fresh)
    assert found["template slow"]["status"] == "problem"
    assert found["template busybox"]["status"] == "ok"


def test_free_space_is_measured_where_the_audit_dir_will_be(fresh: World) -> None:
    found = _findings(fresh)["free space audit_dir"]  # the helper has not made it yet
    assert found["status"] in ("ok", "warning") and "GiB free" in found["detail"]


def test_every_finding_is_ok_warning_or_problem_and_problems_say_what_to_do(
        fresh: World) -> None:
    for f in doctor.report(config.load(fresh.config)):
        assert f["status"] in ("ok", "warning", "problem")
        assert f["status"] != "problem" or f["fix"] or "apt install" in f["detail"], f


def test_the_version_is_the_packages_everywhere() -> None:
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert f'version = "{VERSION}"' in f.read()
    with open(os.path.join(ROOT, "packaging/deb/debian/changelog")) as f:
        assert re.match(rf"lxc-web-panel \({re.escape(VERSION)}\)", f.readline())


async def test_the_host_report_is_for_admin_tokens_and_has_both_versions(
        api: Any, tokens: Any) -> None:
    r = await api.get("/api/v1/host", headers={"private-token": tokens.read})
    assert r.status == 403
    r = await api.get("/api/v1/host", headers={"private-token": tokens.admin})
    assert r.status == 200, await r.text()
    found = {f["check"]: f for f in await r.json()}
    assert {"version", "frontend version", "cgroups", "bridge"} <= set(found)
    assert found["frontend version"]["status"] == "ok"  # the same code on both sides
    assert f"lxc-web-panel {VERSION} " in found["version"]["detail"]
