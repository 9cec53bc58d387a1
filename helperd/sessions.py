"""Browser sessions on the helper: the sign-in policy ([helperd.session]) and the password
check as the event loop runs it.

A refused sign-in — whatever refused it — is one `unauthorized` error with one message, after
the same delay; at most `max_checks` PAM conversations run at once, each on a thread, so a
flood of sign-ins can neither stall the loop nor take every thread.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from helperd import pam
from protocol import config, rules, session
from protocol.config import ConfigError
from protocol.errors import LwpError


@dataclass(frozen=True)
class SessionPolicy:
    # Unix group -> the scope its members get (the highest of a user's groups wins).
    groups: dict[str, str] = field(default_factory=lambda: dict(pam.DEFAULT_GROUPS))
    idle: float = 1800.0  # seconds without a request after which a session ends
    lifetime: float = 43200.0  # seconds after sign-in at which it ends whatever its use
    fail_delay: float = pam.DEFAULT_FAIL_DELAY  # every refusal answers no sooner than this
    max_checks: int = 4  # PAM conversations at once; more wait their turn


# key -> (lowest, highest): a typo must not make sessions endless or sign-ins free to guess.
LIMITS: dict[str, tuple[float, float]] = {
    "idle": (1, 86400),  # short is never weaker; tests use seconds
    "lifetime": (1, 30 * 86400),
    "fail_delay": (0.1, 30),
    "max_checks": (1, 64),
}


def load_policy(sec: config.Section) -> SessionPolicy:
    """[helperd.session]: idle, lifetime, fail_delay, max_checks, and a [groups] table."""
    d = SessionPolicy()
    known = {"groups", *LIMITS}
    extra = sorted(set(sec.data) - known)
    if extra:
        raise ConfigError(f"{sec.where}{extra[0]}: unknown key; known: {sorted(known)}")
    groups_sec = sec.section("groups")
    groups = dict(groups_sec.data) if "groups" in sec.data else dict(d.groups)
    for group, scope in groups.items():
        if not isinstance(scope, str) or scope not in rules.SCOPES:
            raise ConfigError(f"{groups_sec.where}{group}: must be one of "
                              f"{', '.join(rules.SCOPES)}")
        if not session.USER_RE.fullmatch(group):
            raise ConfigError(f"{groups_sec.where}{group}: not a group name")
    policy = SessionPolicy(groups=groups, idle=sec.get("idle", float, d.idle),
                           lifetime=sec.get("lifetime", float, d.lifetime),
                           fail_delay=sec.get("fail_delay", float, d.fail_delay),
                           max_checks=sec.get("max_checks", int, d.max_checks))
    for key, (low, high) in LIMITS.items():
        if not low <= getattr(policy, key) <= high:
            raise ConfigError(f"{sec.where}{key}: must be {low:g} to {high:g}")
    if policy.lifetime < policy.idle:
        raise ConfigError(f"{sec.where}lifetime: must be at least idle ({policy.idle:g})")
    return policy


def refused() -> LwpError:
    return LwpError("unauthorized", session.SIGN_IN_REFUSED)


class PasswordCheck:
    """PAM off the event loop, bounded, with one delay for every refusal."""

    def __init__(self, policy: SessionPolicy) -> None:
        self.policy = policy
        self._slots = asyncio.Semaphore(policy.max_checks)

    async def __call__(self, username: str, password: str,
                       address: str | None) -> pam.SignIn:
        started = time.monotonic()
        async with self._slots:
            outcome = await asyncio.get_running_loop().run_in_executor(
                None, pam.authenticate, username, password, self.policy.groups, address)
        if outcome is None:
            # Awaited here, on the loop: a delayed refusal holds no thread and no slot.
            await asyncio.sleep(max(0.0, started + self.policy.fail_delay - time.monotonic()))
            raise refused()
        return outcome
