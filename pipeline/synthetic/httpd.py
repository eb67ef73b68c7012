"""The web server's process: an asyncio HTTP/1.1 responder over responses prepared in memory.

Standard library only, so the process starts in a fraction of a second. It is started by `server.serve_web`, which
sends the route table on stdin and keeps stdin open: EOF on stdin (a stop, or the parent dying) ends the process,
so no server outlives its parent. One response per connection (`Connection: close`), as img2dataset's urllib
client expects; a request is answered from its request line alone.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import sys
import threading
from urllib.parse import parse_qs, urlsplit

_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
_MAX_HEADER = 64 * 1024
BACKLOG = 2048  # a 64-thread client opens connections in bursts


def head(status: int, length: int, content_type: str = "text/html", extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", "Server: winnow-synthetic", f"Content-Type: {content_type}",
             f"Content-Length: {length}", "Connection: close", *(f"{k}: {v}" for k, v in extra), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _error(status: int) -> tuple[float, bytes, bytes, int]:
    body = f"<html><body>{status} {_REASONS[status]}</body></html>\n".encode()
    return 0.0, head(status, len(body)), body, len(body)


def prepare(routes: dict[str, tuple[str, str | None]], out_dir: str, slow_seconds: float) -> dict:
    """URL path -> (delay seconds, head, body, bytes of body to send) for every route, per its fault.

    Faults: http_404, http_500, slow (delay, then the image), truncated (full Content-Length, half the body),
    not_image (an HTML file, already in `path`, sent as image/jpeg), oversized (the bomb PNG in `path`),
    opt_out (the image with `X-Robots-Tag: noai`).
    """
    files: dict[str, bytes] = {}
    table = {}
    for url_path, (fault, rel) in routes.items():
        if fault == "http_404":
            table[url_path] = _error(404)
            continue
        if fault == "http_500":
            table[url_path] = _error(500)
            continue
        if rel not in files:
            with open(os.path.join(out_dir, rel), "rb") as f:
                files[rel] = f.read()
        body = files[rel]
        ctype = "image/jpeg" if fault == "not_image" else _CONTENT_TYPES.get(os.path.splitext(rel)[1], "image/jpeg")
        extra = (("X-Robots-Tag", "noai"),) if fault == "opt_out" else ()
        delay = slow_seconds if fault == "slow" else 0.0
        cut = len(body) // 2 if fault == "truncated" else len(body)
        table[url_path] = (delay, head(200, len(body), ctype, extra), body, cut)
    return table


class HttpProtocol(asyncio.Protocol):
    """One connection: read up to the end of the headers, answer from the route table, close."""

    def __init__(self, table: dict, loop: asyncio.AbstractEventLoop):
        self.table = table
        self.loop = loop
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.TimerHandle | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            self.pending.cancel()

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > _MAX_HEADER:
                self._send(*_error(431))
            return
        self.answered = True
        line = self.buf.split(b"\n", 1)[0].decode("latin-1").strip().split(" ")
        if len(line) != 3:
            return self._send(*_error(400))
        method, target, _ = line
        if method not in ("GET", "HEAD"):
            return self._send(*_error(405))
        delay, hd, body, cut = self._route(target)
        if method == "HEAD":
            body, cut = b"", 0
        if delay > 0:
            self.pending = self.loop.call_later(delay, self._send, delay, hd, body, cut)
        else:
            self._send(delay, hd, body, cut)

    def _route(self, target: str) -> tuple[float, bytes, bytes, int]:
        parts = urlsplit(target)  # also takes the absolute form `GET http://host/path` a proxy-style client sends
        if parts.path == "/redirect":
            to = parse_qs(parts.query).get("to", [""])[0]
            if not to or any(c in to for c in "\r\n"):  # no header injection through the test endpoint
                return _error(400)
            return 0.0, head(302, 0, extra=(("Location", to),)), b"", 0
        return self.table.get(parts.path) or _error(404)

    def _send(self, delay: float, hd: bytes, body: bytes, cut: int) -> None:
        self.pending = None
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(hd + body[:cut])
        self.transport.close()  # flushes, then closes: a truncated body ends short of its Content-Length


def _read_payload() -> dict:
    stdin = sys.stdin.buffer
    (size,) = struct.unpack(">Q", stdin.read(8))
    return pickle.loads(stdin.read(size))


def main() -> None:
    """Entry point of a server process (see server.serve_web)."""
    payload = _read_payload()
    sock = socket.socket(fileno=payload["fd"])
    table = prepare(payload["routes"], payload["out_dir"], payload["slow_seconds"])
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: HttpProtocol(table, loop), sock=sock, backlog=BACKLOG))

    def watch_parent() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the parent stopped us or died
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=watch_parent, daemon=True).start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        loop.run_forever()
    finally:
        server.close()
        sock.close()
    os._exit(0)  # skip interpreter teardown: nothing to flush, and a fast exit frees the port sooner


if __name__ == "__main__":
    main()
