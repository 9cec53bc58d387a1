"""Properties of the input rules and the request codec, under generated input (hypothesis).

Anything a name or template rule accepts stays inside its directory; anything the xargs rule
accepts renders to words no template can read as an option liblxc sets; decoding never fails
with anything but an LwpError. Each property runs briefly in the normal suite and at length
under `make security`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from protocol import framing, ops, rules, session
from protocol.errors import LwpError
from tests.conftest import REAL_TEMPLATES

LXCPATH = "/var/lib/lxc"
TEMPLATES = "/usr/share/lxc/templates"


def runs(short: int, long: int) -> pytest.MarkDecorator:
    """Parametrize a property: a short run in the normal suite, a long one under security."""
    return pytest.mark.parametrize("examples", [
        pytest.param(short, id="short"),
        pytest.param(long, id="long", marks=pytest.mark.security)])


def run(examples: int, test: Callable[..., None]) -> None:
    """Run a @given test with `examples` cases (no example database in the work tree)."""
    settings(max_examples=examples, deadline=None, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])(test)()


# Text that reaches the interesting corners: separators, dots, dashes, controls, non-ASCII.
TRICKY = st.text(alphabet=st.sampled_from("aZ09._-/\\ \t\n\x00~*$;'\"é\u202e\udcff"),
                 max_size=70)
ANY_TEXT = st.one_of(TRICKY, st.text(max_size=80))


def _candidates(pattern: re.Pattern[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(pattern, fullmatch=True), ANY_TEXT)


def accepted(check: Callable[[str], Any], value: str) -> bool:
    try:
        check(value)
    except LwpError as exc:
        assert exc.code == "invalid-request"
        return False
    return True


# -- names and templates resolve inside their directory -------------------------------------

@runs(300, 2500)
def test_accepted_container_names_stay_directly_inside_the_lxcpath(examples: int) -> None:
    @given(_candidates(rules.NAME_RE))
    @example("..")
    @example(".")
    @example("-n")
    @example("../x")
    @example("a/../../b")
    @example("x" * 65)
    def check(name: str) -> None:
        if not accepted(rules.container_name, name):
            return
        path = os.path.normpath(os.path.join(LXCPATH, name))
        assert os.path.dirname(path) == LXCPATH and os.path.basename(path) == name
        assert name not in (".", "..") and not name.startswith(("-", "."))
        assert "/" not in name and "\x00" not in name and 1 <= len(name) <= 64
        assert name.isascii() and name.isprintable() and not any(c.isspace() for c in name)
    run(examples, check)


@runs(300, 2500)
def test_accepted_templates_resolve_to_lxc_name_inside_the_templates_dir(examples: int) -> None:
    @given(_candidates(rules.TEMPLATE_RE))
    @example("../busybox")
    @example("/bin/sh")
    @example("..")
    def check(template: str) -> None:
        if not accepted(rules.template_name, template):
            return
        assert "/" not in template and "\x00" not in template
        path = os.path.normpath(os.path.join(TEMPLATES, f"lxc-{template}"))
        assert os.path.dirname(path) == TEMPLATES
        assert os.path.basename(path) == f"lxc-{template}"
    run(examples, check)


# -- xargs can never be read as an option liblxc sets ---------------------------------------

_OPTION = st.one_of(st.from_regex(rules.OPTION_RE, fullmatch=True),
                    st.sampled_from(sorted(rules.RESERVED_OPTIONS)),
                    st.sampled_from(["p", "pa", "pat", "na", "r", "ro", "rootf", "mapped",
                                     "mapped-u", "m", "P", "path ", "-path", ""]),
                    st.text(max_size=8))
_VALUE = st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                           min_size=1, max_size=12),
                   st.sampled_from(["-x", "--path=/", "=x", "a\nb", "\x00", "", " x", "x" * 257]),
                   st.text(max_size=12))
_WORD = st.one_of(
    st.builds(lambda o, v: f"--{o}={v}", _OPTION, _VALUE),
    st.builds(lambda o: f"--{o}", _OPTION),
    _VALUE,
    st.sampled_from(["-n", "-p", "--", "-", "--=x", "---a=b"]),
)
XARGS = st.one_of(st.lists(_WORD, max_size=8),
                  st.lists(st.builds(lambda o, v: f"--{o}={v}", _OPTION, _VALUE), max_size=40))


def _pairs(words: list[str]) -> tuple[tuple[str, str], ...] | None:
    try:
        return rules.parse_xargs(words)
    except LwpError as exc:
        assert exc.code == "invalid-request"
        return None


@runs(200, 1500)
def test_accepted_xargs_render_to_unambiguous_unreserved_options(examples: int) -> None:
    @given(XARGS)
    @example(["--pa=/etc"])
    @example(["--path", "/"])
    @example(["--flavor", "-rf"])
    @example(["--release=x", "--name=y"])
    def check(words: list[str]) -> None:
        pairs = _pairs(words)
        if pairs is None:
            return
        rendered = rules.render_xargs(pairs)
        assert len(pairs) <= rules.MAX_XARGS
        for word in rendered:
            assert word.startswith("--") and "=" in word
            option, _, value = word[2:].partition("=")
            assert rules.OPTION_RE.fullmatch(option)
            # Not a reserved option, and not a prefix getopt would expand to one.
            assert not any(reserved.startswith(option) for reserved in rules.RESERVED_OPTIONS)
            assert value and not value.startswith("-")
            assert value.isprintable() and "\x00" not in value
        assert rules.parse_xargs(rendered) == pairs  # the rendering says what was accepted
    run(examples, check)


def _busybox_getopt_spec() -> tuple[str, str]:
    """The option spec the installed lxc-busybox template parses its arguments with."""
    with open(os.path.join(REAL_TEMPLATES, "lxc-busybox")) as f:
        found = re.search(r"getopt -o (\S+) -l (\S+) --", f.read())
    assert found, "lxc-busybox no longer calls getopt as expected"
    return found.group(1), found.group(2)


LIBLXC_ARGS = ["--path=/var/lib/lxc/c1", "--name=c1", "--rootfs=/var/lib/lxc/c1/rootfs"]


@runs(60, 400)
def test_the_real_getopt_keeps_liblxcs_values_after_any_accepted_xargs(examples: int) -> None:
    short, long = _busybox_getopt_spec()

    @given(XARGS)
    @example(["--rootfs-extra=x"])
    @example(["--busybox-path=/x"])
    def check(words: list[str]) -> None:
        pairs = _pairs(words)
        if pairs is None:
            return
        # -q: options the template does not know are dropped, as its getopt call would
        # refuse them; what is left shows which options the template would set.
        out = subprocess.run(["getopt", "-q", "-o", short, "-l", long, "--", *LIBLXC_ARGS,
                              *rules.render_xargs(pairs)], capture_output=True, text=True)
        parsed = shlex.split(out.stdout)
        seen: dict[str, list[str]] = {}
        for i, word in enumerate(parsed[:parsed.index("--")]):
            if word.startswith("--"):
                seen.setdefault(word[2:], []).append(parsed[i + 1])
        for given_arg in LIBLXC_ARGS:
            option, _, value = given_arg[2:].partition("=")
            assert seen.pop(option) == [value], out.stdout
        assert not set(seen) & rules.RESERVED_OPTIONS, out.stdout
    run(examples, check)


@runs(100, 1500)
def test_templates_without_value_rules_parse_xargs_as_before(examples: int) -> None:
    @given(XARGS, st.sampled_from(["busybox", "recorder", "download", "ubuntu"]))
    @example(["--mirror=http://x"], "busybox")
    @example(["--mi=x"], "ubuntu")
    def check(words: list[str], template: str) -> None:
        assert template not in rules.TEMPLATE_VALUES
        assert _pairs(words) == _pairs_for(words, template)
    run(examples, check)


def _pairs_for(words: list[str], template: str) -> tuple[tuple[str, str], ...] | None:
    try:
        return rules.parse_xargs(words, template)
    except LwpError as exc:
        assert exc.code == "invalid-request"
        return None


# -- debian: only allow-listed options, values of their shapes, never the helper's mirror ---

def _debian_getopt_spec() -> tuple[str, str]:
    with open(os.path.join(REAL_TEMPLATES, "lxc-debian")) as f:
        found = re.search(r"getopt -o (\S+) -l (\S+) --", f.read())
    assert found, "lxc-debian no longer calls getopt as expected"
    return found.group(1), found.group(2)


_DEBIAN_OPTION = st.one_of(
    st.sampled_from(["release", "arch", "packages", "mirror", "mirro", "mi", "m", "rel", "re",
                     "a", "ar", "package", "pac", "auth-key", "keyring", "security-mirror",
                     "interpreter-path", "clean", "flush-cache", "enable-non-free", "help"]),
    _OPTION)
_DEBIAN_VALUE = st.one_of(
    st.sampled_from(["bookworm", "sid", "amd64", "arm64", "curl,iproute2", "a,b", "Bad", "c++",
                     "x" * 101, ",", "curl,", "../x", "http://192.0.2.1/d"]),
    st.builds(",".join, st.lists(st.from_regex(rules.PACKAGE_RE, fullmatch=True), max_size=40)),
    _VALUE)
DEBIAN_XARGS = st.lists(st.builds(lambda o, v: f"--{o}={v}", _DEBIAN_OPTION, _DEBIAN_VALUE),
                        max_size=6)
MIRROR = "http://deb.debian.org/debian"


@runs(100, 1500)
def test_accepted_debian_xargs_are_allow_listed_shaped_and_never_move_the_mirror(
        examples: int) -> None:
    short, long = _debian_getopt_spec()
    table = rules.TEMPLATE_VALUES["debian"]

    @given(DEBIAN_XARGS)
    @example(["--mi=http://192.0.2.1/debian"])
    @example(["--release=bookworm", "--packages=curl,iproute2"])
    def check(words: list[str]) -> None:
        pairs = _pairs_for(words, "debian")
        if pairs is None:
            return
        for option, value in pairs:
            rule = table[option]  # only the table's options are accepted
            items = [value] if rule.choice else value.split(",")
            assert len(items) <= rule.max_items
            assert all(rule.shape.fullmatch(item) for item in items)
        # What the real lxc-debian getopt makes of liblxc's arguments, the client's, and the
        # mirror the helper appends: liblxc's and the helper's values are the ones it keeps.
        out = subprocess.run(["getopt", "-o", short, "-l", long, "--", *LIBLXC_ARGS,
                              *rules.render_xargs(pairs), f"--mirror={MIRROR}"],
                             capture_output=True, text=True, check=True)
        parsed = shlex.split(out.stdout)
        seen: dict[str, list[str]] = {}
        for i, word in enumerate(parsed[:parsed.index("--")]):
            if word.startswith("--"):
                seen.setdefault(word[2:], []).append(parsed[i + 1])
        assert seen.pop("mirror") == [MIRROR], out.stdout
        for given_arg in LIBLXC_ARGS:
            option, _, value = given_arg[2:].partition("=")
            assert seen.pop(option) == [value], out.stdout
        assert set(seen) <= set(table), out.stdout
    run(examples, check)


# -- the request codec ---------------------------------------------------------------------

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.from_regex(rules.NAME_RE, fullmatch=True),
    "source": st.from_regex(rules.NAME_RE, fullmatch=True),
    "container": st.from_regex(rules.NAME_RE, fullmatch=True),
    "template": st.from_regex(rules.TEMPLATE_RE, fullmatch=True),
    "store": st.from_regex(rules.STORE_RE, fullmatch=True),
    "xargs": st.lists(st.builds(
        lambda o, v: f"--{o}={v}",
        st.from_regex(rules.OPTION_RE, fullmatch=True).filter(
            lambda o: not rules.reserved_option(o)),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1,
                max_size=20).filter(lambda v: v.isprintable() and not v.startswith("-"))),
        max_size=5).map(tuple),
    "force": st.booleans(),
    "token": st.from_regex(rules.TOKEN_RE, fullmatch=True),
    "description": st.text(max_size=rules.MAX_DESCRIPTION + 4),
    "scope": st.sampled_from(rules.SCOPES),
    "expires": st.one_of(st.floats(min_value=1, max_value=2**40), st.integers(1, 2**40)),
    "id": st.integers(1, 2**63),
    "since": st.datetimes().map(lambda d: d.isoformat()),
    "until": st.dates().map(lambda d: d.isoformat()),
    "actor": st.text(min_size=1, max_size=20),
    "op": st.sampled_from(sorted(ops.OPS)),
    "outcome": st.sampled_from(["ok", "denied", "invalid", "error", "timeout"]),
    "limit": st.integers(1, 500),
    "cursor": st.integers(0, 2**40),
    "containers": st.lists(st.from_regex(rules.PATTERN_RE, fullmatch=True), min_size=1,
                           max_size=rules.MAX_PATTERNS).map(tuple),
    # Limits and autostart (a combination a request refuses is skipped by the builders).
    "memory_limit": st.one_of(st.integers(1 << 20, 1 << 40), st.sampled_from(["512M", "2G"])),
    "memory_swap_limit": st.one_of(st.integers(1 << 20, 1 << 40), st.just("1T")),
    "cpus": st.sampled_from(["0", "0-1", "0-1,3"]),
    "cpu_weight": st.integers(1, 10000),
    "autostart": st.booleans(),
    "privileged": st.booleans(),
    "autostart_delay": st.integers(0, 3600),
    "autostart_order": st.integers(-10000, 10000),
    "unset": st.lists(st.sampled_from(["memory_limit", "cpus", "autostart"]), max_size=2,
                      unique=True).map(tuple),
    # The events stream's subscription and the sign-in.
    "types": st.lists(st.sampled_from(["lifecycle", "operation", "audit"]), min_size=1,
                      max_size=3, unique=True).map(tuple),
    "after": st.integers(0, 2**40),
    "after_epoch": st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    "username": st.from_regex(session.USER_RE, fullmatch=True),
    "password": st.text(min_size=1, max_size=64).filter(lambda p: "\0" not in p),
}


def test_every_request_field_has_a_strategy() -> None:
    fields = {f.name for op in ops.OPS.values() for f in dataclasses.fields(op.request)}
    assert fields <= set(FIELD_VALUES), f"add strategies for {fields - set(FIELD_VALUES)}"


@st.composite
def valid_envelopes(draw: st.DrawFn) -> ops.Envelope:
    op = draw(st.sampled_from(sorted(ops.OPS)))
    cls = ops.OPS[op].request
    kwargs = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING
        if required or draw(st.booleans()):
            kwargs[f.name] = draw(FIELD_VALUES[f.name])
    try:
        request = cls(**kwargs)
        envelope = ops.Envelope(draw(st.from_regex(ops.REQUEST_ID_RE, fullmatch=True)),
                                draw(st.none() | FIELD_VALUES["token"]),
                                draw(st.text(max_size=ops.MAX_CLIENT)), request)
    except LwpError:
        assume(False)
        raise
    return envelope


@runs(200, 1000)
def test_valid_requests_survive_encode_frame_decode(examples: int) -> None:
    @given(valid_envelopes())
    def check(envelope: ops.Envelope) -> None:
        data = framing.encode_frame(ops.encode_request(envelope))
        length = framing.body_length(data[:framing.HEADER.size])
        assert len(data) == framing.HEADER.size + length
        body = data[framing.HEADER.size:]
        assert ops.decode_request(framing.decode_untrusted_body(body)) == envelope
    run(examples, check)


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.binary(max_size=20))
ANYTHING = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)),
    max_leaves=20)


@st.composite
def near_requests(draw: st.DrawFn) -> object:
    """Objects shaped like requests, each field valid, hostile or of any type."""
    op = draw(st.one_of(st.sampled_from(sorted(ops.OPS)), ANY_TEXT))
    cls = ops.OPS[op].request if op in ops.OPS else ops.CreateContainer
    args: dict[Any, Any] = {}
    for f in dataclasses.fields(cls):
        choice = draw(st.integers(0, 4))
        if choice == 0:
            continue
        args[f.name] = draw(FIELD_VALUES[f.name].map(
            lambda v: list(v) if isinstance(v, tuple) else v) if choice < 3
            else st.one_of(ANYTHING, ANY_TEXT, st.lists(ANY_TEXT, max_size=4)))
    envelope: dict[Any, Any] = {
        "id": draw(st.one_of(st.from_regex(ops.REQUEST_ID_RE, fullmatch=True), ANYTHING)),
        "op": op,
        "token": draw(st.one_of(st.none(), FIELD_VALUES["token"], ANYTHING)),
        "client": draw(st.one_of(st.text(max_size=ops.MAX_CLIENT + 2), ANYTHING)),
        "args": args if draw(st.integers(0, 5)) else draw(ANYTHING),
    }
    for key in draw(st.lists(st.sampled_from(sorted(envelope)), max_size=2)):
        envelope.pop(key, None)
    envelope.update(draw(st.dictionaries(st.one_of(ANY_TEXT, st.integers()), ANYTHING,
                                         max_size=1)))
    return envelope


@runs(200, 1500)
def test_decode_request_raises_only_short_printable_lwp_errors(examples: int) -> None:
    @given(st.one_of(near_requests(), ANYTHING))
    def check(obj: object) -> None:
        try:
            envelope = ops.decode_request(obj)
        except LwpError as exc:
            assert exc.code == "invalid-request"
            # Quoted input is bounded and escaped: the message is safe in a log line.
            assert exc.message.isprintable() and len(exc.message) < 200, exc.message
            return
        # What decodes is exactly what was sent: encoding it again gives the same fields.
        assert isinstance(obj, dict)
        again = ops.encode_request(envelope)
        assert {k: again[k] for k in obj if k != "args"} == {k: obj[k] for k in obj
                                                             if k != "args"}
        assert {k: again["args"][k] for k in obj["args"]} == obj["args"]
    run(examples, check)
