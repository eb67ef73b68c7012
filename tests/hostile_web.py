"""A hostile web server on loopback, for the download guard's tests: drips, redirect tricks, format bombs.

    with HostileWeb() as web:
        web.url("/drip")   # http://127.0.0.1:PORT/drip

Routes: `/img/<n>.jpg` a small JPEG; `/padded/<bytes>/<n>.jpg` a JPEG padded to that many bytes; `/drip` headers,
then one body byte every `drip_every` seconds; `/drip-head` the status line and headers a byte at a time; `/hdr` a
Radiance HDR bomb (PIL cannot read it, OpenCV can); `/to-file` a redirect to file:///etc/passwd; `/loop` a redirect
to itself; `/to/<port>/<path>` a redirect to another loopback port. Threads are daemons: a drip the client gave up on
ends when its socket breaks.
"""

from __future__ import annotations

import io
import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from pipeline.synthetic.faults import hdr_bomb

DRIP_BYTES = 120


@lru_cache(maxsize=64)
def small_jpeg(n: int, size: int = 24) -> bytes:
    img = Image.new("RGB", (size, size), ((n * 37) % 256, (n * 91) % 256, (n * 13) % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@lru_cache(maxsize=4)
def hdr_body(side: int) -> bytes:
    return hdr_bomb(side, side)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", headers: tuple = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        parts = self.path.strip("/").split("/")
        every = self.server.drip_every
        try:
            if parts[0] == "img":
                return self._send(200, small_jpeg(int(parts[1].split(".")[0])))
            if parts[0] == "padded":
                body = small_jpeg(int(parts[2].split(".")[0]))
                return self._send(200, body + b"\0" * (int(parts[1]) - len(body)))  # bytes after EOI are ignored
            if parts[0] == "hdr":
                return self._send(200, hdr_body(self.server.hdr_side), "image/vnd.radiance")
            if parts[0] == "to-file":
                return self._send(302, headers=(("Location", "file:///etc/passwd"),))
            if parts[0] == "loop":
                return self._send(302, headers=(("Location", "/loop"),))
            if parts[0] == "to":
                return self._send(302, headers=(("Location", f"http://127.0.0.1:{parts[1]}/{'/'.join(parts[2:])}"),))
            if parts[0] == "drip":
                self.send_response(200)
                self.send_header("Content-Length", str(DRIP_BYTES))
                self.end_headers()
                self.wfile.flush()
                return self._drip(b"\xff" * DRIP_BYTES, every)
            if parts[0] == "drip-head":
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {DRIP_BYTES}\r\nX-Slow: {'y' * 200}\r\n\r\n".encode()
                return self._drip(head, every)
            self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what a guarded client does to a drip

    def _drip(self, data: bytes, every: float) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(every)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    drip_every = 0.5
    hdr_side = 2000


class HostileWeb:
    """The server in a background thread on 127.0.0.1, a free port."""

    def __init__(self, drip_every: float = 0.5, hdr_side: int = 2000):
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.drip_every, self.server.hdr_side = drip_every, hdr_side
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> HostileWeb:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
