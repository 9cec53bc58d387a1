"""The liblxc backend: the only module that imports lxc. Every method blocks; none trusts input.

Mutating methods run in a worker process (see isolate.py): liblxc's start() moves its caller
into the container's monitor cgroup, and a hung liblxc call can then be killed.
Each method re-checks the name rule before a name reaches liblxc, which validates none.
A container's state, init pid, cgroups and stop come from monitor.py, which talks only to a
monitor run by root: liblxc is never left to believe whoever holds the command socket's name.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Set
from typing import Any

import _lxc
import lxc

from helperd import cgrouplimits, cgroupstats, lxclog, monitor, netaddr, rootfs, templates
from helperd.config import HelperConfig
from protocol import ops, rules
from protocol.config import ConfigError
from protocol.errors import LwpError, invalid, missing_container

# A host-side interface name as liblxc reports it, safe to put in a /sys path.
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
RUNNING = frozenset({"RUNNING", "FROZEN"})
# Backing stores whose rootfs is a plain directory on the host (lxc.rootfs.path "dir:PATH",
# "btrfs:PATH" or a bare PATH): files in it can be written without mounting anything.
DIRECTORY_STORES = frozenset({"", "dir", "btrfs"})
STATE_WAIT = 10.0  # seconds for a started container to run, a stopped one to be gone
STATE_POLL = 0.02
# Errors with which a cgroup file refuses a value it cannot take now (EBUSY: a memory limit
# below what the container uses; EINVAL: CPUs the host lacks): a well-formed value the
# container's present state refuses, a 409 naming the setting.
REFUSED_VALUE = frozenset({errno.EBUSY, errno.EINVAL, errno.ERANGE})


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
        self.v1_mounts = monitor.v1_mounts()
        self.start_as_unit = start_as_unit(cfg.start_method, cfg.lxcpath)

    # -- lookups -------------------------------------------------------------------------

    def _container(self, name: str) -> Any:
        rules.container_name(name)
        return lxc.Container(name, self.cfg.lxcpath)

    def _existing(self, name: str, missing: str = "no-such-container") -> Any:
        c = self._container(name)
        if not c.defined:
            raise missing_container(name, missing)  # one answer, shared with policy.py
        return c

    def _in_state(self, name: str, action: str, allowed: Set[str]) -> Any:
        c = self._existing(name)
        state = self._trusted_state(name, action)
        if state not in allowed:
            raise _state_error(name, state, action)
        return c

    def _state(self, name: str) -> str:
        """The state its monitor reports; STOPPED if none runs. A name held by anyone but root
        means no monitor holds it (one holds it from start to end): not running."""
        try:
            return monitor.state(self.cfg.lxcpath, name)
        except monitor.Untrusted:
            return "STOPPED"  # monitor.py has logged who holds it

    def _trusted_state(self, name: str, action: str) -> str:
        """The state, for a change: refused while someone else holds the monitor's name."""
        with _refusing(name, action):
            return monitor.state(self.cfg.lxcpath, name)

    def _wait_state(self, name: str, target: str, action: str) -> bool:
        """Poll the monitor (not liblxc's wait(), which asks whoever holds the name) until the
        container is in `target`; False after STATE_WAIT seconds."""
        deadline = time.monotonic() + STATE_WAIT
        while True:
            try:
                # Stopped is when its monitor has gone: liblxc's next call looks for that.
                done = monitor.released(self.cfg.lxcpath, name) if target == "STOPPED" \
                    else monitor.state(self.cfg.lxcpath, name) == target
            except monitor.Untrusted as exc:
                if target == "STOPPED":
                    return True  # the monitor gave up its name: it has ended
                raise _refusal(name, action, exc) from None
            if done:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(STATE_POLL)

    def _absent(self, name: str) -> Any:
        c = self._container(name)
        if c.defined or os.path.lexists(os.path.join(self.cfg.lxcpath, name)):
            raise LwpError("container-exists", f"container {name!r} already exists")
        return c

    # -- reads (run in the helper's thread pool) ----------------------------------------

    def list_containers(self, req: ops.ListContainers) -> list[dict[str, str]]:
        names = lxc.list_containers(config_path=self.cfg.lxcpath, as_object=False)
        listing = []
        for name in sorted(names):
            # Containers made outside the API with names that break the rule are not listed:
            # no client could address them anyway.
            if not rules.NAME_RE.fullmatch(name):
                continue
            # Not liblxc's state: it would believe any local user bound to the socket name.
            listing.append({"container": name, "state": self._state(name).lower()})
        return listing

    def container_info(self, req: ops.ContainerInfo) -> dict[str, Any]:
        name = req.name
        c = self._existing(name, "not-found")
        privileged = _privileged(c)
        stopped = {"name": name, "state": "STOPPED", "pid": 0, "privileged": privileged}
        lxcpath = self.cfg.lxcpath
        try:
            state = monitor.state(lxcpath, name)
            # A pid that is no child of this container's monitor reads as 0: stopped.
            pid = monitor.init_pid(lxcpath, name) if state != "STOPPED" else 0
            if pid < 1:
                return stopped
            # Read from the cgroup its monitor names, not through liblxc's get_cgroup_item,
            # which would take the cgroup from whoever answered on the socket.
            with monitor.Cgroups(lxcpath, name, self.v1_mounts) as cg:
                stats = (cgroupstats.v2 if cg.unified() is not None else cgroupstats.v1)(cg.get)
            ifname = monitor.config_item(lxcpath, name, "lxc.net.0.veth.pair")
        except monitor.Untrusted:
            return stopped  # monitor.py has logged who holds the name
        host_rx, host_tx = _host_side_bytes(ifname)
        # Not c.get_ips(): liblxc forks the whole helper for it (netaddr.py says why not).
        ip = netaddr.first_address(pid)
        return {"name": name, "state": state, "pid": pid, "ip": ip,
                "link": _config_item(c.get_config_item, "lxc.net.0.link"),
                # Seen from the container: what it receives is what the host side sends.
                "rx_bytes": host_tx, "tx_bytes": host_rx, "privileged": privileged, **stats}

    # -- state changes (run in a worker process: helperd/policy.py's RULES, isolate.py) -----

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
        if self._trusted_state(req.name, "restart") in RUNNING:
            self._stop(c, clean=True)
        self._start(c)

    def _start(self, c: Any) -> None:
        if self.start_as_unit:
            self._start_unit(c)
            return
        _log_to_output(c)  # the monitor it forks logs there too: the cause of a failed start
        # close_fds: the container's monitor must not inherit the helper's sockets.
        # Waited for here, not by c.wait(): that asks whoever holds the socket's name.
        if not c.start(close_fds=True) or not self._wait_state(c.name, "RUNNING", "start"):
            raise LwpError("operation-failed", f"liblxc could not start container {c.name!r}")

    def _start_unit(self, c: Any) -> None:
        """Start the container as Debian's lxc@NAME.service, outside the helper's sandbox.

        Started from this process, a container would inherit the helper unit's no_new_privs,
        seccomp filter, capability bounding set and mount namespace, live in its cgroup, and be
        killed with it. As a unit of its own it inherits none of that and outlives a restart
        or an upgrade of the helper. (systemctl is given an argument list: no shell.)
        """
        unit = f"lxc@{c.name}.service"  # the name rule keeps it a valid, unescaped instance
        log = lxclog.container_log(self.cfg.lxcpath, c.name)
        lxclog.empty(log)  # what it holds after the start is this start's
        self._systemctl("reset-failed", unit)  # a hard stop leaves the unit failed
        done = self._systemctl("start", "--no-ask-password", unit)
        if done.returncode != 0 or not self._wait_state(c.name, "RUNNING", "start"):
            # lxc-start -F tells the journal nothing; the container's own log has the cause.
            why = "; ".join(lxclog.read_causes(log)) or done.stderr.strip() \
                or f"see journalctl -u {unit}"
            raise LwpError("operation-failed", f"could not start {unit}: {why}")

    @staticmethod
    def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/systemctl", *args], capture_output=True, text=True,
                              check=False, timeout=60)

    def _stop(self, c: Any, clean: bool) -> None:
        """As lxc-stop does: ask init to shut down cleanly, kill it after the timeout.

        Not c.shutdown() / c.stop(): liblxc signals whatever pid the socket's holder names.
        Here the signal goes through a pidfd to the verified child of the monitor, and the
        kill is asked of a monitor that root runs."""
        name, lxcpath = c.name, self.cfg.lxcpath
        state = self._trusted_state(name, "stop")
        if state == "STOPPED":
            return
        if state == "FROZEN":
            self._set_frozen(c, False)
        timeout = self.cfg.stop_timeout if clean else 0
        with _refusing(name, "stop"):
            if not (timeout > 0 and self._shutdown(c, math.ceil(timeout))) and (
                    not monitor.hard_stop(lxcpath, name, STATE_WAIT)
                    or not self._wait_state(name, "STOPPED", "stop")):
                raise LwpError("operation-failed", f"could not stop container {name!r}")
        if self.start_as_unit:
            # Its lxc@NAME.service saw the container end behind its back: its ExecStop
            # (lxc-stop) then fails, and the unit — and the host's state — reads failed.
            unit = f"lxc@{name}.service"
            self._systemctl("stop", "--no-ask-password", unit)
            self._systemctl("reset-failed", unit)

    def _shutdown(self, c: Any, timeout: int) -> bool:
        """Send init its halt signal and wait `timeout` s for the container to stop."""
        lxcpath = self.cfg.lxcpath
        pid = monitor.init_pid(lxcpath, c.name)
        if pid == 0:  # gone already, or no child of this container's monitor
            return self._wait_state(c.name, "STOPPED", "stop")
        configured = _config_item(c.get_config_item, "lxc.signal.halt")
        pidfd = monitor.signal_init(pid, lxcpath, c.name, monitor.halt_signal(pid, configured))
        if pidfd is not None:
            try:
                if not monitor.wait_exit(pidfd, timeout):
                    return False
            finally:
                os.close(pidfd)
        return self._wait_state(c.name, "STOPPED", "stop")

    def _set_frozen(self, c: Any, frozen: bool) -> None:
        """Freeze or thaw as liblxc does, on the cgroup a root monitor names (liblxc's freeze
        would write to whatever cgroup the socket's holder hands it), and tell the monitor:
        LXC 5 reports the state its monitor was told. This can wait for ever on a cgroup
        stuck in FREEZING; the caller runs it with a deadline and then thaws with
        `thaw_after_timeout`."""
        action = "freeze" if frozen else "unfreeze"
        with _refusing(c.name, action), \
                monitor.Cgroups(self.cfg.lxcpath, c.name, self.v1_mounts) as cg:
            try:
                monitor.set_frozen(cg, frozen)
            except (KeyError, ValueError, OSError) as exc:
                raise LwpError("operation-failed", f"could not {action} container "
                                                   f"{c.name!r}: {exc}") from None

    def state_of(self, name: str) -> str:
        """The state its monitor reports: STOPPED, RUNNING, FREEZING, FROZEN, ..."""
        self._existing(name)
        return self._state(name)

    def thaw_after_timeout(self, name: str) -> None:
        """Undo a freeze that missed its deadline, so the container is left running: write
        THAWED and tell the monitor, which also clears the FREEZING state left behind."""
        self._set_frozen(self._existing(name), False)

    def create_container(self, req: ops.CreateContainer) -> None:
        template = self._template(req.template)
        store = self._store(req.store)
        pairs = rules.parse_xargs(req.xargs, req.template)
        allowed = self.cfg.template_options.get(req.template, frozenset())
        for option, _value in pairs:
            if option not in allowed:
                raise invalid("xargs", f"option --{option} is not allowed for template "
                                       f"{req.template!r}")
        templates.check_values(req.template, pairs, self.cfg.template_values)
        # Last, after the client's: templates keep the last value given (and parse_xargs
        # refused these options, and any prefix of them, from the client anyway).
        pairs += self.cfg.helper_options.get(req.template, ())
        self._check_privilege(req)
        c = self._absent(req.name)
        c.clear_config()
        if not c.load_config(self.cfg.default_config):
            raise LwpError("operation-failed", "the default container config cannot be read")
        # The mapping is the helper's to choose, not the default config's.
        c.clear_config_item("lxc.idmap")
        if not req.privileged:
            _set_idmap(c, self.cfg.idmap.lines())
        with self._no_remains(req.name):
            _log_to_output(c)
            if not c.create(template, 0, rules.render_xargs(pairs), bdevtype=store):
                raise LwpError("operation-failed", f"template {req.template!r} failed")
            _save_with_own_log(c, self.cfg.lxcpath, req.name)  # create saved this job's

    def _check_privilege(self, req: ops.CreateContainer) -> None:
        """Unprivileged unless asked for and allowed; a template that refuses user namespaces
        says so before it runs."""
        if req.privileged and not self.cfg.allow_privileged:
            raise invalid("privileged", "privileged containers are not allowed on this host "
                                        "(helperd.allow_privileged)")
        why = templates.USERNS_REFUSED.get(req.template)
        if not req.privileged and why is not None:
            raise invalid("template", f"{req.template!r} cannot make unprivileged containers: "
                                      f"{why}")

    def clone_container(self, req: ops.CloneContainer) -> None:
        store = self._store(req.store)
        source = self._in_state(req.source, "clone", {"STOPPED"})
        self._absent(req.name)
        with self._no_remains(req.name):
            # KEEPNAME: liblxc would rewrite the copy's etc/hostname as root, following any
            # link the source's root planted there (to a host file). The name is set here.
            _log_to_output(source)
            clone = source.clone(req.name, config_path=self.cfg.lxcpath, bdevtype=store,
                                 flags=lxc.LXC_CLONE_KEEPNAME)
            if not clone:
                raise LwpError("operation-failed", f"liblxc could not clone {req.source!r}")
            self._rename_clone(clone, req.name)

    def _rename_clone(self, c: Any, name: str) -> None:
        """What liblxc's clone does without KEEPNAME, with every rootfs path kept inside it."""
        c.clear_config_item("lxc.uts.name")
        if not c.set_config_item("lxc.uts.name", name):
            raise LwpError("operation-failed", f"cannot set the hostname of {name!r}")
        _save_with_own_log(c, self.cfg.lxcpath, name)  # the clone copied the source's
        kind, _, where = _config_item(c.get_config_item, "lxc.rootfs.path").rpartition(":")
        if kind not in DIRECTORY_STORES or not os.path.isdir(where):
            # A store that must be mounted first: its hostname file keeps the source's name
            # (lxc.uts.name above is what the container's kernel hostname is set from).
            return
        try:
            rootfs.rewrite_regular_file(where, "/etc/hostname", name.encode() + b"\n")
        except (OSError, rootfs.RootfsError) as exc:
            raise LwpError("operation-failed", f"cannot set /etc/hostname in the clone "
                                               f"{name!r}: {exc}") from None

    def destroy_container(self, req: ops.DestroyContainer) -> None:
        c = self._existing(req.name)
        if self._trusted_state(req.name, "destroy") != "STOPPED":
            if not req.force:
                raise LwpError("invalid-state", f"cannot destroy container {req.name!r}: it is "
                                                "running; stop it first or pass force=true")
            self._stop(c, clean=False)
        _log_to_output(c)
        if not c.destroy():
            raise LwpError("operation-failed", f"liblxc could not destroy {req.name!r}")

    def _template(self, name: str) -> str:
        rules.template_name(name)
        if name not in self.cfg.templates:
            raise invalid("template", f"{name!r} is not one of the allowed templates "
                                      f"({', '.join(sorted(self.cfg.templates))})")
        path = os.path.join(self.cfg.templates_dir, f"lxc-{name}")
        if not os.access(path, os.X_OK):
            package = templates.PROVIDERS.get(name)
            raise invalid("template", f"{name!r} is not installed" + (
                f": apt install {package}" if package else ""))
        why = templates.missing(name)
        if why is not None:
            raise invalid("template", why)
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

    # -- limits and autostart (issue #13 section 3; helperd/cgrouplimits.py translates) -----

    def _cgroup_version(self) -> str:
        """v1 where the memory controller is a v1 hierarchy (this hybrid host), else v2."""
        return cgrouplimits.V1 if "memory" in self.v1_mounts else cgrouplimits.V2

    def container_config(self, req: ops.ContainerConfig) -> dict[str, Any]:
        """The settings in force: a running container's limits from its cgroup, a stopped
        one's from its config (`source` says which); autostart always from the config."""
        c = self._existing(req.name, "not-found")
        version = self._cgroup_version()
        limits = None
        if self._state(req.name) in RUNNING:
            try:
                with monitor.Cgroups(self.cfg.lxcpath, req.name, self.v1_mounts) as cg:
                    limits = _read_cgroup(cg, version)
            except monitor.Untrusted:
                limits = None  # monitor.py has logged who holds the name: not running
        source = "config" if limits is None else "cgroup"
        if limits is None:
            limits = {setting: limit.into(version, _last(c.get_config_item,
                                                         cgrouplimits.config_key(setting,
                                                                                 version)))
                      for setting, limit in cgrouplimits.LIMITS.items()}
        autostart = {setting: cgrouplimits.autostart_value(setting, _last(c.get_config_item,
                                                                          key))
                     for setting, key in cgrouplimits.AUTOSTART.items()}
        autostart["autostart"] = bool(autostart["autostart"])
        return {"name": req.name, "source": source, "cgroup": version, **limits, **autostart}

    def set_container_config(self, req: ops.SetContainerConfig) -> None:
        """Apply the limits live (a running container), then persist every change through
        liblxc's config API; a refused live change changes nothing, and a failed save puts
        the live values back."""
        c = self._existing(req.name)
        changes = req.changes()
        version = self._cgroup_version()
        live = {s: v for s, v in changes.items() if s in cgrouplimits.LIMITS}
        if not live or self._trusted_state(req.name, "configure") not in RUNNING:
            self._persist(c, version, changes)
            return
        with _refusing(req.name, "configure"), \
                monitor.Cgroups(self.cfg.lxcpath, req.name, self.v1_mounts) as cg:
            writes = {cgrouplimits.LIMITS[s].item(version):
                      (s, cgrouplimits.cgroup_value(s, version, v, _host_cpus()))
                      for s, v in live.items()}
            before = {item: (setting, _current(cg, item, setting))
                      for item, (setting, _value) in writes.items()}
            _write_all(cg, req.name, writes)
            try:
                self._persist(c, version, changes)
            except BaseException:
                with contextlib.suppress(LwpError):  # the save's failure is the one to report
                    _write_all(cg, req.name, before)
                raise

    @staticmethod
    def _persist(c: Any, version: str, changes: dict[str, ops.ConfigValue]) -> None:
        """Each change as config lines through liblxc (which keeps every other line as it
        is, duplicate keys included): the setting's lines cleared, its new one set."""
        for setting, value in changes.items():
            for key in cgrouplimits.config_keys(setting):
                c.clear_config_item(key)
            if value is None:
                continue
            key = cgrouplimits.AUTOSTART.get(setting) or cgrouplimits.config_key(setting,
                                                                                  version)
            if not c.set_config_item(key, cgrouplimits.config_value(setting, version, value)):
                raise LwpError("operation-failed", f"liblxc refused {key} for {c.name!r}")
        if not c.save_config():
            raise LwpError("operation-failed", f"cannot save the config of {c.name!r}")


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


