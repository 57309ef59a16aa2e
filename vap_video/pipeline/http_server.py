"""The standard library's threading HTTP server, bounded, and the JSON handler every endpoint uses.

Shared by the node's API (`vap_video.pipeline.api`) and the cluster's shard server: a cap on concurrent
connections (one more is answered 503 without a thread), quiet access logs with URLs redacted,
and every answer, the standard library's own refusals included, as JSON.
"""

from __future__ import annotations

import json
import logging
import queue
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vap_video.pipeline.config import redact_url

log = logging.getLogger("vap.api")

MAX_JSON_DEPTH = 32
# A refused connection is kept this long after its 503 so the client can read the answer (see _Lingerer).
LINGER_S = 2.0
# Refused connections lingering at once; past this they are closed at once (the client may see a reset).
MAX_LINGERING = 1024


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


class _Lingerer:
    """Closes refused connections gracefully, all of them on one thread.

    Closing a socket whose request has not been read makes the kernel answer with a reset, and the
    client then sees "connection reset" or "broken pipe" instead of the 503 it was sent. So after
    the 503 the write side is shut and the socket waits here, its input read and discarded, until
    the client closes or `LINGER_S` passes.
    """

    def __init__(self) -> None:
        self._incoming: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._count = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def close(self, sock: socket.socket) -> None:
        with self._lock:
            if self._count >= MAX_LINGERING:
                sock.close()
                return
            self._count += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vap-http-linger", daemon=True)
                self._thread.start()
        self._incoming.put(sock)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        deadlines: dict[socket.socket, float] = {}
        while True:
            try:
                while True:   # wait for work while idle, then take whatever else is queued
                    sock = self._incoming.get(block=not deadlines, timeout=LINGER_S)
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ)
                    deadlines[sock] = time.monotonic() + LINGER_S
            except queue.Empty:
                if not deadlines:
                    with self._lock:   # idle for LINGER_S: end the thread (close() starts a new one)
                        if self._count == 0:
                            self._thread = None
                            sel.close()
                            return
                    continue
            for key, _ in sel.select(timeout=0.1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    if sock.recv(65536):
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                deadlines[sock] = 0.0  # the client closed (or failed): done
            now = time.monotonic()
            for sock in [s for s, t in deadlines.items() if t <= now]:
                sel.unregister(sock)
                sock.close()
                del deadlines[sock]
                with self._lock:
                    self._count -= 1


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading server with a cap on concurrent connections.

    Past the cap a connection is answered 503 on the accepting thread (one short write with a
    1 s timeout) and handed to one lingering thread that closes it once the client has read the
    answer, so no client can make the server start unbounded threads.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.max_connections = max_connections
        self.active = 0
        self.rejected = 0
        self._count_lock = threading.Lock()
        self.closing = threading.Event()
        self._lingerer = _Lingerer()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            full = self.active >= self.max_connections
            if not full:
                self.active += 1
        if full:
            self.rejected += 1
            body = b'{"error": "too many connections; try again shortly"}'
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                                + b"\r\n\r\n" + body)
                request.shutdown(socket.SHUT_WR)
            except OSError:
                self.shutdown_request(request)
                return
            self._lingerer.close(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            with self._count_lock:
                self.active -= 1
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a handler (the client vanished): a debug line, no traceback."""
        log.debug("connection from %s failed", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.active -= 1


class DeadlineReader:
    """The request's input with two limits: `per_read` seconds of silence, `deadline` seconds in all.

    The socket's own timeout only bounds each read, so a client sending one byte just inside it
    would hold a connection (and its thread) for as long as it likes. This reader gives every read
    what is left of the whole request's time, and puts the socket's timeout back afterwards so the
    answer is written with the usual one. It stands in for the handler's `rfile` (`readline` and
    `read` are all the standard library's parser and the handlers use).
    """

    def __init__(self, sock: socket.socket, per_read: float | None, deadline: float | None) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._per_read = per_read
        self._until = None if deadline is None else time.monotonic() + deadline

    def _fill(self) -> bool:
        """One read into the buffer; False at end of input, TimeoutError past either limit."""
        timeout = self._per_read
        if self._until is not None:
            left = self._until - time.monotonic()
            if left <= 0:
                raise TimeoutError("request deadline passed")
            timeout = left if timeout is None else min(timeout, left)
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(65536)
        finally:
            self._sock.settimeout(self._per_read)
        self._buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def has_line(self, limit: int = 65537) -> bool:
        """Wait for a whole first line (or `limit` bytes); False when the client closed first."""
        while b"\n" not in self._buf and len(self._buf) < limit:
            if not self._fill():
                return bool(self._buf)
        return True

    def readline(self, limit: int = -1) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0 and (limit < 0 or i < limit):
                return self._take(i + 1)
            if 0 <= limit <= len(self._buf):
                return self._take(limit)
            if not self._fill():
                return self._take(len(self._buf))

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) < n) and self._fill():
            pass
        return self._take(len(self._buf) if n < 0 else n)

    def close(self) -> None:
        self._buf.clear()


class JsonHandler(BaseHTTPRequestHandler):
    """Quiet access logs and one way to answer: JSON, or bytes with their content type."""

    server_version = "vap"
    sys_version = ""
    request_timeout: float | None = None   # seconds for the whole request (DeadlineReader); None: per read only

    def late(self, what: str) -> str:
        """The 408 message: what did not arrive, and the limits it missed."""
        limits = f"{self.timeout or 0:g} s of silence"
        if self.request_timeout is not None:
            limits += f" or {self.request_timeout:g} s for the whole request"
        return f"{what} not received in time (limit: {limits})"

    def setup(self) -> None:
        super().setup()
        self.rfile = DeadlineReader(self.connection, self.timeout, self.request_timeout)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        """The standard library closes a connection whose request line never completes without a
        word; answer 408 instead, as for headers or a body that stop coming."""
        try:
            ready = self.rfile.has_line()  # type: ignore[attr-defined]
        except TimeoutError:
            self.command, self.requestline, self.request_version = None, "", "HTTP/1.0"  # type: ignore[assignment]
            self.send_error(408, self.late("request line"))
            return
        except OSError:
            self.close_connection = True
            return
        if not ready:
            self.close_connection = True
            return
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging, quietly
        log.debug("%s %s", self.address_string(), redact_url(format % args))

    def _send(self, status: int, body: Any, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self._responded = True

    def parse_request(self) -> bool:
        """The standard library drops a connection whose headers stop coming (a read timeout) without
        a word, which a client cannot tell from a crash; answer 408, as for a body that stops coming."""
        try:
            return super().parse_request()
        except TimeoutError:
            self.send_error(408, self.late("request headers"))
            return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, header too long) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":   # an unparsable request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        try:
            self._send(code, {"error": message or explain or self.responses.get(code, ("error",))[0]})
        except OSError:
            pass
