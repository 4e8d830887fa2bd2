"""Local servers for tests, all on 127.0.0.1: static files with HTTP Range, a failing server, a flaky file server,
a STAC API and a flaky proxy in front of it.

GDAL reads COGs over ``/vsicurl/`` with Range requests; the standard library's file server ignores
``Range`` (answers 200 with the whole file), so :class:`RangeRequestHandler` adds 206 partial responses.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """Serves files from a folder, honouring single ``Range: bytes=a-b`` requests with 206 responses."""

    def log_message(self, format: str, *args) -> None:  # quiet test output
        pass

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    delay = 0.0  # seconds added to every request (a remote store's round trip)

    def do_HEAD(self) -> None:
        time.sleep(self.delay)
        super().do_HEAD()

    def do_GET(self) -> None:
        time.sleep(self.delay)
        match = _RANGE.match(self.headers.get("Range", "").strip())
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().do_GET()
        size = path.stat().st_size
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with path.open("rb") as f:
            f.seek(start)
            self.wfile.write(f.read(end - start + 1))


class _ErrorHandler(BaseHTTPRequestHandler):
    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"code": "ServerError", "description": "broken on purpose"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


class _Faulty:
    """Faults a flaky server applies (``faults``, JSON from the test): the first ``first`` attempts of each distinct
    request (method, path, Range, body) fail by ``mode`` -- ``status`` (answer ``status``, e.g. 503), ``reset`` (close
    the connection with a TCP reset) or ``stall`` (answer nothing for ``stall_s`` seconds, then hang up) -- and
    requests whose path contains ``dead`` (when given) always answer ``status``."""

    faults: dict = {}
    _attempts: dict[tuple, int] = {}
    _lock = threading.Lock()

    def fault(self, body: bytes = b"") -> bool:
        """Apply this request's fault, if any; True when the request was answered (or dropped) by it."""
        faults = self.faults
        key = (self.command, self.path, self.headers.get("Range"), body)
        with self._lock:
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        dead = faults.get("dead")
        if dead and dead in self.path:
            self.answer_status()
        elif attempt > faults.get("first", 0):
            return False
        elif faults["mode"] == "status":
            self.answer_status()
        elif faults["mode"] == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        else:  # stall
            time.sleep(faults.get("stall_s", 5.0))
            self.close_connection = True
        return True

    def answer_status(self) -> None:
        body = b'{"code": "Unavailable", "description": "failing on purpose"}'
        self.send_response(HTTPStatus(self.faults.get("status", 503)))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FlakyRangeHandler(_Faulty, RangeRequestHandler):
    """:class:`RangeRequestHandler` with :class:`_Faulty`'s faults."""

    def do_HEAD(self) -> None:
        if not self.fault():
            super().do_HEAD()

    def do_GET(self) -> None:
        if not self.fault():
            super().do_GET()


class FlakyProxyHandler(_Faulty, BaseHTTPRequestHandler):
    """Forwards GET and POST to ``upstream`` (e.g. a STAC API), with :class:`_Faulty`'s faults."""

    upstream = ""

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.fault(body):
            return
        answer = requests.request(
            self.command,
            self.upstream + self.path,
            data=body or None,
            headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
            timeout=30,
        )
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_POST = do_GET


class _QuietServer(ThreadingHTTPServer):
    """A threading server that drops a client's broken connection without printing a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


def _handler(kind: str, arg: str, delay: float = 0.0):
    if kind == "files":
        return functools.partial(type("Handler", (RangeRequestHandler,), {"delay": delay}), directory=arg)
    if kind == "flaky-files":
        spec = json.loads(arg)
        handler = type("Handler", (FlakyRangeHandler,), {"delay": delay, "faults": spec})
        return functools.partial(handler, directory=spec["root"])
    if kind == "flaky-proxy":
        spec = json.loads(arg)
        return type("Handler", (FlakyProxyHandler,), {"faults": spec, "upstream": spec["upstream"]})
    return type("Handler", (_ErrorHandler,), {"status": HTTPStatus(int(arg))})


@contextmanager
def _serve(kind: str, arg: str, delay: float = 0.0) -> Iterator[str]:
    """Run a server in a child process and yield its URL.

    A child process, not a thread: GDAL holds the GIL while it fetches, so a server thread in the test
    process could never answer it.
    """
    proc = subprocess.Popen([sys.executable, __file__, kind, arg, str(delay)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@contextmanager
def range_file_server(root: str | Path, *, delay: float = 0.0) -> Iterator[str]:
    """Serve ``root`` over HTTP with Range support, ``delay`` seconds per request; yields the base URL."""
    with _serve("files", str(root), delay) as url:
        yield url


@contextmanager
def error_server(status: int = 500) -> Iterator[str]:
    """A server answering every request with ``status`` and a JSON body; yields its URL."""
    with _serve("status", str(status)) as url:
        yield url


@contextmanager
def flaky_file_server(root: str | Path, **faults) -> Iterator[str]:
    """Serve ``root`` with Range support and the faults of :class:`_Faulty` (e.g. ``mode="status", first=1``)."""
    with _serve("flaky-files", json.dumps({"root": str(root)} | faults)) as url:
        yield url


@contextmanager
def flaky_proxy(upstream: str, **faults) -> Iterator[str]:
    """A proxy to ``upstream`` with the faults of :class:`_Faulty`; yields its URL."""
    with _serve("flaky-proxy", json.dumps({"upstream": upstream} | faults)) as url:
        yield url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rustac_available() -> bool:
    """True when the ``rustac`` command (``pip install rustac``) is on PATH."""
    return shutil.which("rustac") is not None


@contextmanager
def rustac_api(
    items_path: str | Path, *, timeout_s: float = 30.0, port: int | None = None, public_url: str | None = None
) -> Iterator[str]:
    """Run ``rustac serve ITEMS --addr 127.0.0.1:PORT`` (in-memory STAC API); yields its URL once it answers.

    ``public_url``: the address its links name (a proxy in front of it), while it listens on ``port``.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    addr = ["--addr", public_url, "--bind", f"127.0.0.1:{port}"] if public_url else ["--addr", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        ["rustac", "serve", str(items_path), *addr],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rustac serve exited: {proc.stderr.read().decode(errors='replace')[-500:]}")
            try:
                if requests.get(f"{url}/collections", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"rustac serve did not answer on {url} within {timeout_s:.0f} s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":  # python servers.py files ROOT DELAY | status CODE DELAY: serve, print the port first
    server = _QuietServer(("127.0.0.1", 0), _handler(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    print(server.server_address[1], flush=True)
    server.serve_forever()
