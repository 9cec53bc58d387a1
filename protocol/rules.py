"""Input rules shared by both sides of the socket: names, templates, stores, xargs, tokens.

Everything that decides whether a client-supplied string is acceptable lives here, once.
Each check raises `invalid(field, why)`; anything accepted is safe as a path component or
as a template argument (it can never be read as an option of liblxc or of the template).
"""
from __future__ import annotations

import fnmatch
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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

# -- template option values ----------------------------------------------------------------
# A template listed in TEMPLATE_VALUES takes only the options listed for it, each value of
# the shape given (checked on both sides of the socket); which values of a `choice` option
# this host allows is the helper's configuration. Templates not listed keep the generic rule
# (plain_value) and the helper's per-template allow-list of option names.
# Debian codenames (bookworm, trixie) and dpkg architecture names (amd64, arm64, ppc64el).
RELEASE_RE = re.compile(r"[a-z][a-z0-9-]{1,31}")
ARCH_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,31}")
# Debian policy 5.6.1: lower case letters, digits, + . -, at least two characters, starting
# with a letter or digit. Bounded: the template hands them to apt-get inside the container.
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,99}")
MAX_PACKAGES = 32


@dataclass(frozen=True)
class ValueRule:
    shape: re.Pattern[str]
    what: str  # what a value is, for error messages
    choice: bool  # one value of a list this host configures (else: names, comma-separated)
    max_items: int = 1


TEMPLATE_VALUES: dict[str, dict[str, ValueRule]] = {
    "debian": {
        "release": ValueRule(RELEASE_RE, "a Debian release codename", choice=True),
        "arch": ValueRule(ARCH_RE, "a dpkg architecture name", choice=True),
        "packages": ValueRule(PACKAGE_RE, "Debian package names separated by commas",
                              choice=False, max_items=MAX_PACKAGES),
    },
}
# Options of a template that the helper passes itself, from its configuration, and that a
# client may never give nor any configuration allow (nor any prefix, as RESERVED_OPTIONS):
# lxc-debian's --mirror is where debootstrap and the container's apt fetch packages from.
HELPER_OPTIONS: dict[str, frozenset[str]] = {"debian": frozenset({"mirror"})}
# A mirror the helper may be configured with: http(s), host, port, path; nothing a shell, a
# sources.list line or wget would read otherwise (the template writes it into both).
MIRROR_RE = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]{0,200})?")

# A token's containers: fnmatch patterns, each a container name in which `*` and `?` may stand
# for characters (never `[`: one wildcard vocabulary). Case-sensitive, as names are.
PATTERN_RE = re.compile(r"[A-Za-z0-9*?][A-Za-z0-9_.*?-]{0,63}")
MAX_PATTERNS = 32

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


def reserved_option(option: str, template: str | None = None) -> bool:
    """Whether a template would read `--option` as one that liblxc (or, for `template`, the
    helper) sets.

    Templates parse with getopt(1), which takes any unambiguous prefix of a long option for
    the option itself: `--pa=/x` is `--path=/x` to lxc-busybox, `--mi=x` is `--mirror=x` to
    lxc-debian."""
    names = RESERVED_OPTIONS | HELPER_OPTIONS.get(template or "", frozenset())
    return any(name.startswith(option) for name in names)


def template_value(template: str, option: str, value: str) -> str:
    """A value of an option of a template in TEMPLATE_VALUES, checked against its shape."""
    table = TEMPLATE_VALUES[template]
    rule = table.get(option)
    field = f"xargs --{option}"
    if rule is None:
        raise invalid("xargs", f"option --{option} does not exist for template {template!r}; "
                               f"it takes {', '.join('--' + o for o in sorted(table))}")
    items = value.split(",") if not rule.choice else [value]
    if len(items) > rule.max_items:
        raise invalid(field, f"at most {rule.max_items} items separated by commas")
    for item in items:
        if not rule.shape.fullmatch(item):
            raise invalid(field, f"must be {rule.what}; {shown(item)} is not")
    return value


def allowed_value(option: str, value: str, allowed: frozenset[str]) -> str:
    """A `choice` option's value, checked against the values this host allows."""
    if value not in allowed:
        raise invalid(f"xargs --{option}", f"{shown(value)} is not allowed here; allowed: "
                                           f"{', '.join(sorted(allowed)) or 'none'}")
    return value


def host_values(template: str, pairs: Sequence[tuple[str, str]],
                allowed: Mapping[str, frozenset[str]]) -> None:
    """Check every `choice` option of `pairs` against the host's allowed values."""
    for option, value in pairs:
        rule = TEMPLATE_VALUES.get(template, {}).get(option)
        if rule is not None and rule.choice:
            allowed_value(option, value, allowed.get(option, frozenset()))


