"""Who the client is: the socket's peer, unless that peer is a trusted proxy — and then only as
far back as the chain of trusted proxies reaches."""
from __future__ import annotations

import ipaddress

import pytest

from frontend.clientaddr import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/29"), ipaddress.ip_network("fd00::1/128"))


@pytest.mark.parametrize(("peer", "header", "client"), [
    # Not from a proxy: the header is whatever the client wrote, and ignored.
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
    # From a trusted proxy: the address it appended.
    ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    # A client's own forged entries sit left of what the proxy appended: never reached.
    ("10.0.0.2", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),
    # Two trusted proxies in a row, headers on two lines.
    ("10.0.0.2", ["198.51.100.1", "10.0.0.3"], "198.51.100.1"),
    # The chain ends at the first untrusted hop, whatever is further left.
    ("10.0.0.2", ["10.0.0.4, 198.51.100.7, 10.0.0.3"], "198.51.100.7"),
    # Garbage stops the walk at the last vouched-for hop.
    ("10.0.0.2", ["not-an-ip"], "10.0.0.2"),
    ("10.0.0.2", ["198.51.100.1, <script>"], "10.0.0.2"),
    # A trusted proxy that sent no header: it is the client.
    ("10.0.0.2", [], "10.0.0.2"),
    # IPv6 peers, bracketed entries, IPv4-mapped peers.
    ("fd00::1", ["[2001:db8::5]"], "2001:db8::5"),
    ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    # No peer (a Unix socket): no address to trust.
    (None, ["198.51.100.1"], "unknown"),
])
def test_client_address(peer: str | None, header: list[str], client: str) -> None:
    assert client_address(peer, header, PROXIES) == client


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("10.0.0.2", ["198.51.100.1"], ()) == "10.0.0.2"
