"""Who the client is: the socket's peer, or X-Forwarded-For only when that peer is a trusted proxy.

An address named by a header is believed only as far back as the chain of trusted proxies
reaches; anything a client could have written itself is never taken as its address.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from aiohttp import web

from frontend.config import Network

UNKNOWN = "unknown"


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)  # the socket's peer: parsed on every request, few values
def _parse_peer(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return _parse(value)


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             proxies: Sequence[Network]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   proxies: Sequence[Network]) -> str:
    """The client's address, from the peer and the X-Forwarded-For header lines in order.

    The chain is walked from the right (the hop nearest to us): each trusted proxy vouches for
    the entry before it; the first untrusted entry is the client. A malformed entry ends the
    walk at the last hop that is still vouched for.
    """
    current = _parse_peer(peer) if peer else None
    if current is None:
        return peer or UNKNOWN
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    while hops and _trusted(current, proxies):
        previous = _parse(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)


def of_request(request: web.BaseRequest, proxies: Sequence[Network]) -> str:
    # request.remote is the socket's peer: aiohttp 3.8 applies no forwarding headers to it.
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)
