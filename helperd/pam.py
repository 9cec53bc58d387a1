"""Check a host account's password with PAM (service `lwp`) and map its groups to a scope.

Runs in the root helper only. Every refusal — bad input, wrong password, unknown user, locked
or expired account, no mapped group — is one `None` after the same delay; the password is
handed to PAM once, answers only PAM's first hidden prompt, and is never logged or kept.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import grp
import ipaddress
import logging
import os
import pwd
import time
from collections.abc import Mapping
from dataclasses import dataclass

from protocol import rules, session
from protocol.errors import LwpError

log = logging.getLogger("lwp.helperd.pam")

SERVICE = "lwp"  # /etc/pam.d/lwp, shipped by the package: common-auth + common-account
# The Unix groups whose members may sign in, and the scope each gives (the highest wins);
# configurable as [helperd.session] groups.
DEFAULT_GROUPS: dict[str, str] = {"lwp-admin": "admin", "lwp-operator": "operate",
                                  "lwp-viewer": "read"}
# Every refused sign-in answers no sooner than this after it began (seconds): PAM's own
# delay is replaced (PAM_FAIL_DELAY) so that the refusals PAM never sees (a name that breaks
# the rule, no mapped group) cost the same as a wrong password.
DEFAULT_FAIL_DELAY = 2.0

# <security/_pam_types.h>
PAM_SUCCESS = 0
PAM_MAX_NUM_MSG = 32
PAM_CONV_ERR = 19
PAM_BUF_ERR = 5
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4
PAM_USER = 2
PAM_RHOST = 4
PAM_FAIL_DELAY = 10
PAM_SILENT = 0x8000
# pam_unix with `nullok` (Debian's common-auth) lets an empty password field in without a
# prompt; this flag makes it refuse such accounts here.
PAM_DISALLOW_NULL_AUTHTOK = 0x0001
# Why a check failed, for the helper's log (never for the client): PAM's codes by name.
PAM_CODES = {1: "open-error", 2: "symbol-error", 3: "service-error", 4: "system-error",
             5: "buffer-error", 6: "permission-denied", 7: "auth-error",
             8: "credential-insufficient", 9: "authinfo-unavailable", 10: "user-unknown",
             11: "max-tries", 12: "new-authtok-required", 13: "account-expired",
             19: "conversation-error", 25: "ignore", 26: "abort", 27: "authtok-expired"}


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int,
                         ctypes.POINTER(ctypes.POINTER(_Message)),
                         ctypes.POINTER(ctypes.POINTER(_Response)), ctypes.c_void_p)
_DELAY = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV), ("appdata_ptr", ctypes.c_void_p)]


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    libpam = ctypes.CDLL("libpam.so.0")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libpam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv),
                                 ctypes.POINTER(ctypes.c_void_p)]
    for name in ("pam_authenticate", "pam_acct_mgmt", "pam_end"):
        getattr(libpam, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
    libpam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    libpam.pam_get_item.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_void_p)]
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.calloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return libpam, libc


_libpam, _libc = _load()


@dataclass(frozen=True)
class SignIn:
    user: str  # the account's name as PAM reports it after authenticating
    scope: str  # the highest scope its groups map to


class _Answer:
    """The conversation: the password answers PAM's first hidden prompt and nothing else.

    A second hidden prompt (a new password, a one-time code) or a visible one (a name) is a
    conversation this panel cannot hold: it ends the check (PAM_CONV_ERR). Informational and
    error messages are acknowledged and dropped, unread: they never reach a log or a client."""

    def __init__(self, secret: ctypes.Array[ctypes.c_char], size: int) -> None:
        self.secret = secret
        self.size = size
        self.answered = False
        self.callback = _CONV(self._converse)  # kept referenced while PAM may call it

    def _converse(self, count: int, messages: ctypes._Pointer[ctypes._Pointer[_Message]],
                  reply: ctypes._Pointer[ctypes._Pointer[_Response]], _data: int) -> int:
        if not 0 < count <= PAM_MAX_NUM_MSG:
            return PAM_CONV_ERR
        block = _libc.calloc(count, ctypes.sizeof(_Response))
        if not block:
            return PAM_BUF_ERR
        answers = ctypes.cast(block, ctypes.POINTER(_Response))
        for i in range(count):
            style = messages[i].contents.msg_style  # Linux-PAM: an array of pointers
            if style in (PAM_ERROR_MSG, PAM_TEXT_INFO):
                continue
            if style != PAM_PROMPT_ECHO_OFF or self.answered:
                self._drop(answers, count)
                return PAM_CONV_ERR
            copy = _libc.calloc(1, self.size + 1)  # PAM overwrites and frees it
            if not copy:
                self._drop(answers, count)
                return PAM_BUF_ERR
            ctypes.memmove(copy, self.secret, self.size)
            answers[i].resp = copy
            self.answered = True
        reply[0] = answers
        return PAM_SUCCESS

    def _drop(self, answers: ctypes._Pointer[_Response], count: int) -> None:
        """On a failed conversation PAM takes no answers: wipe and free our copy here."""
        for i in range(count):
            if answers[i].resp:
                _libc.memset(answers[i].resp, 0, self.size + 1)
                _libc.free(answers[i].resp)
        _libc.free(answers)


PASSWORD_BUFFER = session.PASSWORD_MAX_BYTES + 1


def _no_delay(_status: int, _usec: int, _data: int) -> None:
    """PAM's fail delay, replaced: check() applies one delay to every refusal itself."""


