"""A loopback HTTP server for remote-imagery tests: byte ranges, a request log, injected faults.

Python's ``http.server`` answers every GET with the whole file, and GDAL's ``/vsicurl/`` reads a
COG in byte ranges, so a test that wants to see windowed reads (and what happens when one of
them fails) needs a server that speaks ``Range: bytes=a-b`` with ``206 Partial Content``. This one
serves files from a folder, logs every request, and can be told to answer data requests with
``503``, to drop the connection or to stall (accept it and send nothing): N of them, or all,
after the next K that succeed. It can also demand credentials (``require``): basic auth and
query parameters, as a private bucket or a presigned URL does.

Files are served under a random prefix (``url``), so URLs never repeat between tests: GDAL
caches what it read per URL for the life of the process, and a loopback port is reused.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
# 503: an overloaded server; drop: the connection closes before any answer; cut: it closes
# halfway through the bytes (a network failure mid-transfer); stall: the request is read and
# never answered (a hung server), until the server stops.
Fault = Literal["503", "drop", "cut", "stall"]


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None  # the Range header, None for a full GET


@dataclass
class Faults:
    """What data requests (GETs of a file that exists) get instead of their bytes."""

    kind: Fault = "503"
    count: int | None = 0  # this many requests fail, then requests succeed again; None: all
    after: int = 0  # ... once this many more have succeeded (a server gone bad mid-scene)

    def take(self) -> bool:
        """True when this request must fail."""
        if self.after > 0:
            self.after -= 1
            return False
        if self.count is None:
            return True
        if self.count > 0:
            self.count -= 1
            return True
        return False


@dataclass
class RangeServer:
    """Files of ``root`` at ``url``; ``requests`` logs what was asked, ``faults`` what fails."""

    root: Path
    url: str = ""  # http://127.0.0.1:<port>/<random prefix>
    prefix: str = field(default_factory=lambda: "/" + secrets.token_hex(4))
    requests: list[Request] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stalled: int = 0  # requests stalled so far
    stopping: threading.Event = field(default_factory=threading.Event)  # ends the stalls
    credentials: tuple[str, str] | None = None  # basic auth every request must carry
    query: dict[str, str] = field(default_factory=dict)  # parameters every request must carry

    def data_requests(self, name: str) -> list[Request]:
        """The GETs of one file, in order."""
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path == f"/{name}"]

    def fail(self, kind: Fault = "503", count: int | None = None, after: int = 0) -> None:
        """Make ``count`` data requests (None: all) fail with ``kind``, after ``after`` more."""
        with self.lock:
            self.faults = Faults(kind, count, after)

    def require(self, user: str, password: str, **query: str) -> None:
        """Answer 401 without this basic auth and 403 without these query parameters."""
        with self.lock:
            self.credentials, self.query = (user, password), dict(query)

    def refusal(self, authorization: str | None, query: str) -> int | None:
        """The status a request with these credentials gets instead of its answer, or None."""
        with self.lock:
            credentials, required = self.credentials, self.query
        if credentials is not None:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            if authorization != f"Basic {token}":
                return 401
        given = dict(parse_qsl(query, keep_blank_values=True))
        return 403 if any(given.get(k) != v for k, v in required.items()) else None


def _handler(server: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real object stores do

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path, _, query = self.path.partition("?")
            name = path.removeprefix(server.prefix)
            header = self.headers.get("Range")
            with server.lock:
                server.requests.append(Request(self.command, name, header))
            refused = server.refusal(self.headers.get("Authorization"), query)
            if refused is not None:
                self._send(refused, b"denied", body)
                return
            target = server.root / name.lstrip("/")
            if not path.startswith(server.prefix + "/") or ".." in name or not target.is_file():
                self._send(404, b"not found", body)
                return
            with server.lock:
                failing = body and server.faults.take()
                kind = server.faults.kind
            if failing and kind == "stall":
                with server.lock:
                    server.stalled += 1
                server.stopping.wait()  # the client sees an open connection and no byte
                self.close_connection = True
                return
            if failing and kind == "drop":
                self.close_connection = True
                self.connection.close()  # no status line: the client sees an empty reply
                return
            if failing and kind == "503":
                self._send(503, b"slow down", body)
                return
            data = target.read_bytes()
            match = _RANGE.match(header or "")
            if match is None:
                self._send(200, data, body, size=len(data))
                return
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            if start >= len(data):
                self._send(416, b"", body, extra={"Content-Range": f"bytes */{len(data)}"})
                return
            content_range = f"bytes {start}-{end}/{len(data)}"
            part = data[start : end + 1]
            if failing:  # cut: announce every byte, send half, hang up
                self._send(206, part[: len(part) // 2], body, size=len(part),
                           extra={"Content-Range": content_range})  # fmt: skip
                self.close_connection = True
                self.connection.close()
                return
            self._send(206, part, body, extra={"Content-Range": content_range})

        def _send(
            self, status: int, data: bytes, body: bool, size: int | None = None,
            extra: dict[str, str] | None = None,
        ) -> None:  # fmt: skip
            self.send_response(status)
            self.send_header("Content-Length", str(len(data) if size is None else size))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def serving(root: Path) -> Iterator[RangeServer]:
    """Serve ``root`` on a free loopback port for the duration of the block."""
    state = RangeServer(Path(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}{state.prefix}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
