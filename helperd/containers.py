"""The liblxc backend: the only module that imports lxc. Every method blocks; none trusts input.

Mutating methods run in a worker process (see isolate.py): liblxc's start() moves its caller
into the container's monitor cgroup, and a hung liblxc call can then be killed.
Each method re-checks the name rule before a name reaches liblxc, which validates none.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Set
from typing import Any

import lxc

from helperd import cgroupstats, netaddr
from helperd.config import HelperConfig
from protocol import ops, rules
from protocol.config import ConfigError
from protocol.errors import LwpError, invalid

# A host-side interface name as liblxc reports it, safe to put in a /sys path.
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
RUNNING = frozenset({"RUNNING", "FROZEN"})
# Changes that copy or build a root filesystem, run niced (perform()).
BACKGROUND = frozenset({"create_container", "clone_container"})
BACKGROUND_NICE = 10


def _state_error(name: str, state: str, action: str) -> LwpError:
    why = {
        "RUNNING": "is already running" if action in ("start", "unfreeze") else "is running",
        "STOPPED": "is not running",
        "FROZEN": "is frozen" + ("; unfreeze it first" if action == "start" else ""),
    }.get(state, f"is {state.lower()}")
    return LwpError("invalid-state", f"cannot {action} container {name!r}: it {why}")


class Containers:
    def __init__(self, cfg: HelperConfig) -> None:
        self.cfg = cfg
        self.cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        self.start_as_unit = start_as_unit(cfg.start_method, cfg.lxcpath)

    # -- lookups -------------------------------------------------------------------------

    def _container(self, name: str) -> Any:
        rules.container_name(name)
        return lxc.Container(name, self.cfg.lxcpath)

    def _existing(self, name: str, missing: str = "no-such-container") -> Any:
        c = self._container(name)
        if not c.defined:
            raise LwpError(missing, f"container {name!r} does not exist")
        return c

    def _in_state(self, name: str, action: str, allowed: Set[str]) -> Any:
        c = self._existing(name)
        state = c.state
        if state not in allowed:
            raise _state_error(name, state, action)
        return c

    def _absent(self, name: str) -> Any:
        c = self._container(name)
        if c.defined or os.path.lexists(os.path.join(self.cfg.lxcpath, name)):
            raise LwpError("container-exists", f"container {name!r} already exists")
        return c

    # -- reads (run in the helper's thread pool) ----------------------------------------

    def list_containers(self) -> list[dict[str, str]]:
        names = lxc.list_containers(config_path=self.cfg.lxcpath, as_object=False)
        listing = []
        for name in sorted(names):
            # Containers made outside the API with names that break the rule are not listed:
            # no client could address them anyway.
            if not rules.NAME_RE.fullmatch(name):
                continue
            try:
                state = lxc.Container(name, self.cfg.lxcpath).state
            except RuntimeError:
                continue  # destroyed between the directory listing and this look
            listing.append({"container": name, "state": state.lower()})
        return listing

    def container_info(self, name: str) -> dict[str, Any]:
        c = self._existing(name, "not-found")
        state = c.state
        if state == "STOPPED":
            return {"name": name, "state": state, "pid": 0}
        stats = (cgroupstats.v2 if self.cgroup_v2 else cgroupstats.v1)(c.get_cgroup_item)
        host_rx, host_tx = self._host_side_bytes(c)
        pid = int(c.init_pid)
        if pid < 1:  # it stopped while we looked
            return {"name": name, "state": "STOPPED", "pid": 0}
        # Not c.get_ips(): liblxc forks the whole helper for it (netaddr.py says why not).
        ip = netaddr.first_address(pid)
        return {"name": name, "state": state, "pid": pid, "ip": ip,
                "link": _config_item(c.get_config_item, "lxc.net.0.link"),
                # Seen from the container: what it receives is what the host side sends.
                "rx_bytes": host_tx, "tx_bytes": host_rx, **stats}

    @staticmethod
    def _host_side_bytes(c: Any) -> tuple[int, int]:
        ifname = _config_item(c.get_running_config_item, "lxc.net.0.veth.pair")
        if not IFNAME_RE.fullmatch(ifname):
            return 0, 0
        counts = []
        for direction in ("rx_bytes", "tx_bytes"):
            try:
                with open(f"/sys/class/net/{ifname}/statistics/{direction}") as f:
                    counts.append(int(f.read().strip() or 0))
            except (OSError, ValueError):
                counts.append(0)
        return counts[0], counts[1]

    # -- state changes (run in a worker process, see isolate.py) --------------------------

    def perform(self, request: ops.Request) -> None:
        """Make the change `request` asks for: the method named like its op."""
        op = ops.OP_OF_REQUEST[type(request)].name
        if op in BACKGROUND:
            # A template or a rootfs copy runs for seconds on end: at a lower CPU priority
            # (its processes inherit it), so that the requests answered meanwhile keep their
            # pace. For good: raising it again would need CAP_SYS_NICE, which the helper's
            # unit does not grant; the worker retires instead (isolate.py), a fork against a
            # create's 0.4 s.
            os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)
        getattr(self, op)(request)

    def start_container(self, req: ops.StartContainer) -> None:
        self._start(self._in_state(req.name, "start", {"STOPPED"}))

    def stop_container(self, req: ops.StopContainer) -> None:
        self._stop(self._in_state(req.name, "stop", RUNNING), clean=True)

    def freeze_container(self, req: ops.FreezeContainer) -> None:
        self._set_frozen(self._in_state(req.name, "freeze", {"RUNNING"}), True)

    def unfreeze_container(self, req: ops.UnfreezeContainer) -> None:
        self._set_frozen(self._in_state(req.name, "unfreeze", {"FROZEN"}), False)

    def restart_container(self, req: ops.RestartContainer) -> None:
        # Like `systemctl restart`: a stopped container is simply started.
        c = self._existing(req.name)
        if c.state in RUNNING:
            self._stop(c, clean=True)
        self._start(c)

    def _start(self, c: Any) -> None:
        if self.start_as_unit:
            self._start_unit(c)
            return
        # close_fds: the container's monitor must not inherit the helper's sockets.
        if not c.start(close_fds=True) or not c.wait("RUNNING", 10):
            raise LwpError("operation-failed", f"liblxc could not start container {c.name!r}")

    def _start_unit(self, c: Any) -> None:
        """Start the container as Debian's lxc@NAME.service, outside the helper's sandbox.

        Started from this process, a container would inherit the helper unit's no_new_privs,
        seccomp filter, capability bounding set and mount namespace, live in its cgroup, and be
        killed with it. As a unit of its own it inherits none of that and outlives a restart
        or an upgrade of the helper. (systemctl is given an argument list: no shell.)
        """
        unit = f"lxc@{c.name}.service"  # the name rule keeps it a valid, unescaped instance
        self._systemctl("reset-failed", unit)  # a hard stop leaves the unit failed
        done = self._systemctl("start", "--no-ask-password", unit)
        if done.returncode != 0 or not c.wait("RUNNING", 10):
            raise LwpError("operation-failed", f"could not start {unit} "
                                               f"(see journalctl -u {unit}): {done.stderr.strip()}")

    @staticmethod
    def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/systemctl", *args], capture_output=True, text=True,
                              check=False, timeout=60)

    def _stop(self, c: Any, clean: bool) -> None:
        if c.state == "FROZEN":
            self._set_frozen(c, False)
        timeout = self.cfg.stop_timeout if clean else 0
        # As lxc-stop does: ask init to shut down cleanly, then kill after the timeout.
        if timeout > 0 and c.shutdown(math.ceil(timeout)):
            return
        if not c.stop() or not c.wait("STOPPED", 10):
            raise LwpError("operation-failed", f"liblxc could not stop container {c.name!r}")

    def _set_frozen(self, c: Any, frozen: bool) -> None:
        # Through liblxc, not by writing the freezer file ourselves: LXC 5 reports the state
        # its monitor was told, so a freeze done behind its back still reads RUNNING.
        # liblxc's freeze can hang for ever; the caller runs this with a deadline and
        # thaws with `thaw_after_timeout` if it passes.
        if not (c.freeze() if frozen else c.unfreeze()):
            raise LwpError("operation-failed", f"liblxc could not "
                           f"{'freeze' if frozen else 'unfreeze'} container {c.name!r}")

    def state_of(self, name: str) -> str:
        """liblxc's word for a container's state: STOPPED, RUNNING, FREEZING, FROZEN, ..."""
        return str(self._existing(name).state)

    def thaw_after_timeout(self, name: str) -> None:
        """Undo a freeze that missed its deadline, so the container is left running.

        liblxc's unfreeze writes THAWED to the cgroup and tells the monitor, which also
        clears the FREEZING state the killed freeze left behind."""
        self._existing(name).unfreeze()

    def create_container(self, req: ops.CreateContainer) -> None:
        template = self._template(req.template)
        store = self._store(req.store)
        pairs = rules.parse_xargs(req.xargs)
        allowed = self.cfg.template_options.get(req.template, frozenset())
        for option, _value in pairs:
            if option not in allowed:
                raise invalid("xargs", f"option --{option} is not allowed for template "
                                       f"{req.template!r}")
        c = self._absent(req.name)
        c.clear_config()
        if not c.load_config(self.cfg.default_config):
            raise LwpError("operation-failed", "the default container config cannot be read")
        with self._no_remains(req.name):
            if not c.create(template, 0, rules.render_xargs(pairs), bdevtype=store):
                raise LwpError("operation-failed", f"template {req.template!r} failed")

    def clone_container(self, req: ops.CloneContainer) -> None:
        store = self._store(req.store)
        source = self._in_state(req.source, "clone", {"STOPPED"})
        self._absent(req.name)
        with self._no_remains(req.name):
            if not source.clone(req.name, config_path=self.cfg.lxcpath, bdevtype=store):
                raise LwpError("operation-failed", f"liblxc could not clone {req.source!r}")

    def destroy_container(self, req: ops.DestroyContainer) -> None:
        c = self._existing(req.name)
        if c.state != "STOPPED":
            if not req.force:
                raise LwpError("invalid-state", f"cannot destroy container {req.name!r}: it is "
                                                "running; stop it first or pass force=true")
            self._stop(c, clean=False)
        if not c.destroy():
            raise LwpError("operation-failed", f"liblxc could not destroy {req.name!r}")

    def _template(self, name: str) -> str:
        rules.template_name(name)
        if name not in self.cfg.templates:
            raise invalid("template", f"{name!r} is not one of the allowed templates "
                                      f"({', '.join(sorted(self.cfg.templates))})")
        path = os.path.join(self.cfg.templates_dir, f"lxc-{name}")
        if not os.access(path, os.X_OK):
            raise invalid("template", f"{name!r} is not installed")
        return path

    def _store(self, store: str | None) -> str:
        store = store or "dir"
        rules.store_name(store)
        if store not in self.cfg.stores:
            raise invalid("store", f"must be one of {', '.join(sorted(self.cfg.stores))}")
        return store

    @contextlib.contextmanager
    def _no_remains(self, name: str) -> Iterator[None]:
        """On any failure, remove whatever a half-done create or clone left under lxcpath."""
        try:
            yield
        except BaseException:
            self.remove_remains(name)
            raise

    def remove_remains(self, name: str) -> None:
        """Remove a half-made container: liblxc's part of it, then whatever else is left."""
        c = self._container(name)
        if c.defined:
            c.destroy()
        path = os.path.join(self.cfg.lxcpath, name)
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)


def start_as_unit(method: str, lxcpath: str) -> bool:
    """Whether containers start as lxc@NAME.service units rather than from a forked child.

    `auto` picks units when the helper itself runs as a systemd service (its sandbox would
    otherwise be the containers'); lxc@.service only knows LXC's default lxcpath.
    """
    if method == "fork":
        return False
    as_service = "INVOCATION_ID" in os.environ and os.path.isdir("/run/systemd/system")
    if method == "auto" and not as_service:
        return False
    if lxcpath != lxc.default_config_path:
        raise ConfigError(f"helperd.start_method: lxc@.service starts containers only in "
                          f"{lxc.default_config_path}, not in {lxcpath}; set start_method = "
                          "\"fork\" and run the helper without a sandbox")
    return True


def first_address(ips: list[str]) -> str:
    """The first IPv4 address, else the first IPv6 address, whole (the reference kept the
    last one and cut IPv6 at the first colon)."""
    return next((a for a in ips if ":" not in a), ips[0] if ips else "")


def _config_item(getter: Any, key: str) -> str:
    try:
        value = getter(key)
    except KeyError:
        return ""
    return value if isinstance(value, str) else ""