@contextlib.contextmanager
def _refusing(name: str, action: str) -> Iterator[None]:
    """Turn a command socket held by someone not root into a refusal of the change."""
    try:
        yield
    except monitor.Untrusted as exc:
        raise _refusal(name, action, exc) from None


def _refusal(name: str, action: str, exc: monitor.Untrusted) -> LwpError:
    return LwpError("invalid-state", f"cannot {action} container {name!r}: its command socket "
                                     f"is held by {exc.holder}, not by a monitor; refusing "
                                     "to act on it")


def _host_side_bytes(ifname: str) -> tuple[int, int]:
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


def _log_to_output(c: Any) -> None:
    """liblxc's errors during this job go to its output, for the error message (lxclog.py)."""
    for key, value in zip(lxclog.KEYS, (lxclog.WORKER_OUTPUT, lxclog.LEVEL), strict=True):
        c.set_config_item(key, value)


def _privileged(c: Any) -> bool:
    """As liblxc decides: a container without an id map runs as host root. (The C binding:
    python3-lxc's getter splits several lines into a list, or not, by a trailing newline.)"""
    try:
        value = _lxc.Container.get_config_item(c, "lxc.idmap")
    except KeyError:
        return True
    return not (isinstance(value, str) and value.strip())


def _set_idmap(c: Any, lines: list[str]) -> None:
    """Add every lxc.idmap line. Through the C binding: python3-lxc's set_config_item clears a
    key before setting it, and then reads a two-line value back as not what it set and
    undoes it all."""
    for line in lines:
        if not _lxc.Container.set_config_item(c, "lxc.idmap", line):
            raise LwpError("operation-failed", f"liblxc refused lxc.idmap = {line}")


