"""The loopback server answers every URL as the truth table says, starts fast, and leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from pipeline.synthetic.server import rewrite_urls, serve_web

SLOW_S = 0.3  # the small web's slow_seconds (conftest)


def fetch(url: str, timeout: float = 10.0) -> dict:
    """Status, headers, body (possibly partial), declared length, elapsed seconds, and the error class if any."""
    t0 = time.perf_counter()
    out = {"status": None, "headers": {}, "body": b"", "length": None, "error": None}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            out.update(status=r.status, headers=dict(r.headers), length=int(r.headers["Content-Length"]))
            try:
                out["body"] = r.read()
            except http.client.IncompleteRead as err:
                out.update(body=err.partial, error="IncompleteRead")
    except urllib.error.HTTPError as err:
        out.update(status=err.code, headers=dict(err.headers), body=err.read())
    out["seconds"] = time.perf_counter() - t0
    return out


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server(small_web):
    with serve_web(small_web[1]) as web:
        yield web


def test_every_url_is_served_as_the_truth_says(small_web, truth, server):
    cfg, out, _, _ = small_web
    assert cfg.slow_seconds == SLOW_S
    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(lambda u: fetch(server.url(u)), truth.url))
    seen = set()
    for row, r in zip(truth.itertuples(), got, strict=True):
        seen.add(row.fault)
        file = open(os.path.join(out, row.path), "rb").read() if isinstance(row.path, str) else None
        if row.fault == "http_404":
            assert r["status"] == 404
        elif row.fault == "http_500":
            assert r["status"] == 500
        elif row.fault == "truncated":
            assert r["status"] == 200 and r["error"] == "IncompleteRead"
            assert r["length"] == len(file) and 0 < len(r["body"]) < r["length"] and file.startswith(r["body"])
        elif row.fault == "not_image":
            assert r["status"] == 200 and r["headers"]["Content-Type"] == "image/jpeg"
            assert r["body"] == file and r["body"].startswith(b"<!DOCTYPE html")
        elif row.fault == "oversized":
            assert r["status"] == 200 and r["headers"]["Content-Type"] == "image/png" and r["body"] == file
            width, height = struct.unpack(">II", r["body"][16:24])  # PNG IHDR
            assert width * height == cfg.oversized_pixels and len(r["body"]) < cfg.oversized_pixels / 100
        else:  # none, slow, opt_out: the image itself
            assert r["status"] == 200 and r["error"] is None and r["body"] == file
            assert hashlib.sha256(r["body"]).hexdigest() == row.sha256
            assert r["headers"]["Content-Type"] == ("image/png" if row.path.endswith(".png") else "image/jpeg")
        assert (r["headers"].get("X-Robots-Tag") == "noai") == (row.fault == "opt_out")
        if row.fault == "slow":
            assert r["seconds"] >= SLOW_S
    assert seen == {"none", "http_404", "http_500", "slow", "truncated", "not_image", "oversized", "opt_out"}


def test_slow_urls_do_not_hold_up_others(truth, server):
    slow = server.url(truth[truth.fault == "slow"].url.iloc[0])
    normal = [server.url(u) for u in truth[truth.fault == "none"].url.iloc[:20]]
    with ThreadPoolExecutor(2) as ex:
        pending = ex.submit(fetch, slow)
        time.sleep(0.02)
        t0 = time.perf_counter()
        assert all(fetch(u)["status"] == 200 for u in normal)
        quick = time.perf_counter() - t0
        assert pending.result()["seconds"] >= SLOW_S
    assert quick < SLOW_S


def test_slow_seconds_can_be_overridden(small_web, truth):
    slow = truth[truth.fault == "slow"].url.iloc[0]
    with serve_web(small_web[1], slow_seconds=0.05) as web:
        r = fetch(web.url(slow))
    assert r["status"] == 200 and 0.05 <= r["seconds"] < SLOW_S


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_redirect_endpoint_and_bad_requests(server):
    opener = urllib.request.build_opener(_NoRedirect)
    target = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(f"{server.base_url}/redirect?to={urllib.parse.quote(target, safe='')}")
    assert err.value.code == 302 and err.value.headers["Location"] == target
    assert fetch(f"{server.base_url}/redirect?to=http%3A%2F%2Fx%0d%0aSet-Cookie%3A%20a")["status"] == 400
    assert fetch(f"{server.base_url}/redirect")["status"] == 400
    assert fetch(f"{server.base_url}/img/not-there.jpg")["status"] == 404
    assert fetch(f"{server.base_url}/")["status"] == 404
    post = urllib.request.Request(f"{server.base_url}/img/x.jpg", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(post, timeout=5)
    assert err.value.code == 405


def test_head_request_sends_headers_only(truth, server):
    url = server.url(truth[truth.fault == "none"].url.iloc[0])
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) > 0 and r.read() == b""


def test_addresses(small_web, server):
    assert server.base_url == f"http://127.0.0.1:{server.port}"
    assert server.host_map == {small_web[0].host: f"127.0.0.1:{server.port}"}
    assert server.url(f"http://{small_web[0].host}/img/a.jpg?x=1") == f"{server.base_url}/img/a.jpg?x=1"


def test_starts_fast_and_stop_closes_the_port(small_web, truth):
    url = truth[truth.fault == "none"].url.iloc[0]
    with serve_web(small_web[1], workers=2) as web:
        assert web.start_seconds < 2.0
        port, procs = web.port, web.procs
        assert len(procs) == 2 and port_open(port)
        assert all(fetch(web.url(url))["status"] == 200 for _ in range(20))  # both workers share one port
    assert all(p.poll() is not None for p in procs)
    assert not port_open(port)


def test_fixed_port(small_web):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    web = serve_web(small_web[1], port=free)
    try:
        assert web.port == free and fetch(f"{web.base_url}/nope")["status"] == 404
    finally:
        web.stop()
    web.stop()  # a second stop is harmless
    assert not web.running


def test_server_dies_with_its_parent(small_web):
    """A parent killed outright (no cleanup runs) must not leave its server processes behind."""
    code = ("import sys, time; from pipeline.synthetic.server import serve_web; w = serve_web(sys.argv[1]); "
            "print(w.port, w.procs[0].pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, small_web[1]], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        port, child = map(int, parent.stdout.readline().split())
        assert port_open(port)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (os.path.exists(f"/proc/{child}") or port_open(port)):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}") and not port_open(port)


def test_rewrite_urls_points_a_list_at_the_server(small_web, server, tmp_path):
    out = small_web[1]
    dst = str(tmp_path / "local.parquet")
    assert rewrite_urls(os.path.join(out, "hq.parquet"), dst, server.base_url) == small_web[0].hq_size
    before, after = pd.read_parquet(os.path.join(out, "hq.parquet")), pd.read_parquet(dst)
    assert after.caption.tolist() == before.caption.tolist()
    assert all(a.startswith(server.base_url + "/hq/") for a in after.url)
    assert [urllib.parse.urlsplit(u).path for u in after.url] == [urllib.parse.urlsplit(u).path for u in before.url]
    assert all(fetch(u)["status"] == 200 for u in after.url[:5])


def test_unbuilt_web_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_web"):
        serve_web(str(tmp_path))
