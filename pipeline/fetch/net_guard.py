"""Refuse downloads that would reach the machines winnow runs on, instead of the web.

A URL from the web may name (or redirect to, or resolve by DNS to) a private, loopback, link-local or cloud-metadata
address such as 169.254.169.254. The guard checks the address a connection is actually made to, at connect time,
so redirects and DNS tricks are caught the same way as literal IPs. Only http and https are spoken; responses are
capped in bytes. An explicit allow-list (host, host:port or CIDR) opens holes, e.g. the loopback port of the
synthetic web; a host map (like curl's --resolve) sends a host name to a fixed address.

img2dataset downloads with `urllib.request.urlopen`; `install_guard` installs a guarded opener for the process,
so img2dataset's own download code runs unchanged behind it.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from pydantic import Field

from pipeline.core.config import StrictModel

# Addresses that are not "the web" even though ipaddress does not flag all of them as private.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack instance metadata
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
}
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not globally routed


class GuardConfig(StrictModel):
    block_private: bool = Field(True, description="refuse private, loopback, link-local and metadata addresses")
    allow: list[str] = Field(default_factory=list, description="exceptions: '127.0.0.1:8080', '10.1.2.3', CIDR")
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="refuse larger bodies")
    max_pixels: int = Field(40_000_000, ge=1, description="refuse images with more pixels, before decoding")
    max_redirects: int = Field(5, ge=0)


class BlockedURL(urllib.error.URLError):
    """A download refused by the guard; `str()` starts with the reason code counted in the stats."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code


def _allowed(ip: ipaddress._BaseAddress, port: int | None, allow: list[str]) -> bool:
    for entry in allow:
        host, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and port is not None and str(port) != want_port:
            continue
        try:
            if ip in ipaddress.ip_network(host, strict=False):
                return True
        except ValueError:
            continue
    return False


def block_reason(address: str, port: int | None = None, allow: list[str] | tuple[str, ...] = ()) -> str | None:
    """Why a connection to `address:port` must be refused, or None if it may go ahead. Pure: no network."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if _allowed(ip, port, list(allow)):
        return None
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    for flag, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, flag):
            return f"{ip} is a {what} address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_ADDRESS_SPACE:
        return f"{ip} is in the shared (CGNAT) address space"
    if not ip.is_global:
        return f"{ip} is not a global address"
    return None


@dataclass
class GuardPolicy:
    """What one process's guarded opener enforces (picklable, sent to download tasks)."""

    block_private: bool = True
    allow: list[str] = field(default_factory=list)
    host_map: dict[str, str] = field(default_factory=dict)  # host -> "ip:port"
    max_response_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5

    @classmethod
    def from_config(cls, cfg: GuardConfig, host_map: dict[str, str] | None = None,
                    extra_allow: list[str] | None = None) -> GuardPolicy:
        return cls(cfg.block_private, [*cfg.allow, *(extra_allow or [])], dict(host_map or {}),
                   cfg.max_response_bytes, cfg.max_redirects)


def _resolve(host: str, port: int, policy: GuardPolicy) -> list[tuple[str, int]]:
    """Addresses to try for host:port, after the host map; each one is checked before connecting."""
    mapped = policy.host_map.get(host) or policy.host_map.get(f"{host}:{port}")
    if mapped:
        ip, _, mport = mapped.rpartition(":")
        return [(ip, int(mport))]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(info[4][0], info[4][1]) for info in infos]


def _guarded_socket(host: str, port: int, timeout: float | None, policy: GuardPolicy) -> socket.socket:
    last: Exception | None = None
    for ip, p in _resolve(host, port, policy):
        if policy.block_private:
            reason = block_reason(ip, p, policy.allow)
            if reason:
                last = BlockedURL("blocked_address", f"{host}:{port} -> {reason}")
                continue
        try:
            return socket.create_connection((ip, p), timeout=timeout)
        except OSError as err:
            last = err
    raise last or OSError(f"no address for {host}")


def _capped_response_class(max_bytes: int) -> type[http.client.HTTPResponse]:
    class CappedResponse(http.client.HTTPResponse):
        """Refuses bodies over the cap: by Content-Length up front, or once the bytes read pass it."""

        def read(self, amt: int | None = None) -> bytes:
            if amt is None:
                length = self.getheader("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise BlockedURL("response_too_large", f"Content-Length {length} > {max_bytes} bytes")
                data = super().read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise BlockedURL("response_too_large", f"body larger than {max_bytes} bytes")
                if self.length:  # a body cut short of its Content-Length
                    raise http.client.IncompleteRead(data, self.length)
                return data
            return super().read(amt)

    return CappedResponse


def build_opener(policy: GuardPolicy) -> urllib.request.OpenerDirector:
    """An opener that speaks only http(s), checks every connection's address and caps response size."""
    response_class = _capped_response_class(policy.max_response_bytes)

    class GuardedHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _guarded_socket(self.host, self.port, self.timeout, policy)

    GuardedHTTPConnection.response_class = response_class

    class GuardedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = _guarded_socket(self.host, self.port, self.timeout, policy)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    GuardedHTTPSConnection.response_class = response_class

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):  # noqa: ANN001, ANN201
            return self.do_open(GuardedHTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):  # noqa: ANN001, ANN201
            return self.do_open(GuardedHTTPSConnection, req)

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        max_redirections = policy.max_redirects

    class RefuseOtherSchemes(urllib.request.BaseHandler):
        def unknown_open(self, req):  # noqa: ANN001, ANN201
            raise BlockedURL("blocked_scheme", f"scheme {req.type!r} is not http or https")

    opener = urllib.request.OpenerDirector()
    for handler in (HTTPHandler(), HTTPSHandler(), RedirectHandler(), RefuseOtherSchemes(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def install_guard(policy: GuardPolicy) -> None:
    """Make this process's `urllib.request.urlopen` (which img2dataset calls) go through the guard."""
    urllib.request.install_opener(build_opener(policy))
