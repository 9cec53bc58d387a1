"""Input rules shared by both sides of the socket: names, templates, stores, xargs, tokens.

Everything that decides whether a client-supplied string is acceptable lives here, once.
Each check raises `invalid(field, why)`; anything accepted is safe as a path component or
as a template argument (it can never be read as an option of liblxc or of the template).
"""
from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence

from protocol.errors import invalid

# A container name becomes a directory under lxcpath and an argument to templates: no
# separators, no leading dot or dash, no whitespace (liblxc itself validates none of this).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Templates are looked up as `lxc-<name>` in the helper's template directory, never as paths.
TEMPLATE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
STORE_RE = re.compile(r"[a-z0-9]{1,16}")
OPTION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# Options liblxc passes to every template itself: templates keep the last value given, so a
# client-supplied one would override where the rootfs is written.
RESERVED_OPTIONS = frozenset({"path", "name", "rootfs", "mapped-uid", "mapped-gid"})
# Characters of a refused client value that an error message repeats.
QUOTE_MAX = 40
MAX_XARGS = 32
MAX_VALUE = 256
MAX_DESCRIPTION = 256
TOKEN_MAX = 256
# Tokens travel in URLs and headers: printable ASCII without separators that need escaping.
TOKEN_RE = re.compile(r"[A-Za-z0-9_.~+/=-]+")
SCOPES = ("read", "operate", "admin")
# A token's expiry: a Unix time after 1970 and before the year 10000 (what datetime, SQLite's
# REAL and JSON all represent); inf or nan would be a token that never expires or cannot be
# compared, and a token list that is not valid JSON.
EXPIRES_MAX = 253402300799.0
# Ids (token ids, audit seqs) fit SQLite's INTEGER.
ID_MAX = 2**63 - 1


def shown(value: object) -> str:
    """A refused client value as an error message may quote it: repr'd, so no control
    character reaches a log line, and cut short, so an error never grows with its input."""
    text = repr(value)
    return text if len(text) <= QUOTE_MAX else text[:QUOTE_MAX] + "..."


def reserved_option(option: str) -> bool:
    """Whether a template would read `--option` as one that liblxc sets.

    Templates parse with getopt(1), which takes any unambiguous prefix of a long option for
    the option itself: `--pa=/x` is `--path=/x` to lxc-busybox."""
    return any(name.startswith(option) for name in RESERVED_OPTIONS)


def container_name(value: str, field: str = "name") -> str:
    if not NAME_RE.fullmatch(value):
        raise invalid(field, "must be 1-64 characters of A-Z a-z 0-9 _ . -, "
                             "starting with a letter or digit")
    return value


def template_name(value: str) -> str:
    if not TEMPLATE_RE.fullmatch(value):
        raise invalid("template", "must be the name of an installed template, not a path")
    return value


def store_name(value: str) -> str:
    if not STORE_RE.fullmatch(value):
        raise invalid("store", "must be a backing store name such as 'dir'")
    return value


def plain_value(value: str, field: str) -> str:
    """A template option's value: one line of printable text that cannot pose as an option."""
    if not value or len(value) > MAX_VALUE:
        raise invalid(field, f"value must be 1-{MAX_VALUE} characters")
    if value.startswith("-"):
        raise invalid(field, "value must not start with '-'")
    if not value.isprintable():
        raise invalid(field, "value must be printable text on one line")
    return value


def split_xargs(value: str | Sequence[str]) -> list[str]:
    """The seed's `xargs`: a string split as a shell would (but never run by one), or a list."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise invalid("xargs", f"cannot be split: {exc}") from None
    return list(value)


def parse_xargs(words: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Turn `--opt=value` / `--opt value` words into (option, value) pairs, or refuse.

    Only long options with a value are accepted; short options, bare words and flags are
    not, so every pair renders unambiguously as `--opt=value`.
    """
    if len(words) > MAX_XARGS * 2:
        raise invalid("xargs", f"at most {MAX_XARGS} options")
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise invalid("xargs", f"expected an option of the form --name=value, "
                                   f"got {shown(word)}")
        option, eq, value = word[2:].partition("=")
        if not OPTION_RE.fullmatch(option):
            raise invalid("xargs", f"malformed option name {shown(option)}")
        if not eq:
            if i + 1 >= len(words):
                raise invalid("xargs", f"option --{option} needs a value")
            i += 1
            value = words[i]
        if reserved_option(option):
            raise invalid("xargs", f"option --{option} is (or abbreviates) one set by the "
                                   "server and never by a client")
        pairs.append((option, plain_value(value, f"xargs --{option}")))
        i += 1
    if len(pairs) > MAX_XARGS:
        raise invalid("xargs", f"at most {MAX_XARGS} options")
    return tuple(pairs)


def render_xargs(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [f"--{option}={value}" for option, value in pairs]


def token_secret(value: str, min_length: int, field: str = "token") -> str:
    if not min_length <= len(value) <= TOKEN_MAX:
        raise invalid(field, f"must be {min_length}-{TOKEN_MAX} characters")
    if not TOKEN_RE.fullmatch(value):
        raise invalid(field, "may contain only letters, digits and _ . ~ + / = -")
    return value


def token_shaped(value: str) -> bool:
    """Whether a presented token could be one at all (a header may carry any bytes)."""
    return len(value) <= TOKEN_MAX and TOKEN_RE.fullmatch(value) is not None


def ascii_digits(value: str) -> bool:
    """0-9 only: str.isdigit() also takes '²' and '٣', which int() refuses or reads otherwise."""
    return value.isascii() and value.isdigit()


def expires(value: float) -> float:
    """A token's expiry: a finite Unix time in (0, EXPIRES_MAX]."""
    try:
        when = float(value)  # an int as long as JSON allows is no float: OverflowError
    except OverflowError:
        when = math.inf
    if not (math.isfinite(when) and 0 < when <= EXPIRES_MAX):
        raise invalid("expires", f"must be a Unix time after 0 and at most {EXPIRES_MAX:.0f} "
                                 "(the year 9999)")
    return when


def scope_name(value: str) -> str:
    if value not in SCOPES:
        raise invalid("scope", f"must be one of {', '.join(SCOPES)}")
    return value


def scope_allows(held: str, needed: str) -> bool:
    return SCOPES.index(held) >= SCOPES.index(needed)


def description(value: str) -> str:
    if len(value) > MAX_DESCRIPTION or not value.isprintable():
        raise invalid("description", f"must be at most {MAX_DESCRIPTION} printable characters")
    return value
