"""The helper's settings, read from the [helperd] section and shared keys of lwp.toml.

Every allow-list the helper enforces (peers, templates, template options, stores) comes from
here; none has a client-controlled part.
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field

from helperd import templates as host
from helperd.idmap import IdMap, choose_idmap
from helperd.sessions import SessionPolicy, load_policy
from protocol import config, ops, rules
from protocol.config import ConfigError

DEFAULT_TEMPLATES = ["busybox"]
# The Debian releases a debian container may be made of, unless configured: the host's own.
# Older ones leave security support; testing and sid change daily while lxc-debian reuses its
# cached rootfs-<release>-<arch> for ever; trixie's systemd (257) no longer boots on the
# legacy cgroup v1 hierarchy that Debian 12 hosts may still run.
DEFAULT_DEBIAN_RELEASES = ["bookworm"]


@dataclass(frozen=True)
class HelperConfig:
    socket: str
    socket_group: str  # the group that may reach the socket: the frontend's, and nothing else
    allowed_uids: frozenset[int]  # peers served besides root (the frontend's user)
    state_dir: str
    audit_dir: str  # 0750 root:audit_group; the trail's files 0640, written by the helper only
    audit_group: str  # who may read the trail besides root (Debian's log readers: adm)
    audit_key_file: str  # the chain's HMAC key, 0600 root, apart from the token key
    audit_rotate_bytes: int  # the current file is rotated once it reaches this size
    audit_syslog: bool  # also send each record to journald or syslog when one is there
    audit_window: float  # seconds: reads and refusals are counted per key in such windows
    audit_window_keys: int  # keys counted in one window at most; past it, coarser keys
    audit_min_free_bytes: int  # below this much free under audit_dir, reads are refused
    audit_reserve_bytes: int  # below this, changes too (never run one unrecorded)
    token_requests_burst: int  # per token id: requests at once, then ...
    token_requests_per_second: float  # ... this many a second (root's CLI is not limited)
    lxcpath: str
    templates_dir: str
    templates: frozenset[str]  # templates a client may name (each must also be installed)
    template_options: dict[str, frozenset[str]]  # per template: the xargs options allowed
    # Per template, per `choice` option of rules.TEMPLATE_VALUES: the values this host allows.
    template_values: dict[str, dict[str, frozenset[str]]]
    # Per template: the options the helper itself passes (rules.HELPER_OPTIONS), with values.
    helper_options: dict[str, tuple[tuple[str, str], ...]]
    default_config: str  # the container config every create starts from
    stores: frozenset[str]
    stop_timeout: float  # clean shutdown wait before a hard stop; 0 stops hard at once
    freeze_timeout: float
    token_min_length: int
    read_workers: int
    start_method: str  # auto | fork | systemd: how containers are started (containers.py)
    op_timeouts: dict[str, float]  # per op: a deadline shorter than the default
    max_connections: int  # peer connections served at once; more are hung up on at once
    frame_timeout: float  # seconds for the rest of a frame once its length has arrived
    # Connection limits (issue #10): no peer, not even an allowed one, can lock root out.
    first_frame_timeout: float  # seconds a new connection has to send its first frame header
    max_connections_per_uid: int  # connections one non-root uid may hold at once
    root_reserved_connections: int  # of max_connections, slots only root (the CLI) may use
    # Issue #13: new containers are mapped into this range (helperd/idmap.py) unless privileged
    # ones are allowed here and asked for by an admin.
    idmap: IdMap
    allow_privileged: bool
    # Browser sessions ([helperd.session]): the group map, lifetimes, the refusal delay.
    session: SessionPolicy = field(default_factory=SessionPolicy)


def _uid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"helperd.allowed_users: no such user {user!r}") from None


def _template_options(sec: config.Section) -> dict[str, frozenset[str]]:
    options: dict[str, frozenset[str]] = {}
    for template in sec.data:
        allowed = frozenset(sec.strings(template, []))
        reserved = {option for option in allowed if rules.reserved_option(option, template)}
        if reserved:
            raise ConfigError(f"{sec.where}{template}: {sorted(reserved)} are (or abbreviate) "
                              "options liblxc or the helper sets and can never be allowed")
        table = rules.TEMPLATE_VALUES.get(template)
        unknown = sorted(allowed - set(table)) if table is not None else []
        if unknown:
            # Options without a value rule (lxc-debian's --auth-key reads a host file,
            # --keyring and --interpreter-path name one) have no place in the allow-list.
            raise ConfigError(f"{sec.where}{template}: {unknown} are not options the helper "
                              f"checks values of; allowed: {sorted(table or ())}")
        options[template] = allowed
    return options


def _template_values(sec: config.Section, release: str,
                     arch: str) -> dict[str, dict[str, frozenset[str]]]:
    """[helperd.template_values.<template>] <option> = [values]: each template of
    rules.TEMPLATE_VALUES, each `choice` option, each value of the option's shape."""
    defaults = {"debian": {"release": [release], "arch": [arch]}}
    for template in sec.data:
        if template not in rules.TEMPLATE_VALUES:
            raise ConfigError(f"{sec.where}{template}: no template with value rules; "
                              f"known: {sorted(rules.TEMPLATE_VALUES)}")
    values: dict[str, dict[str, frozenset[str]]] = {}
    for template, table in rules.TEMPLATE_VALUES.items():
        sub = sec.section(template)
        choices = {option for option, rule in table.items() if rule.choice}
        extra = sorted(set(sub.data) - choices)
        if extra:
            raise ConfigError(f"{sub.where}{extra[0]}: not a choice option of {template!r}; "
                              f"known: {sorted(choices)}")
        values[template] = {}
        for option in sorted(choices):
            allowed = sub.strings(option, defaults.get(template, {}).get(option, []))
            for value in allowed:
                if not table[option].shape.fullmatch(value):
                    raise ConfigError(f"{sub.where}{option}: {value!r} is not "
                                      f"{table[option].what}")
            values[template][option] = frozenset(allowed)
    return values


