"""The download address guard's decisions, on addresses only: no test here opens a connection off loopback."""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.error import URLError

import pytest

from pipeline.fetch.download_reasons import classify
from pipeline.fetch.net_guard import BlockedURL, ByteBudget, GuardPolicy, block_reason, build_opener


@pytest.mark.parametrize("address", [
    "169.254.169.254",  # cloud metadata
    "169.254.170.2",
    "100.100.100.200",
    "fd00:ec2::254",
    "127.0.0.1", "127.8.9.10", "::1",  # loopback
    "10.0.0.5", "172.16.3.4", "192.168.1.1", "fc00::1",  # private
    "169.254.1.1", "fe80::1",  # link-local
    "0.0.0.0", "::",  # unspecified
    "224.0.0.1",  # multicast
    "100.64.0.1",  # CGNAT
    "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped IPv6
    "240.0.0.1",  # reserved
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert block_reason(address, 80) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert block_reason(address, 443) is None


def test_allow_list_is_exact_about_ports_and_networks() -> None:
    assert block_reason("127.0.0.1", 8080, ["127.0.0.1:8080"]) is None
    assert block_reason("127.0.0.1", 8081, ["127.0.0.1:8080"]) is not None
    assert block_reason("10.1.2.3", 9000, ["10.0.0.0/8"]) is None
    assert block_reason("169.254.169.254", 80, ["10.0.0.0/8"]) is not None
    assert block_reason("127.0.0.1", 1234, ["127.0.0.1"]) is None


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/big"):
            body = b"x" * 5000
        elif self.path.startswith("/to-"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.path[4:]}/ok")
            self.end_headers()
            return
        else:
            body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def two_servers():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [s.server_address[1] for s in servers]
    for s in servers:
        s.shutdown()


def test_loopback_refused_unless_allowed_and_redirects_are_checked(two_servers) -> None:
    a, b = two_servers
    guarded = build_opener(GuardPolicy(allow=[f"127.0.0.1:{a}"], max_response_bytes=1024))
    assert guarded.open(f"http://127.0.0.1:{a}/ok", timeout=5).read() == b"hello"
    with pytest.raises(URLError, match="blocked_address"):
        guarded.open(f"http://127.0.0.1:{b}/ok", timeout=5)
    # an allowed server redirecting to a port outside the allow-list is refused at the redirect
    with pytest.raises(URLError, match="blocked_address"):
        guarded.open(f"http://127.0.0.1:{a}/to-{b}", timeout=5)
    # ...while a redirect that stays inside the allow-list is followed
    both = build_opener(GuardPolicy(allow=[f"127.0.0.1:{a}", f"127.0.0.1:{b}"]))
    assert both.open(f"http://127.0.0.1:{a}/to-{b}", timeout=5).read() == b"hello"


def test_response_cap_and_host_map(two_servers) -> None:
    a, _ = two_servers
    opener = build_opener(GuardPolicy(allow=[f"127.0.0.1:{a}"], host_map={"web.test.invalid": f"127.0.0.1:{a}"},
                                      max_response_bytes=1024))
    assert opener.open("http://web.test.invalid/ok", timeout=5).read() == b"hello"
    with pytest.raises(BlockedURL, match="response_too_large"):
        opener.open("http://web.test.invalid/big", timeout=5).read()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:text/plain,hi", "gopher://x/"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(BlockedURL, match="blocked_scheme"):
        build_opener(GuardPolicy()).open(url, timeout=1)


def test_guard_applies_to_urlopen_while_installed_and_not_after(two_servers) -> None:
    from pipeline.fetch.net_guard import guarded

    a, b = two_servers
    with guarded(GuardPolicy(allow=[f"127.0.0.1:{a}"])):
        assert urllib.request.urlopen(f"http://127.0.0.1:{a}/ok", timeout=5).read() == b"hello"
        with pytest.raises(URLError, match="blocked_address"):
            urllib.request.urlopen(f"http://127.0.0.1:{b}/ok", timeout=5)
    # a later urllib user in the same (reused) worker process is not guarded by a download that has ended
    assert urllib.request.urlopen(f"http://127.0.0.1:{b}/ok", timeout=5).read() == b"hello"


@pytest.fixture()
def hostile():
    from hostile_web import HostileWeb

    with HostileWeb(drip_every=0.3) as web:
        yield web


@pytest.mark.parametrize("path", ["/drip", "/drip-head"])
def test_a_dripping_server_is_cut_at_the_url_deadline(hostile, path: str) -> None:
    """One byte every 0.3 s never trips the 1 s socket timeout; the 2 s deadline covers headers and body."""
    opener = build_opener(GuardPolicy(allow=[f"127.0.0.1:{hostile.port}"], url_deadline=2.0))
    t0 = time.monotonic()
    with pytest.raises(URLError, match="url_deadline") as err:
        opener.open(hostile.url(path), timeout=1).read()
    assert 1.5 < time.monotonic() - t0 < 6
    assert classify("failed_to_download", str(err.value)) == "url_deadline"


def test_the_deadline_covers_every_redirect_of_one_url(hostile) -> None:
    port = hostile.port
    opener = build_opener(GuardPolicy(allow=[f"127.0.0.1:{port}"], url_deadline=2.0))
    t0 = time.monotonic()
    with pytest.raises(URLError, match="url_deadline"):
        opener.open(hostile.url(f"/to/{port}/drip"), timeout=1).read()
    assert time.monotonic() - t0 < 6


@pytest.mark.parametrize(("path", "reason"), [("/to-file", "blocked_scheme"), ("/loop", "too_many_redirects")])
def test_redirect_failures_say_what_happened(hostile, path: str, reason: str) -> None:
    opener = build_opener(GuardPolicy(allow=[f"127.0.0.1:{hostile.port}"], max_redirects=5))
    with pytest.raises(URLError) as err:
        opener.open(hostile.url(path), timeout=5)
    assert classify("failed_to_download", str(err.value)) == reason


def test_bodies_wait_for_room_in_the_task_budget(hostile) -> None:
    """Three 1000-byte bodies fill a 3000-byte budget: a fourth waits until one is given back."""
    budget = ByteBudget(3000)
    opener = build_opener(GuardPolicy(allow=[f"127.0.0.1:{hostile.port}"], url_deadline=20), budget)
    bodies = [opener.open(hostile.url(f"/padded/1000/{i}.jpg"), timeout=5).read() for i in range(3)]
    assert [len(b) for b in bodies] == [1000] * 3 and budget.held == 3000
    got: list[bytes] = []
    fourth = threading.Thread(target=lambda: got.append(opener.open(hostile.url("/padded/1000/4.jpg"),
                                                                    timeout=5).read()))
    fourth.start()
    fourth.join(0.5)
    assert fourth.is_alive() and not got  # waiting for room, not reading
    budget.release(1000)  # the resizer is done with one image
    fourth.join(5)
    assert len(got[0]) == 1000 and budget.peak == 3000 and budget.held == 3000


def test_a_body_that_never_gets_room_ends_at_the_deadline(hostile) -> None:
    budget = ByteBudget(1500)
    opener = build_opener(GuardPolicy(allow=[f"127.0.0.1:{hostile.port}"], url_deadline=1.0), budget)
    opener.open(hostile.url("/padded/1000/1.jpg"), timeout=5).read()
    with pytest.raises(URLError, match="url_deadline"):
        opener.open(hostile.url("/padded/1000/2.jpg"), timeout=5).read()
    assert budget.held == 1000  # the refused body gave back what it had reserved
