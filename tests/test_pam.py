"""Sign-in with a host account through real PAM (pam_unix), in a temporary root.

The accounts exist only in a private mount namespace (tests/pamroot.py): pam_unix reads their
shadow entries for real, and the host's /etc is never written.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from protocol import session
from protocol.errors import LwpError
from tests import pamroot
from tests.pamroot import User

GOOD = "correct horse battery"
USERS = [
    User("lwpt-admin", GOOD, ("lwp-admin",)),
    User("lwpt-operator", GOOD, ("lwp-operator",)),
    User("lwpt-viewer", GOOD, ("lwp-viewer",)),
    User("lwpt-both", GOOD, ("lwp-viewer", "lwp-admin")),
    User("lwpt-primary", GOOD, primary="lwp-operator"),
    User("lwpt-nogroup", GOOD, ("staff-x",)),
    User("lwpt-locked", None, ("lwp-admin",), hash="!" + pamroot.crypt(GOOD)),
    User("lwpt-expired", GOOD, ("lwp-admin",), expire_day="1"),
    User("lwpt-mustchange", GOOD, ("lwp-admin",), last_change="0"),
    User("lwpt-nopass", None, ("lwp-admin",), hash=""),
]
# The child: one pam.check per case, inside the temporary root; prints outcome and time.
DRIVER = """
import json, logging, sys, time
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from helperd import pam
cases = json.load(sys.stdin)
for case in cases["checks"]:
    started = time.monotonic()
    got = pam.check(case[0], case[1], groups=cases["groups"], fail_delay=cases["delay"])
    print(json.dumps([got and [got.user, got.scope], time.monotonic() - started]), flush=True)
