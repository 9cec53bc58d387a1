"""The access log's line, byte for byte, and its redaction, case by case: the short cuts taken
for speed (no regex off the token path, no query parsing without a query) change neither."""
from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from frontend.accesslog import AccessLogger, safe_target

SECRET = "lwp_" + "s" * 43


@pytest.mark.parametrize(("target", "logged"), [
    ("/api/v1/containers", "/api/v1/containers"),
    ("/api/v1/containers/web-1/", "/api/v1/containers/web-1/"),
    (f"/api/v1/tokens/{SECRET}", "/api/v1/tokens/REDACTED"),
    (f"/api/v1/tokens/{SECRET}/", "/api/v1/tokens/REDACTED/"),
    (f"/api/v1/tokens/{SECRET}/more", "/api/v1/tokens/REDACTED/more"),
    ("/api/v1/tokens/lwp_%73%65cret", "/api/v1/tokens/REDACTED"),
    ("/api/v1/tokens/id/17", "/api/v1/tokens/id/17"),
    ("/api/v1/tokens/idle-token-000000", "/api/v1/tokens/REDACTED"),
    ("/api/v1/tokens/", "/api/v1/tokens/"),
    ("/api/v1/tokens", "/api/v1/tokens"),
    (f"/x/api/v1/tokens/{SECRET}", f"/x/api/v1/tokens/{SECRET}"),  # not the revoke route
    (f"/api/v1/containers?private_token={SECRET}", "/api/v1/containers?private_token=REDACTED"),
    (f"/api/v1/containers/c?force=true&private_token={SECRET}",
     "/api/v1/containers/c?force=true&private_token=REDACTED"),
    (f"/api/v1/tokens/{SECRET}?private_token={SECRET}",
     "/api/v1/tokens/REDACTED?private_token=REDACTED"),
    ("/api/v1/audit?limit=5&op=start_container", "/api/v1/audit?limit=5&op=start_container"),
    ("/api/v1/containers?", "/api/v1/containers"),
    ("/api/v1/containers?&", "/api/v1/containers"),
    ("/api/v1/containers?=", "/api/v1/containers?="),
])
def test_safe_target_redacts_every_place_a_token_travels(target: str, logged: str) -> None:
    assert safe_target(make_mocked_request("GET", target)) == logged


def test_the_access_line_is_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    request = make_mocked_request("DELETE", f"/api/v1/tokens/{SECRET}?private_token={SECRET}")
    request["client"] = "192.0.2.7"
    response = web.json_response({"status": "ok"})  # not sent: body_length 0
    response.headers["X-Request-Id"] = "0123abcd" * 4
    logger = logging.getLogger("test.access")
    with caplog.at_level(logging.INFO, logger="test.access"):
        AccessLogger(logger, "").log(request, response, 0.01234)
    [record] = caplog.records
    assert (record.name, record.levelno) == ("test.access", logging.INFO)
    assert record.getMessage() == (
        '192.0.2.7 "DELETE /api/v1/tokens/REDACTED?private_token=REDACTED" 200 0 12.3ms '
        + "0123abcd" * 4)


def test_nothing_is_logged_below_the_access_loggers_level(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.quiet")
    with caplog.at_level(logging.WARNING, logger="test.quiet"):
        AccessLogger(logger, "").log(make_mocked_request("GET", "/"), web.Response(), 0.0)
    assert caplog.records == []
