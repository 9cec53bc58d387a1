"""A running container's address for an info, read over netlink without forking the helper.

Only a short-lived thread of its own ever enters the container's network namespace (setns
changes the calling thread alone); any failure gives no address, never an exception. The
container's root chooses what the namespace holds, so one lookup reads at most MAX_DATAGRAMS
datagrams and MAX_MESSAGES messages, and stops at the first usable address.
"""
from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("lwp.helperd")

CLONE_NEWNET = 0x40000000  # systemd's RestrictNamespaces= refuses setns() with nstype 0
NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
RTATTR = struct.Struct("=HH")  # length, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, device type, index, flags, change mask
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
REPLY = {RTM_GETLINK: RTM_NEWLINK, RTM_GETADDR: RTM_NEWADDR}  # what a dump answers with
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
IFNAMSIZ = 16
ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12  # the kernel honours a dump's filter (>= 4.20)
FAMILIES = (socket.AF_INET, socket.AF_INET6)  # an IPv4 address is preferred, as ever

# Bounds for one lookup: the namespace is the container's, and its root chooses what is in it.
MAX_DATAGRAMS = 256  # ~5,000 interfaces' worth of link dump; past it, no address
MAX_MESSAGES = 4096  # links and addresses looked at; past it, no address
RECV_SIZE = 65536  # twice the kernel's dump datagram (32 KiB, unless one message is larger)
TIMEOUT = 1.0  # seconds for each read of a reply

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass
class Work:
    """What a lookup has read so far, against its bounds (tests read the counts)."""

    datagrams: int = 0
    messages: int = 0
    bytes: int = 0
    max_datagrams: int = MAX_DATAGRAMS
    max_messages: int = MAX_MESSAGES


def first_address(pid: int, work: Work | None = None) -> str:
    """The address an info shows for the network namespace of process `pid`: the first IPv4
    address get_ips() would list, else the first IPv6 one, taking the interfaces in index order
    with "lo" last and each one's addresses in the kernel's order; "" if there is none or it
    cannot be read within the bounds (the process is gone, or setns is refused).

    Which addresses count is liblxc's rule (see `address`); the order is not its strcmp order,
    which only a read of every address could give."""
    if pid < 1:
        return ""
    work = Work() if work is None else work
    try:
        with _socket_in_netns_of(pid) as s:
            return _first_usable(s, work)
    except OSError as exc:
        # A container that stopped meanwhile is routine; a refused setns is a sandbox without
        # CAP_SYS_ADMIN, and every running container would show no address.
        level = logging.WARNING if isinstance(exc, PermissionError) else logging.DEBUG
        log.log(level, "no address for pid %d: %s", pid, exc)
        return ""


def _first_usable(s: socket.socket, work: Work) -> str:
    links = dict(filter(None, map(link_name, _dump(s, 1, RTM_GETLINK, work))))
    # "lo" last: a container's root may pile addresses there, and get_ips() skips them anyway.
    order = sorted(links, key=lambda index: (links[index] == b"lo", index))
    seq = 1
    for family in FAMILIES:
        for index in order:
            seq += 1
            # One interface's addresses of one family: the kernel filters the dump (strict
            # checking); an older kernel sends them all, and the others are passed over.
            for payload in _dump(s, seq, RTM_GETADDR, work, family, index):
                if address_index(payload) == index and (found := address(payload, links)):
                    return found  # the rest of this dump is never read
    return ""


def _socket_in_netns_of(pid: int) -> socket.socket:
    """A NETLINK_ROUTE socket in the network namespace of `pid` that hears only the kernel."""
    s = _made_in_netns_of(pid)
    try:
        s.settimeout(TIMEOUT)
        s.connect((0, 0))  # the kernel's port: what others send is refused, not queued
        try:
            s.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass  # an older kernel: dumps are not filtered, only longer (still bounded)
    except OSError:
        s.close()
        raise
    return s


def _made_in_netns_of(pid: int) -> socket.socket:
    """A socket stays in the namespace it was made in: made by a thread of its own, the only
    one that enters the namespace."""
    made: list[socket.socket | OSError] = []
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        maker = threading.Thread(target=_make_socket, args=(fd, made), name="lxc-netns")
        try:
            maker.start()
        except RuntimeError as exc:  # no thread to be had just now
            raise OSError(f"no thread to enter the namespace: {exc}") from exc
        maker.join()
    finally:
        os.close(fd)
    result = made[0] if made else OSError("the namespace thread made no socket")
    if isinstance(result, OSError):
        raise result
    return result


def _make_socket(netns_fd: int, made: list[socket.socket | OSError]) -> None:
    # This thread ends here: the namespace it entered leaves with it.
    try:
        if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")
        made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE))
    except OSError as exc:
        made.append(exc)


