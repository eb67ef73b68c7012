"""Serve a built synthetic web on loopback, with the faults its truth table records.

    with serve_web("runs/demo/web") as web:
        web.base_url   # http://127.0.0.1:PORT
        web.host_map   # {"web.synthetic.invalid": "127.0.0.1:PORT"}: how a downloader reaches the URLs in pool.parquet

The server runs in its own process(es) (see httpd.py), so it never competes for the caller's GIL. The parent binds
the listening socket and hands it to `workers` processes; each answers from bytes preloaded in memory.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import time
import weakref
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.layout import atomic_write

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds the `pipeline` package
_CHILD = f"import sys; sys.path.insert(0, {_ROOT!r}); from pipeline.synthetic.httpd import main; main()"
START_TIMEOUT_S = 30.0


def _stop_processes(procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """Close each server's stdin (its signal to exit), then wait; kill any that linger."""
    for p in procs:
        if p.stdin is not None and not p.stdin.closed:
            try:
                p.stdin.close()
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class WebServer:
    """A running synthetic web server; stop it with `.stop()` or by leaving its `with` block."""

    def __init__(self, procs: list[subprocess.Popen], port: int, host: str, start_seconds: float):
        self.procs = procs
        self.port = port
        self.host = host
        self.start_seconds = start_seconds
        self.base_url = f"http://127.0.0.1:{port}"
        self.host_map = {host: f"127.0.0.1:{port}"}
        self._finalizer = weakref.finalize(self, _stop_processes, procs)  # also runs at interpreter exit

    def url(self, url: str) -> str:
        """A URL of the synthetic web, pointed at this server."""
        return rewrite_url(url, self.base_url)

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        self._finalizer()

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WebServer({self.base_url}, workers={len(self.procs)}, running={self.running})"


def _routes(out_dir: str) -> dict[str, tuple[str, str | None]]:
    truth = pq.read_table(os.path.join(out_dir, "truth.parquet"), columns=["url", "fault", "path"]).to_pydict()
    return {urlsplit(u).path: (f, p) for u, f, p in zip(truth["url"], truth["fault"], truth["path"], strict=True)}


def _wait_ready(proc: subprocess.Popen, deadline: float) -> None:
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
        if ready:
            line = proc.stdout.readline()
            if line.strip() == b"READY":
                proc.stdout.close()
                return
            raise RuntimeError(f"synthetic web server failed to start (exit code {proc.wait()}); see stderr")
        if left <= 0:
            raise RuntimeError(f"synthetic web server not ready after {START_TIMEOUT_S:.0f}s")


def serve_web(out_dir: str, *, port: int = 0, slow_seconds: float | None = None, workers: int = 1) -> WebServer:
    """Start serving the web built in `out_dir` on 127.0.0.1 (a free port unless `port` is given).

    `slow_seconds` overrides the web config's delay for `slow` URLs. `workers` > 1 shares the socket between
    several processes (more throughput when cores are free).
    """
    from pipeline.synthetic.web import read_web

    t0 = time.monotonic()
    info = read_web(out_dir)
    if info is None:
        raise FileNotFoundError(f"{out_dir}: no complete synthetic web (web.json missing); run build_web first")
    slow = float(slow_seconds if slow_seconds is not None else info["config"]["slow_seconds"])
    payload_dict = {"routes": _routes(out_dir), "out_dir": os.path.abspath(out_dir), "slow_seconds": slow}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    procs: list[subprocess.Popen] = []
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
        payload = pickle.dumps({**payload_dict, "fd": sock.fileno()})
        for _ in range(max(1, workers)):
            proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    pass_fds=(sock.fileno(),), start_new_session=True)
            procs.append(proc)
            proc.stdin.write(struct.pack(">Q", len(payload)) + payload)
            proc.stdin.flush()
        deadline = time.monotonic() + START_TIMEOUT_S
        for proc in procs:
            _wait_ready(proc, deadline)
        port = sock.getsockname()[1]
    except BaseException:
        _stop_processes(procs, timeout=1.0)
        raise
    finally:
        sock.close()  # the children hold the socket now; once they exit, the port is closed
    return WebServer(procs, port, info["host"], time.monotonic() - t0)


def rewrite_url(url: str, base_url: str) -> str:
    """Replace a URL's scheme and host with `base_url`'s, keeping path and query."""
    base, parts = urlsplit(base_url), urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))


def rewrite_urls(parquet_in: str, parquet_out: str, base_url: str) -> int:
    """Copy a URL list with every `url` pointed at `base_url` (e.g. a live server), other columns untouched.

    Returns the number of rows.
    """
    table = pq.read_table(parquet_in)
    urls = [rewrite_url(u, base_url) for u in table.column("url").to_pylist()]
    table = table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))
    with atomic_write(parquet_out, "wb") as f:
        pq.write_table(table, f)
    return table.num_rows
