"""HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and the `/streams` control API (JSON).

The standard library's threading HTTP server is enough here: the control plane handles a few
requests a minute, and Prometheus scrapes every few seconds. It runs on its own daemon thread.

  GET    /streams          -> 200 [snapshot, ...]
  GET    /streams/NAME     -> 200 snapshot | 404
  POST   /streams          -> 201 snapshot | 400 (validation, names the key) | 409 (name taken)
  DELETE /streams/NAME     -> 200 {"removed": NAME} | 404
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from pipeline.config import ConfigError
from pipeline.settings import StreamSettings, format_validation_error

if TYPE_CHECKING:
    from pipeline.runtime import Pipeline

log = logging.getLogger("vap.api")
MAX_BODY = 64 * 1024


class ApiServer:
    """Serves one pipeline's endpoints on (host, port); port 0 picks a free one (see `.port`)."""

    def __init__(self, pipeline: "Pipeline", host: str, port: int) -> None:
        self.pipeline = pipeline
        handler = type("Handler", (_Handler,), {"pipeline": pipeline})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"server: cannot listen on {host}:{port} ({exc.strerror}); set server.port to a "
                              "free port (0 picks one)") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vap-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class JsonHandler(BaseHTTPRequestHandler):
    """Quiet access logs and one way to answer: JSON, or bytes with their content type."""

    server_version = "vap"

    def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging, quietly
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Handler(JsonHandler):
    pipeline: "Pipeline"

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        p = self.pipeline
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            self._send(200, generate_latest(p.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = p.error is None
            self._send(200 if ok else 503, {"status": "ok" if ok else f"data path failed: {p.error}"})
        elif path == "/readyz":
            self._send(200 if p.ready else 503, {"ready": p.ready, "streams": len(p.streams())})
        elif path == "/streams":
            self._send(200, p.streams())
        elif path.startswith("/streams/"):
            name = path[len("/streams/"):]
            found = [s for s in p.streams() if s["name"] == name]
            self._send(200, found[0]) if found else self._error(404, f"no stream named {name!r}")
        else:
            self._error(404, "unknown path; try /metrics, /healthz, /readyz, /streams")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/streams":
            return self._error(404, "POST only to /streams")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._error(400, "Content-Length is not a number")
        if length <= 0 or length > MAX_BODY:
            return self._error(400, f"send a JSON stream definition (1..{MAX_BODY} bytes)")
        try:
            body = json.loads(self.rfile.read(length))
        except json.JSONDecodeError as exc:
            return self._error(400, f"body is not valid JSON: {exc}")
        try:
            cfg = StreamSettings.model_validate(body)
        except ValidationError as exc:
            return self._error(400, format_validation_error(exc, "stream"))
        try:
            self.pipeline.add_stream(cfg)
        except ConfigError as exc:
            return self._error(400, str(exc))
        except ValueError as exc:
            return self._error(409, str(exc))
        found = [s for s in self.pipeline.streams() if s["name"] == cfg.name]
        self._send(201, found[0] if found else {"name": cfg.name})

    def do_DELETE(self) -> None:  # noqa: N802
        path = self.path.rstrip("/")
        if not path.startswith("/streams/"):
            return self._error(404, "DELETE only /streams/NAME")
        name = path[len("/streams/"):]
        try:
            self.pipeline.remove_stream(name)
        except KeyError:
            return self._error(404, f"no stream named {name!r}")
        self._send(200, {"removed": name})