def _mirror(sec: config.Section, release: str) -> str:
    mirror = sec.get("debian_mirror", str, "") or host.host_mirror(release)
    if not rules.MIRROR_RE.fullmatch(mirror):
        raise ConfigError("helperd.debian_mirror: must be an http:// or https:// URL of a "
                          "Debian mirror (host, port, path of A-Z a-z 0-9 . _ ~ / -)")
    return mirror


def _op_timeouts(sec: config.Section) -> dict[str, float]:
    timeouts: dict[str, float] = {}
    for name in sec.data:
        op = ops.OPS.get(name)
        if op is None:
            raise ConfigError(f"{sec.where}{name}: no such operation")
        value = sec.get(name, float, 0.0)
        # Shorter than the frontend's wait, or the frontend gives up before the helper does.
        if not 0 < value < op.timeout:
            raise ConfigError(f"{sec.where}{name}: must be more than 0 and less than "
                              f"{op.timeout:g} seconds")
        timeouts[name] = value
    return timeouts


# key -> (lowest, highest) allowed value: a typo must not disable a defence.
LIMITS: dict[str, tuple[float, float]] = {
    "audit_window": (1, 3600),
    "audit_window_keys": (16, 1_000_000),
    "audit_min_free_bytes": (0, 1 << 62),
    "audit_reserve_bytes": (0, 1 << 62),
    "token_requests_burst": (1, 1_000_000),
    "token_requests_per_second": (0.01, 1_000_000),
}


def _check_limits(cfg: HelperConfig) -> None:
    for key, (low, high) in LIMITS.items():
        if not low <= getattr(cfg, key) <= high:
            raise ConfigError(f"helperd.{key}: must be {low:g} to {high:g}")
    if cfg.audit_reserve_bytes > cfg.audit_min_free_bytes:
        # Reads go first: a read refused while changes still run keeps room for the changes.
        raise ConfigError("helperd.audit_reserve_bytes: must not exceed audit_min_free_bytes")