def _dump(s: socket.socket, seq: int, kind: int, work: Work, family: int = 0,
          index: int = 0) -> Iterator[bytes]:
    # The header after nlmsghdr is an ifinfomsg (all zeros: every link) or an ifaddrmsg
    # asking for one family's addresses on one interface.
    if kind == RTM_GETLINK:
        body = bytes(IFINFOMSG.size)
    else:
        body = IFADDRMSG.pack(family, 0, 0, 0, index)
    s.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    return read_dump(s.recvfrom, seq, REPLY[kind], work)


def read_dump(recvfrom: Callable[[int], tuple[bytes, Any]], seq: int, kind: int,
              work: Work | None = None) -> Iterator[bytes]:
    """The payloads of one dump's `kind` messages, as they come, up to its NLMSG_DONE.

    Raises OSError on an NLMSG_ERROR, or once the lookup has read `work`'s bound of datagrams
    or messages. Datagrams that are not the kernel's (root in a container may write to a
    netlink port), messages of another sequence and of another type are ignored (and counted)."""
    work = Work() if work is None else work
    while work.datagrams < work.max_datagrams:
        data, sender = recvfrom(RECV_SIZE)
        work.datagrams += 1
        work.bytes += len(data)
        if not (isinstance(sender, tuple) and sender and sender[0] == 0):
            continue  # port id 0 is the kernel's
        for msg_kind, msg_seq, payload in messages(data):
            work.messages += 1
            if work.messages > work.max_messages:
                raise OSError("the netlink dump holds more than a lookup may read")
            if msg_seq != seq:
                continue
            if msg_kind == NLMSG_DONE:
                return
            if msg_kind == NLMSG_ERROR:
                raise OSError("the kernel refused the netlink dump")
            if msg_kind == kind:
                yield payload
    raise OSError("the netlink dump did not end within the datagrams a lookup may read")


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, payload) of each netlink message in a datagram; stops at the first
    one whose length does not fit, since nothing after it can be framed."""
    offset = 0
    while len(data) - offset >= NLMSG.size:
        length, kind, _flags, seq, _port = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size or length > len(data) - offset:
            return
        yield kind, seq, data[offset + NLMSG.size:offset + length]
        offset += (length + 3) & ~3


def attributes(payload: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each route attribute from `offset` on; stops at the first that does
    not fit (liblxc checks less, and an rta_len of 0 would loop it for ever)."""
    while len(payload) - offset >= RTATTR.size:
        length, kind = RTATTR.unpack_from(payload, offset)
        if length < RTATTR.size or length > len(payload) - offset:
            return
        yield kind, payload[offset + RTATTR.size:offset + length]
        offset += (length + 3) & ~3


def _name(data: bytes) -> bytes | None:
    # liblxc copies a name only if it fits its IFNAMSIZ + 1 buffer, and compares up to a NUL.
    return data.split(b"\0", 1)[0] if len(data) <= IFNAMSIZ else None


def link_name(payload: bytes) -> tuple[int, bytes] | None:
    """(index, name) of an RTM_NEWLINK payload; None if it has no usable name."""
    if len(payload) < IFINFOMSG.size:
        return None
    index = IFINFOMSG.unpack_from(payload)[2]
    for kind, data in attributes(payload, IFINFOMSG.size):
        if kind == IFLA_IFNAME:
            name = _name(data)
            return None if name is None else (index, name)
    return None


def address_index(payload: bytes) -> int | None:
    """The interface index of an RTM_NEWADDR payload, None if it is too short to have one."""
    return IFADDRMSG.unpack_from(payload)[4] if len(payload) >= IFADDRMSG.size else None


def address(payload: bytes, links: dict[int, bytes]) -> str | None:
    """The address an RTM_NEWADDR payload adds to get_ips()'s list, or None.

    As liblxc: the interface is the link of that index (the address is dropped if there is
    none), renamed by an IFA_LABEL; the address is IFA_LOCAL where there is one (a
    point-to-point link's IFA_ADDRESS is its peer), else IFA_ADDRESS."""
    if len(payload) < IFADDRMSG.size:
        return None
    family, _prefix, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    name = links.get(index)
    size = ADDRESS_SIZE.get(family)
    if name is None or size is None:
        return None
    raw: bytes | None = None  # b"": liblxc's ifa_addr was set, then cleared by a bad IFA_LOCAL
    for kind, data in attributes(payload, IFADDRMSG.size):
        valid = data[:size] if len(data) >= size else None
        if kind == IFA_ADDRESS and raw is None:
            raw = valid
        elif kind == IFA_LOCAL:
            raw = valid if valid is not None else (None if raw is None else b"")
        elif kind == IFA_LABEL and (label := _name(data)) is not None:
            name = label
    if not raw or name == b"lo" or _scoped(raw, index):
        return None
    return socket.inet_ntop(family, raw)


def _scoped(raw: bytes, index: int) -> bool:
    """Whether liblxc's sin6_scope_id is non-zero: link-local unicast (fe80::/10) and
    link-local multicast (ff02::/16 and its flag variants) carry their interface index."""
    if len(raw) != 16 or index == 0:
        return False
    return (raw[0] == 0xfe and raw[1] & 0xc0 == 0x80) or (raw[0] == 0xff and raw[1] & 0x0f == 2)
