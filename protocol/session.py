"""Rules for signing in with a host account, shared by both sides of the socket.

A user name and a password are checked here, before PAM or the socket sees them: bounded, no
NUL, names of the shape Debian's tools make. Nothing here logs or keeps a password.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from protocol import rules
from protocol.errors import invalid

# useradd's default NAME_REGEX (`[a-z_][a-z0-9_-]*[$]?`) and its length limit (32): every
# account Debian's tools create by default fits; a name that cannot exist never reaches PAM.
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?")
USER_MAX = 32
# Linux-PAM's PAM_MAX_RESP_SIZE: no module reads a longer answer to a prompt.
PASSWORD_MAX_BYTES = 512
# The one message of every refused sign-in, whatever the cause (wrong password, unknown user,
# locked or expired account, no mapped group): a client must not learn which.
SIGN_IN_REFUSED = "sign-in refused: wrong user name or password, or no access to this panel"


def user_name(value: object, field: str = "username") -> str:
    if not isinstance(value, str) or len(value) > USER_MAX or not USER_RE.fullmatch(value):
        raise invalid(field, "must be a user name of 1-32 characters a-z 0-9 _ -, "
                             "starting with a letter or _")
    return value


def password(value: object, field: str = "password") -> str:
    """A password as PAM may be handed it: a non-empty string of at most 512 UTF-8 bytes and
    no NUL (C would cut it there, so 'a\\0b' would be checked as 'a'). Never repeated."""
    if not isinstance(value, str) or not value:
        raise invalid(field, "must be a non-empty string")
    if "\0" in value:
        raise invalid(field, "must not contain NUL")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        raise invalid(field, "must be valid Unicode text") from None
    if size > PASSWORD_MAX_BYTES:
        raise invalid(field, f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8")
    return value


# -- the requests (rows of protocol.ops.OPS once wired) --------------------------------------

@dataclass(frozen=True)
class CreateSession:
    """Sign in: a host account's name and password, or an API token to exchange. The secret
    fields stay out of repr(), so no log line that prints a request can carry them."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token is not None:
            if self.username is not None or self.password is not None:
                raise invalid("token", "give a token, or a username and a password, not both")
            rules.token_secret(self.token, 1)
            return
        if self.username is None or self.password is None:
            raise invalid("username", "give a username and a password, or a token")
        user_name(self.username)
        password(self.password)


@dataclass(frozen=True)
class EndSession:
    """Sign out: revoke the session the request presents."""


@dataclass(frozen=True)
class SessionInfo:
    """Who the presented credential is: user, scope, kind, expiry."""
