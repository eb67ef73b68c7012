"""Refuse downloads that would reach the machines winnow runs on, or hold a worker without limit.

A URL from the web may name (or redirect to, or resolve by DNS to) a private, loopback, link-local or cloud-metadata
address such as 169.254.169.254. The guard checks the address a connection is actually made to, at connect time,
so redirects and DNS tricks are caught the same way as literal IPs (`addresses.block_reason` decides). Only http and
https are spoken, also after a redirect. A response is capped in bytes, and so is the sum of bodies a download task
holds at once (`ByteBudget`): a body reserves its size before it is read and gives it back once the image is
processed. Every URL has a wall-clock deadline over connect, redirects, headers and body: `timeout` bounds one
socket operation, so a server that sends a byte a second would otherwise hold a download forever.

img2dataset downloads with `urllib.request.urlopen`; `guarded` installs a guarded opener for the duration of a
download and puts the previous one back, so img2dataset's own download code runs unchanged behind it and nothing
else in a reused worker process is affected afterwards.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pipeline.core.config import StrictModel
from pipeline.fetch.addresses import AllowEntry, block_reason, parse_allow

__all__ = ["BlockedURL", "ByteBudget", "GuardConfig", "GuardPolicy", "block_reason", "build_opener", "guarded"]

REDIRECT_BODY_BYTES = 64 * 1024  # a redirect's body is never used: read at most this much of it


class GuardConfig(StrictModel):
    block_private: bool = Field(True, description="refuse private, loopback, link-local and metadata addresses")
    allow: list[str] = Field(default_factory=list, description="exceptions: '127.0.0.1:8080', '10.1.2.3', CIDR")
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="refuse larger bodies")
    max_bytes_in_flight: int = Field(
        256 * 1024 * 1024, ge=1024,
        description="bodies one download task holds at once (a body waits for room before it is read)")
    max_pixels: int = Field(40_000_000, ge=1, description="refuse images with more pixels, before decoding")
    max_redirects: int = Field(5, ge=0)

    @field_validator("allow")
    @classmethod
    def _valid_entries(cls, allow: list[str]) -> list[str]:
        for entry in allow:
            parse_allow(entry)  # a ValueError names the entry and what an entry may be
        return allow

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> GuardConfig:
        if self.max_bytes_in_flight < self.max_response_bytes:
            raise ValueError(f"max_bytes_in_flight ({self.max_bytes_in_flight}) must be at least "
                             f"max_response_bytes ({self.max_response_bytes}): one body must fit")
        return self


class BlockedURL(urllib.error.URLError):
    """A download refused by the guard; `str()` starts with the reason code counted in the stats."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass
class GuardPolicy:
    """What one process's guarded opener enforces (picklable, sent to download tasks)."""

    block_private: bool = True
    allow: list[str] = field(default_factory=list)
    host_map: dict[str, str] = field(default_factory=dict)  # host -> "ip:port"
    max_response_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5
    url_deadline: float | None = None  # wall-clock seconds per URL, redirects and body included
    max_bytes_in_flight: int | None = None

    @classmethod
    def from_config(cls, cfg: GuardConfig, host_map: dict[str, str] | None = None,
                    extra_allow: list[str] | None = None, url_deadline: float | None = None) -> GuardPolicy:
        return cls(cfg.block_private, [*cfg.allow, *(extra_allow or [])], dict(host_map or {}),
                   cfg.max_response_bytes, cfg.max_redirects, url_deadline, cfg.max_bytes_in_flight)


class ByteBudget:
    """Bytes of response bodies one process holds at once. A body reserves all it may need (its Content-Length,
    else the response cap) before reading, so no reader ever waits while holding part of the budget."""

    def __init__(self, limit: int):
        self.limit, self.held, self.peak = limit, 0, 0
        self._cond = threading.Condition()

    def reserve(self, n: int, deadline: float | None) -> None:
        with self._cond:
            while self.held and self.held + n > self.limit:  # alone, a reservation may exceed the limit
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise BlockedURL("url_deadline", f"no room for {n} bytes within the URL's deadline")
                self._cond.wait(left)
            self.held += n
            self.peak = max(self.peak, self.held)

    def release(self, n: int) -> None:
        with self._cond:
            self.held = max(0, self.held - n)
            self._cond.notify_all()


