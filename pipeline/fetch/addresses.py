"""Which addresses a download may connect to: the web, never the machines winnow runs on.

`block_reason` is the one decision (pure: no network). Private, loopback, link-local, multicast, reserved,
shared (CGNAT) and site-local addresses are refused, and so are IPv6 addresses that embed one (IPv4-mapped
`::ffff:127.0.0.1`, 6to4 `2002:7f00:1::`). An allow-list entry (`127.0.0.1:8080`, `10.0.0.0/8`, `[::1]:8080`)
opens a hole for a test server or an internal mirror; cloud metadata addresses stay refused whatever it says.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses that are not "the web" even though ipaddress does not flag all of them as private.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack instance metadata
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
}
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not globally routed
MIN_ALLOW_PREFIX = 8  # an allow-list network wider than /8 opens (nearly) everything: refused as a mistake
_FLAGS = (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_multicast", "multicast"),
          ("is_unspecified", "unspecified"), ("is_reserved", "reserved"), ("is_private", "private"))
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::(\d+))?$")


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list hole: a network (a single address is a /32 or /128) and optionally one port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    def admits(self, ip: IPAddress, port: int | None) -> bool:
        return ip in self.network and (self.port is None or port is None or port == self.port)


def parse_allow(entry: str) -> AllowEntry:
    """`IP`, `IP:port`, `CIDR`, `CIDR:port`, `[IPv6]:port` or `[IPv6/prefix]:port`; ValueError saying why not."""
    text = entry.strip()
    m = _BRACKETED.match(text)
    if m:
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or network: allow-list entries are addresses "
                         "(127.0.0.1, 127.0.0.1:8080, [::1]:8080) or networks (10.0.0.0/8), never host names, "
                         "because a name can resolve anywhere") from None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{entry!r}: port {port!r} is not a number from 1 to 65535")
    if network.prefixlen < MIN_ALLOW_PREFIX:
        raise ValueError(f"{entry!r} is too broad (/{network.prefixlen}): it would let downloads reach every "
                         f"private address; list the hosts or a network of /{MIN_ALLOW_PREFIX} or narrower")
    return AllowEntry(network, int(port) if port else None)


def _unwrap(ip: IPAddress) -> tuple[IPAddress, str]:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4), with how it carries it, else itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped, ""  # ::ffff:127.0.0.1 is 127.0.0.1
        if ip.sixtofour is not None:
            return ip.sixtofour, f" (embedded in 6to4 address {ip})"  # a 6to4 relay forwards to it
    return ip, ""


def block_reason(address: str, port: int | None = None, allow: list | tuple = ()) -> str | None:
    """Why a connection to `address:port` must be refused, or None if it may go ahead. Pure: no network.

    `allow` holds AllowEntry values or their text (parsed here; a malformed entry is a ValueError)."""
    ip, via = _unwrap(ipaddress.ip_address(address.split("%")[0]))
    if ip in METADATA_ADDRESSES:
        return f"{ip}{via} is a cloud metadata address"  # before the allow-list: no entry opens these
    entries = [e if isinstance(e, AllowEntry) else parse_allow(e) for e in allow]
    if any(e.admits(ip, port) for e in entries):
        return None
    for flag, what in _FLAGS:
        if getattr(ip, flag):
            return f"{ip}{via} is a {what} address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_ADDRESS_SPACE:
        return f"{ip}{via} is in the shared (CGNAT) address space"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return f"{ip} is a site-local address (fec0::/10 reaches a site's private network)"
    if not ip.is_global:
        return f"{ip}{via} is not a global address"
    return None
