"""A threaded HTTP server on 127.0.0.1 that serves a folder and honours Range requests.

Python's ``http.server`` always sends whole files; GDAL's ``/vsicurl/`` reads COGs by
ranges. This one answers ``Range: bytes=a-b`` (and ``a-``, ``-n``) with 206, sends
``Accept-Ranges``, ``ETag`` and ``Last-Modified``, and counts the body bytes it sends per
file, so that tests can check how much of a file a run read.
"""

from __future__ import annotations

import email.utils
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit


class RangeServer:
    """``with RangeServer(root) as srv: srv.url("a.tif")``; ``srv.sent["a.tif"]`` bytes sent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sent: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str | None]] = []
        self.posted: list[bytes] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _file(self) -> Path | None:
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                p = (server.root / rel).resolve()
                return p if p.is_file() and server.root.resolve() in p.parents else None

            def _headers(self, p: Path, status: int, length: int, extra: dict[str, str]) -> None:
                st = p.stat()
                self.send_response(status)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
                self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def _missing(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                p = self._file()
                with server._lock:
                    server.requests.append(("HEAD", self.path, None))
                if p is None:
                    return self._missing()
                self._headers(p, 200, p.stat().st_size, {})

            def do_POST(self) -> None:  # noqa: N802 (a STAC API search: the file at the path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.posted.append(body)
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                p = self._file()
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append(("GET", self.path, rng))
                if p is None:
                    return self._missing()
                size = p.stat().st_size
                start, end = 0, size - 1
                status, extra = 200, {}
                if rng and rng.startswith("bytes=") and "," not in rng:
                    a, _, b = rng[6:].partition("-")
                    if a:
                        start, end = int(a), min(int(b), size - 1) if b else size - 1
                    else:
                        start = max(0, size - int(b))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status, extra = 206, {"Content-Range": f"bytes {start}-{end}/{size}"}
                with p.open("rb") as f:
                    f.seek(start)
                    body = f.read(end - start + 1)
                self._headers(p, status, len(body), extra)
                self.wfile.write(body)
                with server._lock:
                    server.sent[unquote(urlsplit(self.path).path).lstrip("/")] += len(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