def _save_with_own_log(c: Any, lxcpath: str, name: str) -> None:
    """Save a new container's config with a log of its own at level ERROR in place of this
    job's: where lxc-start, under lxc@NAME.service, writes why a start failed."""
    for key in lxclog.KEYS:
        c.clear_config_item(key)
    own = (lxclog.container_log(lxcpath, name), lxclog.LEVEL)
    if not all(c.set_config_item(key, value)
               for key, value in zip(lxclog.KEYS, own, strict=True)) or not c.save_config():
        raise LwpError("operation-failed", f"cannot save the config of {name!r}")


def _config_item(getter: Any, key: str) -> str:
    try:
        value = getter(key)
    except KeyError:
        return ""
    return value if isinstance(value, str) else ""


def default_network(path: str) -> tuple[str, str]:
    """lxc.net.0.type and .link of the config every create starts from, as liblxc reads it
    (includes and all); nothing is created (the lxcpath is never looked at)."""
    c = lxc.Container("lwp-doctor", "/nonexistent")
    c.clear_config()
    if not c.load_config(path):
        raise ValueError(f"{path} cannot be read by liblxc")
    return (_config_item(c.get_config_item, "lxc.net.0.type"),
            _config_item(c.get_config_item, "lxc.net.0.link"))


def lxc_version() -> str:
    return str(lxc.version)