def load(path: str | None) -> HelperConfig:
    top = config.load(path)
    sec = top.section("helperd")
    group = sec.get("socket_group", str, config.SERVICE_USER)
    try:
        grp.getgrnam(group)
    except KeyError:
        raise ConfigError(f"helperd.socket_group: no such group {group!r}") from None
    release = DEFAULT_DEBIAN_RELEASES[0]
    max_connections = sec.get("max_connections", int, 64)
    root_reserved = sec.get("root_reserved_connections", int, max_connections // 8)
    cfg = HelperConfig(
        socket=top.get("socket", str, config.DEFAULT_SOCKET),
        socket_group=group,
        allowed_uids=frozenset(_uid(u) for u in sec.strings("allowed_users",
                                                             [config.SERVICE_USER])),
        state_dir=top.get("state_dir", str, config.DEFAULT_STATE_DIR),
        audit_dir=sec.get("audit_dir", str, config.DEFAULT_AUDIT_DIR),
        audit_group=sec.get("audit_group", str, "adm"),
        audit_key_file=sec.get("audit_key_file", str, os.path.join(
            top.get("state_dir", str, config.DEFAULT_STATE_DIR), "audit.key")),
        audit_rotate_bytes=sec.get("audit_rotate_bytes", int, 16 * 1024 * 1024),
        audit_syslog=sec.get("audit_syslog", bool, True),
        audit_window=sec.get("audit_window", float, 60.0),
        audit_window_keys=sec.get("audit_window_keys", int, 4096),
        audit_min_free_bytes=sec.get("audit_min_free_bytes", int, 256 * 1024 * 1024),
        audit_reserve_bytes=sec.get("audit_reserve_bytes", int, 32 * 1024 * 1024),
        token_requests_burst=sec.get("token_requests_burst", int, 10_000),
        token_requests_per_second=sec.get("token_requests_per_second", float, 5000.0),
        lxcpath=sec.get("lxcpath", str, "/var/lib/lxc"),
        templates_dir=sec.get("templates_dir", str, "/usr/share/lxc/templates"),
        templates=frozenset(sec.strings("templates", DEFAULT_TEMPLATES)),
        template_options=_template_options(sec.section("template_options")),
        template_values=_template_values(sec.section("template_values"), release,
                                         host.host_arch()),
        helper_options={"debian": (("mirror", _mirror(sec, release)),)},
        default_config=sec.get("default_config", str, "/etc/lxc/default.conf"),
        stores=frozenset(sec.strings("stores", ["dir"])),
        stop_timeout=sec.get("stop_timeout", float, 30.0),
        freeze_timeout=sec.get("freeze_timeout", float, 10.0),
        token_min_length=top.section("tokens").get("min_length", int,
                                                   config.DEFAULT_TOKEN_MIN_LENGTH),
        read_workers=sec.get("read_workers", int, 8),
        start_method=sec.get("start_method", str, "auto"),
        op_timeouts=_op_timeouts(sec.section("op_timeouts")),
        max_connections=max_connections,
        frame_timeout=sec.get("frame_timeout", float, 10.0),
        first_frame_timeout=sec.get("first_frame_timeout", float, 10.0),
        max_connections_per_uid=sec.get("max_connections_per_uid", int,
                                        min(48, max_connections - root_reserved)),
        root_reserved_connections=root_reserved,
        idmap=choose_idmap(sec.get("idmap", str, "") if "idmap" in sec.data else None),
        allow_privileged=sec.get("allow_privileged", bool, False),
        session=load_policy(sec.section("session")),
    )
    for key in ("lxcpath", "templates_dir", "state_dir", "audit_dir", "audit_key_file"):
        if not os.path.isabs(getattr(cfg, key)):
            raise ConfigError(f"{key}: must be an absolute path")
    try:
        grp.getgrnam(cfg.audit_group)
    except KeyError:
        raise ConfigError(f"helperd.audit_group: no such group {cfg.audit_group!r}") from None
    if not 1024 <= cfg.audit_rotate_bytes <= 1 << 30:
        raise ConfigError("helperd.audit_rotate_bytes: must be 1 KiB to 1 GiB")
    _check_limits(cfg)
    if cfg.start_method not in ("auto", "fork", "systemd"):
        raise ConfigError("helperd.start_method: must be auto, fork or systemd")
    if not 1 <= cfg.max_connections <= 4096:
        raise ConfigError("helperd.max_connections: must be 1 to 4096")
    if not 0 < cfg.frame_timeout <= 300:
        raise ConfigError("helperd.frame_timeout: must be more than 0 and at most 300 seconds")
    if not 0 < cfg.first_frame_timeout <= 300:
        raise ConfigError("helperd.first_frame_timeout: must be more than 0 and at most 300 "
                          "seconds")
    if not 0 <= cfg.root_reserved_connections < cfg.max_connections:
        raise ConfigError("helperd.root_reserved_connections: must be 0 or more and less than "
                          "max_connections")
    if not 1 <= cfg.max_connections_per_uid <= cfg.max_connections:
        raise ConfigError("helperd.max_connections_per_uid: must be 1 to max_connections")
    if cfg.token_min_length < ops.TOKEN_FLOOR:
        raise ConfigError(f"tokens.min_length: must be at least {ops.TOKEN_FLOOR}")
    return cfg