def container_name(value: str, field: str = "name") -> str:
    if not NAME_RE.fullmatch(value):
        raise invalid(field, "must be 1-64 characters of A-Z a-z 0-9 _ . -, "
                             "starting with a letter or digit")
    return value


def container_patterns(values: Sequence[str], field: str = "containers") -> tuple[str, ...]:
    """The containers a token is limited to: 1-MAX_PATTERNS patterns by PATTERN_RE (a token
    for all containers has none at all, never an empty list)."""
    if not 1 <= len(values) <= MAX_PATTERNS:
        raise invalid(field, f"must be 1-{MAX_PATTERNS} name patterns (omit it for all "
                             "containers)")
    for value in values:
        if not PATTERN_RE.fullmatch(value):
            raise invalid(field, f"{shown(value)} is not a container name, with * or ? "
                                 "standing for characters")
    return tuple(values)


def in_patterns(name: str, patterns: Sequence[str]) -> bool:
    """Whether a container name is one a token limited to `patterns` may see."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


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


def parse_xargs(words: Sequence[str],
                template: str | None = None) -> tuple[tuple[str, str], ...]:
    """Turn `--opt=value` / `--opt value` words into (option, value) pairs, or refuse.

    Only long options with a value are accepted; short options, bare words and flags are
    not, so every pair renders unambiguously as `--opt=value`. For a `template` in
    TEMPLATE_VALUES only its options are accepted, each value of its shape.
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
        if reserved_option(option, template):
            raise invalid("xargs", f"option --{option} is (or abbreviates) one set by the "
                                   "server and never by a client")
        value = plain_value(value, f"xargs --{option}")
        if template is not None and template in TEMPLATE_VALUES:
            value = template_value(template, option, value)
        pairs.append((option, value))
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


# -- container limits and autostart (issue #13 section 3) ------------------------------------
# A size: bytes as an integer, or digits and a binary unit ("512M" is 512 MiB, "2G", "1T").
# Bounded below so that no container is given a limit nothing runs in (1M, the smallest string),
# and above by what cgroups hold; the string's digits are bounded so it stays under SIZE_MAX.
SIZE_RE = re.compile(r"(?:([1-9][0-9]{0,11})M|([1-9][0-9]{0,8})G|([1-9][0-9]{0,5})T)")
SIZE_UNITS = (1 << 20, 1 << 30, 1 << 40)
SIZE_MIN = 1 << 20
SIZE_MAX = 1 << 60
# A cpuset list as the kernel reads it: "0-1,3". CPU numbers up to CPUS_MAX, few items.
CPUSET_RE = re.compile(r"[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?){0,63}")
CPUS_MAX = 4095
# cgroup v2's cpu.weight range (v1's cpu.shares is translated from it by the helper).
CPU_WEIGHT_MIN, CPU_WEIGHT_MAX = 1, 10000
AUTOSTART_DELAY_MAX = 3600  # seconds between this container's start and the next one's
AUTOSTART_ORDER_MAX = 10000  # lxc.start.order: higher starts first; -MAX..MAX


def size(value: int | str, field: str) -> int:
    """A size in bytes from an integer or a string such as "512M"; in [SIZE_MIN, SIZE_MAX]."""
    if isinstance(value, str):
        match = SIZE_RE.fullmatch(value)
        if match is None:
            raise invalid(field, "must be bytes as an integer or a string such as \"512M\" "
                                 "or \"2G\" (units M, G, T: powers of 1024)")
        value = next(int(digits) * unit for digits, unit in zip(match.groups(), SIZE_UNITS,
                                                                strict=True) if digits)
    if type(value) is not int or not SIZE_MIN <= value <= SIZE_MAX:
        raise invalid(field, f"must be between {SIZE_MIN} (1M) and {SIZE_MAX} bytes")
    return value


def cpuset(value: str, field: str = "cpus") -> str:
    """A cpuset list ("0-1,3"): numbers up to CPUS_MAX, each range low to high."""
    if not CPUSET_RE.fullmatch(value):
        raise invalid(field, "must be a list of CPU numbers and ranges such as \"0-1,3\"")
    for item in value.split(","):
        low, _, high = item.partition("-")
        if int(low) > CPUS_MAX or (high and not int(low) <= int(high) <= CPUS_MAX):
            raise invalid(field, f"CPU numbers go up to {CPUS_MAX}, each range low to high")
    return value


def bounded(value: int, field: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise invalid(field, f"must be an integer from {low} to {high}")
    return value
