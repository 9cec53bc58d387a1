"""The one-place tables agree with each other: ops <-> policy.RULES, codes <-> HTTP statuses."""
from __future__ import annotations

from frontend.errors import STATUS
from helperd.policy import RULES
from protocol.errors import CODES
from protocol.ops import OPS


def test_policy_table_covers_exactly_the_declared_ops() -> None:
    assert set(RULES) == set(OPS)


def test_every_error_code_has_exactly_one_http_status() -> None:
    assert set(STATUS) == set(CODES)


def test_client_errors_are_4xx_and_server_faults_5xx() -> None:
    for code in ("invalid-request", "unauthorized", "forbidden", "not-found", "invalid-state",
                 "no-such-container", "container-exists", "payload-too-large"):
        assert 400 <= STATUS[code] < 500, code
    for code in ("operation-failed", "internal-error", "helper-unavailable", "timeout"):
        assert STATUS[code] >= 500, code
