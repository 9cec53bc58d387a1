"""A running container's addresses as liblxc's get_ips() lists them, without forking the helper.

Only a short-lived thread of its own ever enters the container's network namespace (setns
changes the calling thread alone); any failure gives no address, never an exception.
"""
from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from itertools import islice
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

# Bounds: the namespace is the container's, and its root chooses what is in it.
MAX_ADDRESSES = 256
MAX_DATAGRAMS = 256  # per dump: ~5,000 interfaces; a longer dump gives no address
RECV_SIZE = 65536  # twice the kernel's dump datagram (32 KiB, unless one message is larger)
TIMEOUT = 1.0  # seconds for each read of a reply

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def addresses(pid: int) -> list[str]:
    """The addresses get_ips() would list for the network namespace of process `pid`: those of
    every interface but "lo", IPv4 and IPv6 but link-local, sorted as strings (liblxc's
    add_to_array qsorts them with strcmp); [] if they cannot be read (the process is gone, its
    namespace with it, or setns is refused)."""
    if pid < 1:
        return []
    try:
        with _socket_in_netns_of(pid) as s:
            links = dict(filter(None, map(link_name, _dump(s, 1, RTM_GETLINK))))
            found = (address(p, links) for p in _dump(s, 2, RTM_GETADDR))
            return sorted(islice(filter(None, found), MAX_ADDRESSES))
    except OSError as exc:
        # A container that stopped meanwhile is routine; a refused setns is a sandbox without
        # CAP_SYS_ADMIN, and every running container would show no address.
        level = logging.WARNING if isinstance(exc, PermissionError) else logging.DEBUG
        log.log(level, "no addresses for pid %d: %s", pid, exc)
        return []


def _socket_in_netns_of(pid: int) -> socket.socket:
    """A NETLINK_ROUTE socket in the network namespace of `pid` that hears only the kernel."""
    s = _made_in_netns_of(pid)
    try:
        s.settimeout(TIMEOUT)
        s.connect((0, 0))  # the kernel's port: what others send is refused, not queued
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


def _dump(s: socket.socket, seq: int, kind: int) -> list[bytes]:
    # The request's family is AF_UNSPEC (all families), as liblxc asks; the header after
    # nlmsghdr is an ifinfomsg or an ifaddrmsg, all zeros.
    body = bytes(IFINFOMSG.size if kind == RTM_GETLINK else IFADDRMSG.size)
    s.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    return read_dump(s.recvfrom, seq, REPLY[kind])


def read_dump(recvfrom: Callable[[int], tuple[bytes, Any]], seq: int, kind: int) -> list[bytes]:
    """The payloads of one dump's `kind` messages, up to its NLMSG_DONE.

    Raises OSError on an NLMSG_ERROR or a dump longer than MAX_DATAGRAMS. Datagrams that are
    not the kernel's (root in a container may write to a netlink port), messages of another
    sequence and of another type are ignored."""
    payloads: list[bytes] = []
    for _ in range(MAX_DATAGRAMS):
        data, sender = recvfrom(RECV_SIZE)
        if not (isinstance(sender, tuple) and sender and sender[0] == 0):
            continue  # port id 0 is the kernel's
        for msg_kind, msg_seq, payload in messages(data):
            if msg_seq != seq:
                continue
            if msg_kind == NLMSG_DONE:
                return payloads
            if msg_kind == NLMSG_ERROR:
                raise OSError("the kernel refused the netlink dump")
            if msg_kind == kind:
                payloads.append(payload)
    raise OSError("the netlink dump did not end")


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