"""
REFUSED = [
    ("lwpt-admin", "wrong password"),
    ("lwpt-nosuchuser", GOOD),  # no such account
    ("lwpt-locked", GOOD),  # '!' before its hash
    ("lwpt-expired", GOOD),  # account expired in 1970
    ("lwpt-mustchange", GOOD),  # must change its password first: not through the panel
    ("lwpt-nogroup", GOOD),  # right password, no mapped group
    ("Root;rm", GOOD),  # breaks the name rule: PAM never sees it
    ("lwpt-admin", "x" * 513),  # past PAM_MAX_RESP_SIZE
    ("lwpt-admin", GOOD + "\0tail"),  # C would read only what comes before the NUL
]


@pytest.fixture(scope="module")
def etc() -> Iterator[str]:
    base = tempfile.mkdtemp(prefix="lwp-pam-")
    try:
        yield pamroot.make_root(base, USERS)
    finally:
        shutil.rmtree(base)


def run(etc: str, checks: list[tuple[str, str]], delay: float = 0.0,
        groups: dict[str, str] | None = None) -> tuple[list[Any], str]:
    """Each check's (outcome, seconds), and the log the child wrote."""
    cases = {"checks": checks, "delay": delay,
             "groups": groups if groups is not None else {"lwp-admin": "admin",
                                                          "lwp-operator": "operate",
                                                          "lwp-viewer": "read"}}
    done = subprocess.run(pamroot.command(etc, [sys.executable, "-c", DRIVER]),
                          input=json.dumps(cases).encode(), capture_output=True,
                          cwd=pamroot.ROOT, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr.decode()


def test_a_right_password_maps_the_users_groups_to_the_highest_scope(etc: str) -> None:
    results, _ = run(etc, [("lwpt-admin", GOOD), ("lwpt-operator", GOOD),
                           ("lwpt-viewer", GOOD), ("lwpt-both", GOOD),
                           ("lwpt-primary", GOOD)])
    assert [outcome for outcome, _ in results] == [
        ["lwpt-admin", "admin"], ["lwpt-operator", "operate"], ["lwpt-viewer", "read"],
        ["lwpt-both", "admin"],  # viewer and admin: the higher one
        ["lwpt-primary", "operate"]]  # a mapped primary group counts too


def test_the_group_map_is_configuration(etc: str) -> None:
    results, _ = run(etc, [("lwpt-nogroup", GOOD), ("lwpt-admin", GOOD)],
                     groups={"staff-x": "operate"})
    assert results[0][0] == ["lwpt-nogroup", "operate"]
    assert results[1][0] is None  # lwp-admin is no longer mapped


@pytest.mark.security
def test_every_refusal_is_the_same_none_after_the_same_delay(etc: str) -> None:
    """Wrong password, unknown user, locked, expired, must-change, no mapped group, a name or
    password that breaks the rules: a client cannot tell them apart, by answer or by time."""
    delay = 0.4
    results, _ = run(etc, REFUSED + [("lwpt-admin", GOOD)], delay=delay)
    refused, good = results[:-1], results[-1]
    assert [outcome for outcome, _ in refused] == [None] * len(REFUSED)
    times = [seconds for _, seconds in refused]
    assert min(times) >= delay, times
    assert max(times) - min(times) < 0.1, times  # the PAM work hides under the floor
    assert good[0] == ["lwpt-admin", "admin"] and good[1] < delay  # success is not delayed


@pytest.mark.security
def test_without_the_floor_an_unknown_user_would_answer_sooner(etc: str) -> None:
    """The control of the test above: pam_unix hashes a known user's password and not an
    unknown user's, so the floor (not PAM) is what makes them look alike."""
    checks = [("lwpt-admin", "wrong password"), ("lwpt-nosuchuser", "wrong password")] * 7
    results, _ = run(etc, checks, delay=0.0)
    known = statistics.median(seconds for _, seconds in results[0::2])
    unknown = statistics.median(seconds for _, seconds in results[1::2])
    assert unknown < known, (unknown, known)


@pytest.mark.security
def test_an_account_without_a_password_cannot_sign_in(etc: str) -> None:
    """Debian's common-auth has pam_unix `nullok`: an empty password field would let any
    password in, unprompted, unless the panel asks PAM to refuse null passwords."""
    results, _ = run(etc, [("lwpt-nopass", "anything"), ("lwpt-nopass", " ")])
    assert [outcome for outcome, _ in results] == [None, None]


@pytest.mark.security
def test_no_password_reaches_the_log_even_one_typed_as_the_user_name(etc: str) -> None:
    typed_as_name = "hunter2-secret"  # fits the name rule, is no account
    _, log = run(etc, [("lwpt-admin", "wrong password here"), (typed_as_name, GOOD),
                       ("lwpt-nogroup", GOOD), ("lwpt-admin", GOOD)])
    assert "sign-in refused: user=lwpt-admin reason=auth-error" in log
    assert "user=(not an account)" in log and "reason=no mapped group" in log
    for secret in ("wrong password here", typed_as_name, GOOD):
        assert secret not in log


def test_the_host_files_are_never_touched(etc: str) -> None:
    run(etc, [("lwpt-admin", GOOD)])
    for name in ("passwd", "shadow", "group"):
        with open(os.path.join("/etc", name)) as f:
            assert "lwpt-" not in f.read()
    with open("/proc/self/mountinfo") as f:
        assert etc not in f.read()  # the binds stayed in the child's namespace


@pytest.mark.parametrize("name", ["root", "lwp-admin", "_apt", "a" * 32, "user$"])
def test_names_of_the_shape_debian_makes_are_accepted(name: str) -> None:
    assert session.user_name(name) == name


@pytest.mark.parametrize("name", ["", "Root", "a" * 33, "-x", "a b", "a/b", "a\0", "ä", 7])
def test_other_names_are_400_naming_the_field(name: object) -> None:
    with pytest.raises(LwpError) as caught:
        session.user_name(name)
    assert caught.value.code == "invalid-request" and "username" in caught.value.message


@pytest.mark.parametrize("password", ["", "a\0b", "é" * 257, "\ud800", None])
def test_passwords_pam_could_not_take_as_given_are_400(password: object) -> None:
    with pytest.raises(LwpError) as caught:
        session.password(password)
    assert caught.value.code == "invalid-request" and "password" in caught.value.message
    assert "a\0b" not in caught.value.message  # the message never repeats it


def test_a_password_of_512_utf8_bytes_is_accepted() -> None:
    assert session.password("é" * 256) == "é" * 256
