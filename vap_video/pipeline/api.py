"""HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, the `/streams` control API and the web console.

The standard library's threading HTTP server, bounded: the control plane handles a few requests
a minute, Prometheus scrapes every few seconds, and a handful of console viewers hold one
connection each. What makes it safe to expose (see docs/console.md):

- a connection cap (`server.max_connections`; one more gets 503 at once, without a thread), a
  read timeout per connection, a body cap, a JSON depth limit, a stream cap and a viewer cap;
- an API token from an environment variable (`server.token_env`), required for everything but
  /metrics, /healthz, /readyz once set, and required to bind anything but a loopback address;
- `Host` checked against the bound names (DNS rebinding), cross-origin mutations refused and a
  JSON content type required for bodies (no "simple" cross-site form or text/plain POST gets in);
- sources added over the API limited to `server.allowed_schemes`, files to `server.media_roots`,
  with one message whether or not a path outside them exists;
- every bad request answered 4xx with a JSON `{"error": reason}`, every handler failure 500,
  never a dropped connection or a traceback on the wire.

  GET    /                        console (login page while the token is missing)
  GET    /streams                 200 [snapshot, ...]
  GET    /streams/NAME            200 snapshot | 404
  GET    /streams/NAME/frame.jpg  latest annotated frame (JPEG) | 404 before the first frame
  GET    /streams/NAME/live.mjpg  live annotated view (multipart JPEG), encoded only while watched
  GET    /streams/NAME/analytics  {"analytics": {...}, "yaml": "...", "frame_size": [w, h]}
  PUT    /streams/NAME/analytics  replace zones/lines at runtime -> 200 as GET | 400 | 404
  GET    /events                  server-sent events (recent backlog first); ?stream=&type= filter
  GET    /snapshots/PATH          a snapshot JPEG written by `snapshots:`
  POST   /streams                 201 snapshot | 400 (names the key) | 403 (source refused) | 409 | 429
  DELETE /streams/NAME            200 {"removed": NAME} | 404
  POST   /login  {"token": "..."} 204 + session cookie (for the console's images and event feed)

Why the routes stay in one handler (~500 lines): `_dispatch` runs the Host, Origin and token
checks before any route, in one place; the rules themselves live in `vap_video.pipeline.api_guard` and the
server in `vap_video.pipeline.http_server`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from vap_video.pipeline.analytics import AnalyticsConfig
from vap_video.pipeline.api_guard import (LOOPBACK_NAMES, SESSION_COOKIE, WILDCARD, ApiError, check_api_source,
                                host_name, is_loopback, read_token, session_value)
from vap_video.pipeline.config import ConfigError, redact_url
from vap_video.pipeline.console import ConsoleFeed
from vap_video.pipeline.http_server import MAX_JSON_DEPTH, BoundedHTTPServer, JsonHandler, json_depth
from vap_video.pipeline.settings import ServerConfig, StreamSettings, format_validation_error

if TYPE_CHECKING:
    from vap_video.pipeline.runtime import Pipeline

log = logging.getLogger("vap.api")
_PUBLIC = {"/metrics", "/healthz", "/readyz"}
_ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
           "console.html": "text/html; charset=utf-8", "login.html": "text/html; charset=utf-8"}


def analytics_yaml(stream: str, analytics: AnalyticsConfig) -> str:
    """The YAML to paste under the stream in the deployment file (defaults left out)."""
    data = analytics.model_dump(mode="json", exclude_defaults=True)
    for key in ("zones", "lines"):
        data.setdefault(key, [])
    return yaml.safe_dump({"analytics": data}, sort_keys=False, default_flow_style=None)


class ApiServer:
    """Serves one pipeline's endpoints on (host, port); port 0 picks a free one (see `.port`).

    Settings come from `vap_video.pipeline.settings.server`; `host` and `port` override them. Raises
    ConfigError when asked to listen beyond loopback without a token, or when the port is busy.
    """

    def __init__(self, pipeline: Pipeline, host: str | None = None, port: int | None = None,
                 config: ServerConfig | None = None) -> None:
        self.pipeline = pipeline
        self.config = cfg = config or pipeline.settings.server
        host = cfg.host if host is None else host
        port = cfg.port if port is None else port
        self.token = read_token(cfg)
        if self.token is None and not is_loopback(host):
            raise ConfigError(
                f"server: refusing to listen on {host}, which other machines can reach, without an API token: "
                f"export {cfg.token_env}=$(openssl rand -hex 32) (server.token_env names the variable) and send it "
                "as 'Authorization: Bearer ...', or set server.host: 127.0.0.1")
        self.feed = ConsoleFeed(pipeline)
        self.feed.install()
        handler = type("Handler", (_Handler,), {"pipeline": pipeline, "api": self, "timeout": cfg.read_timeout_s,
                                               "request_timeout": cfg.request_timeout_s})
        try:
            self.httpd = BoundedHTTPServer((host, port), handler, cfg.max_connections)
        except OSError as exc:
            raise ConfigError(f"server: cannot listen on {host}:{port} ({exc.strerror}); set server.port to a "
                              "free port (0 picks one)") from None
        self.port = self.httpd.server_address[1]
        self.host = host
        self.allowed_hosts = self._allowed_hosts(host, cfg.allowed_hosts)
        self.add_lock = threading.Lock()
        self.viewers = threading.BoundedSemaphore(cfg.max_viewers)
        self.feeds = threading.BoundedSemaphore(cfg.max_viewers)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vap-api", daemon=True)

    @staticmethod
    def _allowed_hosts(host: str, extra: list[str]) -> set[str] | None:
        """Names a client may put in `Host`; None = any (a wildcard bind without allowed_hosts)."""
        names = {h.lower().strip("[]") for h in extra}
        if host in WILDCARD:
            return (names | {n.strip("[]") for n in LOOPBACK_NAMES}) if names else None
        names.add(host.lower().strip("[]"))
        if is_loopback(host):
            names |= {n.strip("[]") for n in LOOPBACK_NAMES}
        return names

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.closing.set()   # ends live views and event feeds
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which never ran otherwise
            self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class _Handler(JsonHandler):
    pipeline: Pipeline
    api: ApiServer
    _responded = False

    # ------------------------------------------------------------------ plumbing
    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message}, headers=headers)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._error(405, "HEAD is not supported; use GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _dispatch(self, method: str) -> None:
        self._responded = False
        self.close_connection = True
        try:
            self._route(method)
        except ApiError as exc:
            if not self._responded:
                try:
                    self._error(exc.status, exc.message, exc.headers)
                except OSError:
                    pass                           # the client left before the answer
        except (BrokenPipeError, ConnectionResetError):
            pass                                   # the client went away
        except TimeoutError:
            if not self._responded:
                try:
                    self._error(408, self.late("request body"))
                except OSError:
                    pass
        except Exception as exc:                   # a handler bug must not drop the connection
            log.warning("HTTP %s %s failed: %s: %s", method, redact_url(self.path), type(exc).__name__, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            if not self._responded:
                try:
                    self._error(500, f"internal error ({type(exc).__name__}); see the vap log")
                except OSError:
                    pass

    # ------------------------------------------------------------------ guards
    def _check_host(self) -> None:
        allowed = self.api.allowed_hosts
        host = self.headers.get("Host")
        if allowed is None or host is None:
            return
        if host_name(host) not in allowed:
            raise ApiError(403, f"Host {host!r} is not a name of this server; add it to server.allowed_hosts "
                                "if clients really use it (the check stops DNS-rebinding pages)")

    def _check_origin(self, method: str) -> None:
        """A browser sends Origin with every cross-origin request and every POST/PUT/DELETE: a
        mismatch means some other page is asking, which may never change anything here."""
        origin = self.headers.get("Origin")
        if origin is None:
            fetch_site = (self.headers.get("Sec-Fetch-Site") or "").lower()
            if fetch_site in ("cross-site", "same-site"):
                raise ApiError(403, f"cross-origin {method} refused (Sec-Fetch-Site: {fetch_site})")
            return
        host = (self.headers.get("Host") or "").lower()
        parts = urlsplit(origin.lower())
        if origin == "null" or parts.netloc != host or parts.scheme not in ("http", "https"):
            raise ApiError(403, f"cross-origin {method} from {origin!r} refused; use the console served by this "
                                "vap, or a client that sends no Origin (curl, scripts)")

    def _authorised(self) -> bool:
        token = self.api.token
        if token is None:
            return True
        auth = self.headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie") or "")
        except Exception:
            return False
        morsel = cookie.get(SESSION_COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), session_value(token).encode())

    def _require_auth(self) -> None:
        if not self._authorised():
            env = self.api.config.token_env
            raise ApiError(401, f"missing or wrong API token: send 'Authorization: Bearer <the value of ${env}>' "
                                "or log in to the console", {"WWW-Authenticate": 'Bearer realm="vap"'})

    def _body(self) -> Any:
        """The request's JSON body, every way it can be wrong answered 4xx."""
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "send a Content-Length (chunked bodies are not accepted)")
        cap = self.api.config.max_body_bytes
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "send the body as JSON with 'Content-Type: application/json' "
                                f"(got {ctype or 'none'!r})")
        if length > cap:
            raise ApiError(413, f"body of {length} bytes is over the limit of {cap} (server.max_body_bytes)")
        if length <= 0:
            raise ApiError(400, f"send a JSON body (1..{cap} bytes)")
        raw = b""
        while len(raw) < length:     # each read bounded by the socket timeout
            chunk = self.rfile.read(length - len(raw))
            if not chunk:
                raise ApiError(400, f"body ended after {len(raw)} of {length} bytes")
            raw += chunk
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, f"body is nested too deeply (limit {MAX_JSON_DEPTH})") from None
        if json_depth(value) > MAX_JSON_DEPTH:
            raise ApiError(400, f"body is nested too deeply (limit {MAX_JSON_DEPTH})")
        return value

    # ------------------------------------------------------------------ routes
    def _route(self, method: str) -> None:
        self._check_host()
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query)
        if method in ("POST", "PUT", "DELETE", "PATCH"):
            self._check_origin(method)
        if method == "OPTIONS":
            raise ApiError(403, "cross-origin requests are not served; use the console at /")
        public = (path in _PUBLIC and self.api.config.public_metrics) or path.startswith("/console/") \
            or path == "/login" or (path in ("/", "/index.html") and method == "GET")
        if not public:
            self._require_auth()
        if method == "GET":
            return self._get(path, query)
        if method == "POST" and path == "/streams":
            return self._add_stream()
        if method == "POST" and path == "/login":
            return self._login()
        if method == "POST" and path == "/logout":
            return self._send(204, b"", headers={"Set-Cookie": f"{SESSION_COOKIE}=; Max-Age=0; Path=/; "
                                                               "HttpOnly; SameSite=Strict"})
        name, sub = self._stream_path(path)
        if method == "DELETE" and name is not None and sub is None:
            return self._remove_stream(name)
        if method == "PUT" and name is not None and sub == "analytics":
            return self._put_analytics(name)
        raise ApiError(405 if name is not None or path == "/streams" else 404,
                       f"{method} {path} is not an endpoint; see GET / for the console, /streams for the API")

    @staticmethod
    def _stream_path(path: str) -> tuple[str | None, str | None]:
        if not path.startswith("/streams/"):
            return None, None
        rest = unquote(path[len("/streams/"):])
        name, _, sub = rest.partition("/")
        return (name or None), (sub or None)

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        p = self.pipeline
        if path == "/metrics":
            return self._send(200, generate_latest(p.metrics.registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            ok = p.error is None
            return self._send(200 if ok else 503, {"status": "ok" if ok else f"data path failed: {p.error}"})
        if path == "/readyz":
            return self._send(200 if p.ready else 503, {"ready": p.ready, "streams": len(p.streams())})
        if path in ("/", "/index.html"):
            page = "console.html" if self._authorised() else "login.html"
            return self._asset(page)
        if path.startswith("/console/"):
            return self._asset(path[len("/console/"):])
        if path == "/streams":
            return self._send(200, p.streams())
        if path == "/info":
            return self._send(200, {"classes": p.names, "grafana_url": self.api.config.grafana_url,
                                    "live_fps": self.api.config.live_fps,
                                    "snapshots": p.snapshots is not None})
        if path == "/events":
            return self._events(query)
        if path.startswith("/snapshots/"):
            return self._snapshot(unquote(path[len("/snapshots/"):]))
        name, sub = self._stream_path(path)
        if name is None:
            raise ApiError(404, "unknown path; try /, /metrics, /healthz, /readyz, /streams, /events")
        found = [s for s in p.streams() if s["name"] == name]
        if not found:
            raise ApiError(404, f"no stream named {name!r}")
        if sub is None:
            return self._send(200, found[0])
        if sub == "frame.jpg":
            return self._frame(name, query)
        if sub == "live.mjpg":
            return self._live(name, query)
        if sub == "analytics":
            return self._send(200, self._analytics_view(name))
        raise ApiError(404, f"unknown path; per stream: /streams/{name}/frame.jpg, live.mjpg, analytics")

    def _asset(self, name: str) -> None:
        if name not in _ASSETS:
            raise ApiError(404, f"no console file {name!r}")
        data = resources.files("vap_video.pipeline").joinpath("static", name).read_bytes()
        self._send(200, data, _ASSETS[name], headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})

    @staticmethod
    def _width(query: dict[str, list[str]]) -> int | None:
        try:
            w = int(query.get("w", ["0"])[0])
        except ValueError:
            raise ApiError(400, "w must be a whole number of pixels") from None
        return max(64, min(w, 4096)) if w > 0 else None

    def _frame(self, name: str, query: dict[str, list[str]]) -> None:
        got = self.api.feed.jpeg(name, self._width(query))
        if got is None:
            raise ApiError(404, f"stream {name!r} has no processed frame yet")
        self._send(200, got[0], "image/jpeg", headers={"X-Frame-Seq": str(got[1])})

    def _live(self, name: str, query: dict[str, list[str]]) -> None:
        """multipart/x-mixed-replace JPEGs at most `server.live_fps`, for as long as the viewer reads."""
        if not self.api.viewers.acquire(blocking=False):
            raise ApiError(503, f"{self.api.config.max_viewers} live views are open already (server.max_viewers)")
        try:
            width = self._width(query)
            period = 1.0 / self.api.config.live_fps
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=vapframe")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._responded = True
            seq, next_t = 0, 0.0
            closing = self.server.closing  # type: ignore[attr-defined]  # BoundedHTTPServer's, not BaseServer's
            while not closing.is_set() and self.pipeline.stream_config(name) is not None:
                delay = next_t - time.monotonic()
                if delay > 0 and closing.wait(delay):
                    break
                new = self.api.feed.wait_frame(name, seq, timeout=2.0)
                if new is None:
                    continue
                got = self.api.feed.jpeg(name, width)
                if got is None:
                    continue
                data, seq = got
                next_t = time.monotonic() + period
                self.wfile.write(b"--vapframe\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                self.wfile.flush()
        finally:
            self.api.viewers.release()

    def _events(self, query: dict[str, list[str]]) -> None:
        """Server-sent events: the recent backlog, then live events, filtered by ?stream= and ?type=."""
        if not self.api.feeds.acquire(blocking=False):
            raise ApiError(503, f"{self.api.config.max_viewers} event feeds are open already (server.max_viewers)")
        try:
            streams = {s for v in query.get("stream", []) for s in v.split(",") if s}
            types = {t for v in query.get("type", []) for t in v.split(",") if t}
            try:
                after = int(self.headers.get("Last-Event-ID") or query.get("after", ["0"])[0])
            except ValueError:
                after = 0
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._responded = True
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            closing = self.server.closing  # type: ignore[attr-defined]  # BoundedHTTPServer's, not BaseServer's
            batch = self.api.feed.events_after(after)
            while not closing.is_set():
                out = []
                for seq, e in batch:
                    after = seq
                    if (streams and e.get("stream") not in streams) or (types and e.get("type") not in types):
                        continue
                    out.append(f"id: {seq}\ndata: {json.dumps(e)}\n\n")
                if out or not batch:   # a comment line when idle keeps proxies from closing the feed
                    self.wfile.write(("".join(out) or ": keep-alive\n\n").encode())
                    self.wfile.flush()
                batch = self.api.feed.wait_events(after, timeout=1.0 if out else 10.0)
        finally:
            self.api.feeds.release()

    def _snapshot(self, rel: str) -> None:
        snaps = self.pipeline.snapshots
        if snaps is None:
            raise ApiError(404, "snapshots are off (enable snapshots: in the config)")
        root = os.path.realpath(snaps.root)
        full = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, full]) != root or not full.endswith(".jpg") or not os.path.isfile(full):
            raise ApiError(404, "no such snapshot")
        self._send(200, Path(full).read_bytes(), "image/jpeg")

    def _analytics_view(self, name: str) -> dict[str, Any]:
        cfg = self.pipeline.stream_config(name)
        if cfg is None:
            raise ApiError(404, f"no stream named {name!r}")
        analytics = self.pipeline.settings.stream_analytics(cfg)
        return {"stream": name, "analytics": analytics.model_dump(mode="json"),
                "yaml": analytics_yaml(name, analytics), "frame_size": self.api.feed.frame_size(name),
                "own": cfg.analytics is not None}

    def _put_analytics(self, name: str) -> None:
        body = self._body()
        try:
            analytics = AnalyticsConfig.model_validate(body)
        except ValidationError as exc:
            raise ApiError(400, format_validation_error(exc, f"streams.{name}.analytics", AnalyticsConfig)) from None
        try:
            self.pipeline.update_analytics(name, analytics)
        except KeyError:
            raise ApiError(404, f"no stream named {name!r}") from None
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        self._send(200, self._analytics_view(name))

    def _add_stream(self) -> None:
        body = self._body()
        if not isinstance(body, dict):
            raise ApiError(400, "send one stream as a JSON object: {\"name\": ..., \"url\": ...}")
        check_api_source(body.get("url"), self.api.config)
        try:
            cfg = StreamSettings.model_validate(body)
        except ValidationError as exc:
            raise ApiError(400, format_validation_error(exc, "stream", StreamSettings)) from None
        cap = self.api.config.max_streams
        with self.api.add_lock:   # count and add as one step, or concurrent POSTs overshoot the cap
            if len(self.pipeline.streams()) >= cap:
                raise ApiError(429, f"already {cap} streams (server.max_streams); remove one first")
            try:
                self.pipeline.add_stream(cfg)
            except ConfigError as exc:
                raise ApiError(400, str(exc)) from None
            except ValueError as exc:
                raise ApiError(409, str(exc)) from None
        found = [s for s in self.pipeline.streams() if s["name"] == cfg.name]
        self._send(201, found[0] if found else {"name": cfg.name})

    def _remove_stream(self, name: str) -> None:
        try:
            self.pipeline.remove_stream(name)
        except KeyError:
            raise ApiError(404, f"no stream named {name!r}") from None
        self.api.feed.forget(name)
        self._send(200, {"removed": name})

    def _login(self) -> None:
        body = self._body()
        token = self.api.token
        if token is None:
            return self._send(204, b"")
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, f"wrong token; it is the value of ${self.api.config.token_env} on the vap host")
        self._send(204, b"", headers={"Set-Cookie": f"{SESSION_COOKIE}={session_value(token)}; Path=/; HttpOnly; "
                                                    "SameSite=Strict"})