_NO_DELAY = _DELAY(_no_delay)


def scope_of(user: str, groups: Mapping[str, str]) -> str | None:
    """The highest scope that `user`'s groups (primary and supplementary) map to, or None.

    Group names are resolved at each check, so a group created or filled after the helper
    started counts at once."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    member_of = set(os.getgrouplist(user, entry.pw_gid))  # NSS, as login sees it
    best: str | None = None
    for name, scope in groups.items():
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        if gid in member_of and (best is None or rules.scope_allows(scope, best)):
            best = scope
    return best


def _authenticate(user: str, secret: ctypes.Array[ctypes.c_char], size: int,
                  rhost: str | None) -> tuple[str | None, str]:
    """PAM's verdict: (the name PAM reports, "ok") or (None, why)."""
    answer = _Answer(secret, size)
    conv = _Conv(answer.callback, None)
    handle = ctypes.c_void_p()
    status = _libpam.pam_start(SERVICE.encode(), user.encode(), ctypes.byref(conv),
                               ctypes.byref(handle))
    if status != PAM_SUCCESS:
        return None, f"pam_start: {PAM_CODES.get(status, status)}"
    try:
        _libpam.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(_NO_DELAY, ctypes.c_void_p))
        if rhost is not None:
            _libpam.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode()))
        flags = PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK
        status = _libpam.pam_authenticate(handle, flags)
        if status == PAM_SUCCESS:
            # Locked, expired, or barred by pam_access/pam_time: the account stack says.
            status = _libpam.pam_acct_mgmt(handle, flags)
        if status != PAM_SUCCESS:
            return None, str(PAM_CODES.get(status, status))
        item = ctypes.c_void_p()
        if _libpam.pam_get_item(handle, PAM_USER, ctypes.byref(item)) != PAM_SUCCESS \
                or not item.value:
            return None, "no PAM_USER after authentication"
        return ctypes.string_at(item.value).decode("utf-8", "replace"), "ok"
    finally:
        _libpam.pam_end(handle, status)


def _rhost(address: str | None) -> str | None:
    """The client's address for PAM (pam_faillock, the auth log) when it is one."""
    if address is None:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def check(username: object, password: object, groups: Mapping[str, str] = DEFAULT_GROUPS,
          fail_delay: float = DEFAULT_FAIL_DELAY, address: str | None = None) -> SignIn | None:
    """A host account's sign-in: SignIn(user, scope), or None — always None after the same
    delay, whatever refused it. Blocking (PAM, the delay): the helper itself calls
    authenticate() in a thread and waits out the delay on its event loop."""
    started = time.monotonic()
    outcome = authenticate(username, password, groups, address)
    if outcome is None:
        time.sleep(max(0.0, started + fail_delay - time.monotonic()))
    return outcome


def authenticate(username: object, password: object, groups: Mapping[str, str],
                 address: str | None = None) -> SignIn | None:
    """check() without the delay, which the caller owes every None. Blocking (PAM)."""
    outcome, why = _check(username, password, groups, address)
    if outcome is None:
        known = isinstance(username, str) and _exists(username)
        # The name only when it is an account's: a password typed into the name field
        # would otherwise land in the log.
        log.warning("sign-in refused: user=%s reason=%s",
                    username if known else "(not an account)", why)
    return outcome


def _check(username: object, password: object, groups: Mapping[str, str],
           address: str | None) -> tuple[SignIn | None, str]:
    try:
        user = session.user_name(username)
        text = session.password(password)
    except LwpError as exc:
        return None, f"input: {exc.message.split(':')[0]}"
    raw = text.encode("utf-8")
    secret = ctypes.create_string_buffer(PASSWORD_BUFFER)
    ctypes.memmove(secret, raw, len(raw))
    try:
        name, why = _authenticate(user, secret, len(raw), _rhost(address))
    finally:
        ctypes.memset(secret, 0, PASSWORD_BUFFER)  # our C copy; Python's str is the caller's
    if name is None:
        return None, why
    try:
        name = session.user_name(name)  # a module may rename the user: the rule holds again
    except LwpError:
        return None, "PAM reported a user name outside the rule"
    scope = scope_of(name, groups)
    if scope is None:
        return None, "no mapped group"
    return SignIn(name, scope), "ok"


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        return False
    return True