def _last(getter: Any, key: str) -> str:
    """A config key's value as liblxc reads it: the last of a list, "" when unset."""
    try:
        value = getter(key)
    except KeyError:
        return ""
    if isinstance(value, list):
        return str(value[-1]) if value else ""
    return value if isinstance(value, str) else ""


def _read_cgroup(cg: monitor.Cgroups, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setting, limit in cgrouplimits.LIMITS.items():
        try:
            out[setting] = limit.into(version, cg.get(limit.item(version)))
        except (KeyError, ValueError):  # a controller or file this kernel lacks (memsw)
            out[setting] = None
    return out


def _current(cg: monitor.Cgroups, item: str, setting: str) -> str:
    try:
        return cg.get(item).strip()
    except (KeyError, ValueError) as exc:
        raise invalid(setting, f"this host's cgroup has no {item}: {exc}") from None


def _write_all(cg: monitor.Cgroups, name: str, writes: dict[str, tuple[str, str]]) -> None:
    """Write each item; one refused for now (v1's memsw must stay at or above the memory
    limit, so raising both needs memsw first) is tried again after the others. On a final
    refusal, what was written is put back: nothing changes."""
    done: dict[str, str] = {}
    pending = dict(writes)
    while pending:
        refused: dict[str, tuple[str, str]] = {}
        failures: list[OSError] = []
        for item, (setting, value) in pending.items():
            try:
                previous = cg.get(item).strip()
                cg.put(item, value)
                done.setdefault(item, previous)
            except OSError as exc:
                refused[item] = (setting, value)
                failures.append(exc)
        if len(refused) == len(pending):  # no progress: give up, and undo
            for item in reversed(list(done)):
                with contextlib.suppress(OSError):
                    cg.put(item, done[item])
            item, (setting, value) = next(iter(refused.items()))
            failure = failures[0]
            if failure.errno in REFUSED_VALUE:
                raise LwpError("invalid-state", f"{setting}: container {name!r}'s {item} "
                                                f"refused {value!r} ({failure.strerror})")
            raise LwpError("operation-failed", f"cannot write {item} of {name!r}: "
                                               f"{failure.strerror}")
        pending = refused


def _host_cpus() -> str:
    """Every CPU online: what v1's cpuset.cpus holds when no setting restricts it."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return f.read().strip()
    except OSError:
        return "0"