# The deadline of the URL this thread is fetching: set when a URL is opened, stamped on each socket it connects.
_current = threading.local()


class _DeadlineMixin:
    """A socket whose every blocking call gets at most the time left before its URL's deadline."""

    deadline: float | None = None
    op_timeout: float | None = None

    def _arm(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BlockedURL("url_deadline", "the URL did not finish within its deadline")
        self.settimeout(left if self.op_timeout is None else min(left, self.op_timeout))

    def _call(self, op, *args):  # noqa: ANN001, ANN202
        self._arm()
        try:
            return op(*args)
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.01:
                raise BlockedURL("url_deadline", "the URL did not finish within its deadline") from None
            raise

    def recv_into(self, *args):  # noqa: ANN002, ANN201
        return self._call(super().recv_into, *args)

    def recv(self, *args):  # noqa: ANN002, ANN201
        return self._call(super().recv, *args)

    def sendall(self, *args):  # noqa: ANN002, ANN201
        return self._call(super().sendall, *args)


class DeadlineSocket(_DeadlineMixin, socket.socket):
    pass


class DeadlineSSLSocket(_DeadlineMixin, ssl.SSLSocket):
    pass


def _resolve(host: str, port: int, policy: GuardPolicy) -> list[tuple[str, int]]:
    """Addresses to try for host:port, after the host map; each one is checked before connecting."""
    mapped = policy.host_map.get(host) or policy.host_map.get(f"{host}:{port}")
    if mapped:
        ip, _, mport = mapped.rpartition(":")
        return [(ip, int(mport))]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(info[4][0], info[4][1]) for info in infos]


def _connect(ip: str, port: int, timeout: float | None) -> DeadlineSocket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = DeadlineSocket(family, socket.SOCK_STREAM)
    sock.deadline, sock.op_timeout = getattr(_current, "deadline", None), timeout
    try:
        sock._arm()
        sock.connect((ip, port))
    except TimeoutError:
        sock.close()
        if sock.deadline is not None and time.monotonic() >= sock.deadline - 0.01:
            raise BlockedURL("url_deadline", f"connecting to {ip}:{port} did not finish within the deadline") \
                from None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


def _guarded_socket(host: str, port: int, timeout: float | None, policy: GuardPolicy,
                    allow: list[AllowEntry]) -> DeadlineSocket:
    last: Exception | None = None
    for ip, p in _resolve(host, port, policy):
        if policy.block_private:
            reason = block_reason(ip, p, allow)
            if reason:
                last = BlockedURL("blocked_address", f"{host}:{port} -> {reason}")
                continue
        try:
            return _connect(ip, p, timeout)
        except BlockedURL:
            raise
        except OSError as err:
            last = err
    raise last or OSError(f"no address for {host}")


