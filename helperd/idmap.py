"""The id range new containers are mapped into (lxc.idmap): configured, or root's range in
/etc/subuid and /etc/subgid, or 100000 65536. Parsed strictly; never a range holding host ids
Debian gives to users (container root must be nobody on the host).
"""
from __future__ import annotations

from dataclasses import dataclass

from protocol.config import ConfigError

DEFAULT = (100000, 65536)
SUBID_FILES = {"u": "/etc/subuid", "g": "/etc/subgid"}
# Debian's UID_MAX is 60000 and nobody is 65534: a range from here up holds no user of the host.
LOWEST_START = 65536
ID_END = 1 << 32  # (uid_t)-1 is no id: a range ends before it
SUBID_USERS = ("root", "0")  # how /etc/subuid names root: by name or by uid


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def __str__(self) -> str:
        return f"{self.start}-{self.end - 1}"


@dataclass(frozen=True)
class IdMap:
    uid: IdRange
    gid: IdRange
    source: str  # where it came from, for the doctor: helperd.idmap, a file, or the default

    def lines(self) -> list[str]:
        """The lxc.idmap values: container root and every id above it, into the range."""
        return [f"u 0 {self.uid.start} {self.uid.count}", f"g 0 {self.gid.start} {self.gid.count}"]


def checked(start: int, count: int, where: str) -> IdRange:
    if not LOWEST_START <= start or count < 1 or start + count >= ID_END:
        raise ConfigError(f"{where}: the range must start at {LOWEST_START} or above (above "
                          f"every id Debian gives to users), hold at least one id and end "
                          f"below {ID_END - 1}")
    return IdRange(start, count)


def _number(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise ConfigError(f"{where}: {text!r} is not a number")
    return int(text)


def parse_setting(value: str) -> IdRange:
    """`helperd.idmap = "START COUNT"`."""
    words = value.split(" ")
    if len(words) != 2:
        raise ConfigError('helperd.idmap: must be "START COUNT", e.g. "100000 65536"')
    return checked(_number(words[0], "helperd.idmap"), _number(words[1], "helperd.idmap"),
                   "helperd.idmap")


def subid_ranges(path: str) -> list[tuple[str, IdRange | None]]:
    """Every `name:start:count` line of a subordinate id file (blank lines and # comments
    skipped); a malformed line is a ConfigError naming it. Ranges not usable by the rule
    above are kept as None: another user's range is the doctor's business, not ours."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    found: list[tuple[str, IdRange | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        fields = line.split(":")
        if len(fields) != 3 or not fields[0]:
            raise ConfigError(f"{where}: must be NAME:START:COUNT")
        start, count = _number(fields[1], where), _number(fields[2], where)
        try:
            found.append((fields[0], checked(start, count, where)))
        except ConfigError:
            if fields[0] in SUBID_USERS:
                raise
            found.append((fields[0], None))
    return found


def roots_range(path: str) -> IdRange | None:
    """Root's first range in `path`; None when the file is missing or names none for root."""
    try:
        ranges = subid_ranges(path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return next((r for name, r in ranges if name in SUBID_USERS), None)


def choose_idmap(setting: str | None) -> IdMap:
    """The configured range if any; else root's ranges from the subordinate id files, each
    kind on its own; else the default."""
    if setting is not None:
        configured = parse_setting(setting)
        return IdMap(configured, configured, "helperd.idmap")
    default = IdRange(*DEFAULT)
    uid, gid = roots_range(SUBID_FILES["u"]), roots_range(SUBID_FILES["g"])
    if uid is None and gid is None:
        return IdMap(default, default, "the default")
    return IdMap(uid or default, gid or default, f"{SUBID_FILES['u']} and {SUBID_FILES['g']}")