def _capped_response_class(max_bytes: int, budget: ByteBudget | None) -> type[http.client.HTTPResponse]:
    class CappedResponse(http.client.HTTPResponse):
        """Refuses bodies over the cap (by Content-Length up front, or once the bytes read pass it) and reserves
        the body's bytes in the task's budget before reading it."""

        discard = False  # set on a redirect: its body is drained, never kept

        def __init__(self, sock, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            super().__init__(sock, *args, **kwargs)
            self.deadline = getattr(sock, "deadline", None)

        def read(self, amt: int | None = None) -> bytes:
            if amt is not None:
                return super().read(amt)
            if self.discard:
                return super().read(REDIRECT_BODY_BYTES)
            length = self.getheader("Content-Length")
            known = int(length) if length and length.isdigit() else None
            if known is not None and known > max_bytes:
                raise BlockedURL("response_too_large", f"Content-Length {length} > {max_bytes} bytes")
            reserved = max_bytes if known is None else known
            if budget is not None:
                budget.reserve(reserved, self.deadline)
            try:
                data = super().read((max_bytes if known is None else known) + 1)
                if len(data) > max_bytes:
                    raise BlockedURL("response_too_large", f"body larger than {max_bytes} bytes")
                if self.length:  # a body cut short of its Content-Length
                    raise http.client.IncompleteRead(data, self.length)
            except BaseException:
                if budget is not None:
                    budget.release(reserved)
                raise
            if budget is not None:
                budget.release(reserved - len(data))  # the body keeps its own size until it is processed
            return data

    return CappedResponse


def _handlers(policy: GuardPolicy, budget: ByteBudget | None) -> list[urllib.request.BaseHandler]:
    response_class = _capped_response_class(policy.max_response_bytes, budget)
    allow = [parse_allow(e) for e in policy.allow]

    class GuardedHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _guarded_socket(self.host, self.port, self.timeout, policy, allow)

    class GuardedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = _guarded_socket(self.host, self.port, self.timeout, policy, allow)
            sock._arm()  # the TLS handshake below runs under the time left
            self._context.sslsocket_class = DeadlineSSLSocket
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
            self.sock.deadline, self.sock.op_timeout = sock.deadline, sock.op_timeout

    GuardedHTTPConnection.response_class = response_class
    GuardedHTTPSConnection.response_class = response_class

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):  # noqa: ANN001, ANN201
            return self.do_open(GuardedHTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):  # noqa: ANN001, ANN201
            return self.do_open(GuardedHTTPSConnection, req)

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        max_redirections = policy.max_redirects

        def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001, ANN201
            target = headers.get("location") or headers.get("uri") or ""
            scheme = urlsplit(target).scheme.lower()
            if scheme not in ("http", "https", ""):
                fp.close()
                raise BlockedURL("blocked_scheme", f"redirect to scheme {scheme!r}, which is not http or https")
            fp.discard = True
            try:
                return super().http_error_302(req, fp, code, msg, headers)
            except urllib.error.HTTPError as err:
                if str(err.msg).startswith(self.inf_msg):  # urllib's loop / too-many-redirects check
                    fp.close()
                    raise BlockedURL("too_many_redirects",
                                     f"more than {self.max_redirections} redirects, or a redirect loop") from None
                raise

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    class RefuseOtherSchemes(urllib.request.BaseHandler):
        def unknown_open(self, req):  # noqa: ANN001, ANN201
            raise BlockedURL("blocked_scheme", f"scheme {req.type!r} is not http or https")

    return [HTTPHandler(), HTTPSHandler(), RedirectHandler(), RefuseOtherSchemes(),
            urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()]


def build_opener(policy: GuardPolicy, budget: ByteBudget | None = None) -> urllib.request.OpenerDirector:
    """An opener that speaks only http(s), checks every connection's address, caps response size, holds bodies
    within `budget` and gives each URL (with its redirects) `policy.url_deadline` seconds."""

    class GuardedOpener(urllib.request.OpenerDirector):
        def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):  # noqa: ANN001, ANN201
            depth = getattr(_current, "depth", 0)
            if depth == 0:  # a redirect re-enters open(): it runs under the first request's deadline
                _current.deadline = None if policy.url_deadline is None else time.monotonic() + policy.url_deadline
            _current.depth = depth + 1
            try:
                return super().open(fullurl, data, timeout)
            finally:
                _current.depth = depth

    opener = GuardedOpener()
    for handler in _handlers(policy, budget):
        opener.add_handler(handler)
    return opener


@contextmanager
def guarded(policy: GuardPolicy, budget: ByteBudget | None = None) -> Iterator[ByteBudget | None]:
    """Make this process's `urllib.request.urlopen` (which img2dataset calls) go through the guard while the
    block runs; the opener installed before is put back after, so later urllib users in a reused worker process
    are not guarded (or limited) by a download they have nothing to do with."""
    previous = urllib.request._opener
    urllib.request.install_opener(build_opener(policy, budget))
    try:
        yield budget
    finally:
        urllib.request.install_opener(previous)
