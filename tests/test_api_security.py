"""The HTTP surface under hostile clients: token, bind refusal, Host/Origin checks, limits, malformed
bodies, API source restriction. Every probe of the console issue (and the cross-origin bullet of the
hardening issue) is one test here; all servers listen on 127.0.0.1 only, loops are bounded."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.api import ApiServer
from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.runtime import Pipeline
from vap_video.pipeline.settings import parse_settings
from tests.onnx_models import constant_detector
from tests.videos import write_video

TOKEN = "t0ken-for-tests-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])


def _pipeline(tmp_path: Path, model: Path, streams: list[dict] | None = None, **server) -> Pipeline:
    return Pipeline(parse_settings({
        "streams": streams or [], "model": {"path": str(model)},
        "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"}],
        "server": {"port": 0, **server}}))


class Served:
    def __init__(self, p: Pipeline, api: ApiServer) -> None:
        self.p, self.api = p, api

    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
        """One request on a fresh connection; returns (status, headers, body). Never hides a dropped
        connection: http.client raises if the server closes without answering."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=timeout)
        hdrs = dict(headers or {})
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()


@pytest.fixture()
def served(tmp_path, model, monkeypatch):
    made: list[tuple[Pipeline, ApiServer]] = []

    def make(token: str | None = None, streams: list[dict] | None = None, **server) -> Served:
        if token:
            monkeypatch.setenv("VAP_API_TOKEN", token)
        else:
            monkeypatch.delenv("VAP_API_TOKEN", raising=False)
        p = _pipeline(tmp_path, model, streams, **server)
        api = ApiServer(p)
        api.start()
        p.start()
        made.append((p, api))
        return Served(p, api)

    yield make
    for p, api in made:
        p.stop(timeout=5)
        api.close()


SYNTH = {"name": "s1", "url": "synthetic://?seed=1&fps=10&width=160&height=96&objects=2"}


def test_unauthenticated_mutation_and_console_refused_401(served):
    s = served(TOKEN, allowed_schemes=["synthetic"])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = s.request("POST", "/streams", SYNTH)
    assert status == 401 and "VAP_API_TOKEN" in json.loads(body)["error"] and "Bearer" in headers["WWW-Authenticate"]
    assert s.request("POST", "/streams", SYNTH, {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert s.p.streams() == []
    for path in ("/streams", "/streams/s1/frame.jpg", "/streams/s1/live.mjpg", "/events", "/info"):
        assert s.request("GET", path)[0] == 401, path
    assert s.request("DELETE", "/streams/s1")[0] == 401
    assert s.request("PUT", "/streams/s1/analytics", {"zones": []})[0] == 401
    # the console page itself: a login form, no data
    status, _, page = s.request("GET", "/")
    assert status == 200 and b'id="login"' in page and b"streams" not in page.lower().replace(b"vap", b"")
    # Prometheus and probes need no token
    for path in ("/metrics", "/healthz", "/readyz"):
        assert s.request("GET", path)[0] == 200, path
    # with the token: accepted
    assert s.request("POST", "/streams", SYNTH, bearer)[0] == 201
    # the console's login: wrong token 401, right token sets a cookie that opens the console and the API
    assert s.request("POST", "/login", {"token": "nope"})[0] == 401
    status, headers, _ = s.request("POST", "/login", {"token": TOKEN})
    assert status == 204 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    cookie = {"Cookie": headers["Set-Cookie"].split(";", 1)[0]}
    assert TOKEN not in cookie["Cookie"]
    status, _, page = s.request("GET", "/", headers=cookie)
    assert status == 200 and b'id="streams"' in page
    assert [x["name"] for x in json.loads(s.request("GET", "/streams", headers=cookie)[2])] == ["s1"]
    assert s.request("DELETE", "/streams/s1", headers=cookie)[0] == 200


def test_non_loopback_bind_without_token_refused(tmp_path, model, monkeypatch):
    monkeypatch.delenv("VAP_API_TOKEN", raising=False)
    p = _pipeline(tmp_path, model)
    try:
        with pytest.raises(ConfigError) as err:
            ApiServer(p, "0.0.0.0", 0)
        assert "VAP_API_TOKEN" in str(err.value) and "127.0.0.1" in str(err.value)
        monkeypatch.setenv("VAP_API_TOKEN", "short")
        with pytest.raises(ConfigError, match="at least 16"):
            ApiServer(p, "127.0.0.1", 0)
        monkeypatch.setenv("VAP_API_TOKEN", TOKEN)
        api = ApiServer(p, "0.0.0.0", 0)   # with a token it may
        api.close()
    finally:
        p.stop(timeout=5)
    # and as an operator meets it: `vap run` exits 2 with the message, no traceback
    cfg = tmp_path / "vap.yaml"
    cfg.write_text(f"model: {{path: '{model}'}}\nsinks: [{{path: '{tmp_path / 'e.jsonl'}'}}]\n"
                   "server: {host: 0.0.0.0, port: 0}\n")
    env = {k: v for k, v in os.environ.items() if k != "VAP_API_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", "run", str(cfg), "--quiet",
                           "--duration", "5"],
                          capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "export VAP_API_TOKEN=" in proc.stderr and "Traceback" not in proc.stderr


def test_cross_origin_and_dns_rebinding_refused(served):
    s = served(None, allowed_schemes=["synthetic"])
    port = s.api.port
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    # the probe of the hardening issue: a text/plain cross-origin POST used to answer 201
    status, _, body = s.request("POST", "/streams", json.dumps(SYNTH).encode(), evil)
    assert status == 403 and "evil.example" in json.loads(body)["error"]
    assert s.request("POST", "/streams", SYNTH, {"Origin": "https://evil.example"})[0] == 403
    assert s.request("POST", "/streams", SYNTH, {"Origin": "null"})[0] == 403
    assert s.request("POST", "/streams", SYNTH, {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert s.request("DELETE", "/streams/s1", headers={"Origin": "http://evil.example"})[0] == 403
    # same request as a form or text/plain from no origin: still not JSON, so 415
    status, _, body = s.request("POST", "/streams", json.dumps(SYNTH).encode(), {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in json.loads(body)["error"]
    assert s.p.streams() == []
    # a DNS-rebinding page reaches 127.0.0.1 under its own name: the Host header gives it away
    status, _, body = s.request("GET", "/streams", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "allowed_hosts" in json.loads(body)["error"]
    assert s.request("POST", "/streams", SYNTH, {"Host": f"rebind.evil.example:{port}"})[0] == 403
    # the console itself (same origin, loopback names) is served and may mutate
    same = {"Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}"}
    assert s.request("GET", "/streams", headers={"Host": f"localhost:{port}"})[0] == 200
    assert s.request("POST", "/streams", SYNTH, same)[0] == 201
    assert s.request("OPTIONS", "/streams", headers={"Origin": "https://evil.example"})[0] == 403


def test_malformed_bodies_get_4xx_with_reason_never_a_dropped_connection(served):
    s = served(None, allowed_schemes=["synthetic"], max_body_bytes=4096)
    js = {"Content-Type": "application/json"}
    cases = [
        (b"[" * 50000 + b"]" * 50000, 413, "limit"),     # over the body cap before any parsing
        (b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),   # RecursionError used to drop the connection
        (json.dumps({"name": "x", "url": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
                    ).encode(),
         400, "nested too deeply"),
        (b'{"name": "\xff\xfe"}', 400, "UTF-8"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"name": "x", "url": "synthetic://?seed=1", "fps": 3}', 400, "unknown key 'fps'"),
        (b'{"url": "synthetic://?seed=1"}', 400, "name"),
    ]
    for body, status, reason in cases:
        got, _, raw = s.request("POST", "/streams", body, js)
        assert got == status and reason in json.loads(raw)["error"], (body[:40], got, raw[:200])
    # the typo'd key lists the stream's keys, not the top-level settings keys
    raw = s.request("POST", "/streams", b'{"name": "x", "url": "synthetic://?seed=1", "fps": 3}', js)[2]
    assert "max_fps" in json.loads(raw)["error"] and "shutdown_timeout_s" not in json.loads(raw)["error"]
    # header-level problems
    assert s.request("POST", "/streams", b"{}", {**js, "Content-Length": "abc"})[0] == 400
    with socket.create_connection(("127.0.0.1", s.api.port), timeout=5) as c:
        c.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.0 411")
    with socket.create_connection(("127.0.0.1", s.api.port), timeout=5) as c:
        c.sendall(b"GARBAGE\r\n\r\n")
        answer = b""
        while chunk := c.recv(1000):   # the server closes after answering
            answer += chunk
        assert answer.startswith(b"HTTP/1.0 400") and b'"error"' in answer
    assert s.request("PUT", "/streams/nope/analytics", {"zones": []})[0] == 404
    assert s.request("GET", "/streams/nope/frame.jpg")[0] == 404
    assert s.p.error is None and s.request("GET", "/healthz")[0] == 200


def _handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_300_slow_clients_cannot_hold_threads(served):
    s = served(None, max_connections=32, read_timeout_s=1.0)
    socks = []
    try:
        for _ in range(300):   # half-sent POSTs: headers promise a body that never comes
            c = socket.create_connection(("127.0.0.1", s.api.port), timeout=5)
            c.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"na")
            socks.append(c)
        peak, deadline = 0, time.monotonic() + 20
        while _handler_threads() > 0 or peak == 0:   # held ones are cut by the read timeout, the rest 503
            peak = max(peak, _handler_threads())
            assert time.monotonic() < deadline, f"{_handler_threads()} handler threads still held"
            time.sleep(0.02)
        assert 0 < peak <= 32                 # the cap, not one thread per client
        assert s.api.httpd.rejected > 0
        answers = []
        for c in socks:                       # every client got an answer, none a silent reset
            c.settimeout(5)
            try:
                answers.append(c.recv(12))
            except OSError as exc:
                answers.append(repr(exc).encode())
        assert all(a.startswith((b"HTTP/1.0 408", b"HTTP/1.0 503")) for a in answers), \
            [a for a in answers if not a.startswith(b"HTTP/1.0")][:5]
        assert s.request("GET", "/healthz")[0] == 200
    finally:
        for c in socks:
            c.close()


def test_headers_that_stop_coming_get_408_not_a_silent_close(served):
    s = served(TOKEN, read_timeout_s=0.5)
    c = socket.create_connection(("127.0.0.1", s.api.port), timeout=5)
    try:   # what a client without the token can do: stop in the middle of the headers
        c.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        answer = b""
        while chunk := c.recv(1000):
            answer += chunk
    finally:
        c.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 408"), answer[:200]
    assert "headers not received in time (limit: 0.5 s of silence" in json.loads(body)["error"]
    assert s.request("GET", "/healthz")[0] == 200


def test_refused_connection_reads_its_503_even_mid_upload(served):
    """Past the connection cap the 503 must reach a client that is still sending: closing a socket
    with unread input makes the kernel reset it, and the client sees a broken pipe instead."""
    s = served(None, max_connections=2, read_timeout_s=5)
    holders = [socket.create_connection(("127.0.0.1", s.api.port), timeout=5) for _ in range(2)]
    try:
        for h in holders:  # requests stopped in their headers take both slots
            h.sendall(b"POST /streams HTTP/1.1\r\nHost: x\r\nContent-Ty")
        time.sleep(0.2)
        big = {"name": "x", "url": "synthetic://?fps=5", "pad": "p" * 1_000_000}
        for _ in range(3):
            status, headers, body = s.request("POST", "/streams", big, timeout=10)
            assert status == 503 and headers.get("Retry-After") == "1"
            assert "too many connections" in json.loads(body)["error"]
    finally:
        for h in holders:
            h.close()
    deadline = time.monotonic() + 10   # the lingering thread ends once it has nothing to close
    while any(t.name == "vap-http-linger" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(t.name == "vap-http-linger" for t in threading.enumerate())


def _answer(c: socket.socket) -> bytes:
    answer = b""
    while chunk := c.recv(1000):
        answer += chunk
    return answer


def test_trickled_body_is_cut_off_at_the_request_deadline(served):
    """One byte just inside the per-read timeout, forever: the whole-request deadline ends it."""
    s = served(TOKEN, read_timeout_s=0.5, request_timeout_s=1.5)
    c = socket.create_connection(("127.0.0.1", s.api.port), timeout=10)
    t0 = time.monotonic()
    try:
        c.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
        answer = b""
        for _ in range(100):                   # 200 bytes at 5 per second would take 40 s
            try:
                c.sendall(b"{")
            except OSError:
                break
            time.sleep(0.2)
            c.setblocking(False)
            try:
                answer += c.recv(1000)
            except BlockingIOError:
                pass
            finally:
                c.setblocking(True)
            if answer:
                break
        c.settimeout(5)
        try:
            answer += _answer(c)
        except OSError:
            pass
    finally:
        c.close()
    assert answer.startswith(b"HTTP/1.0 408"), answer[:200]
    assert "1.5 s for the whole request" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert time.monotonic() - t0 < 4


def test_request_line_that_stops_gets_408(served):
    s = served(None, read_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", s.api.port), timeout=5) as c:
        c.sendall(b"GET /hea")
        answer = _answer(c)
    assert answer.startswith(b"HTTP/1.0 408"), answer[:200]
    assert "request line not received in time" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert s.request("GET", "/healthz")[0] == 200


def test_1000_rapid_requests_bounded_threads_and_streams(served):
    s = served(None, allowed_schemes=["synthetic"], max_connections=16, max_streams=4)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _handler_threads())
            time.sleep(0.002)

    statuses: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(50):
            n = k * 50 + i
            spec = {"name": f"r{n % 7}", "url": f"synthetic://?seed={n}&fps=5&width=64&height=48&objects=1"}
            try:
                st = s.request("POST", "/streams", spec, timeout=20)[0]
            except OSError as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                statuses.append(st)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    clients = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(120)
    stop.set()
    assert time.monotonic() - t0 < 120
    assert not errors, errors[:5]                   # every request got an HTTP answer
    assert len(statuses) == 1000
    assert set(statuses) <= {201, 409, 429, 503}
    assert statuses.count(201) == 4 and len(s.p.streams()) == 4     # the stream cap held
    assert peak[0] <= 16
    assert s.request("GET", "/healthz")[0] == 200


def test_api_sources_restricted_and_no_file_existence_oracle(served, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    clip = write_video(media / "clip.mp4", frames=10)
    s = served(None, media_roots=[str(media)])
    answers = {}
    for url in ("/etc/shadow", "/etc/passwd", "/etc/no-such-file-here", "file:///etc/passwd",
                f"{media}/../m.onnx", "relative.mp4"):
        status, _, body = s.request("POST", "/streams", {"name": "x", "url": url})
        answers[url] = (status, json.loads(body)["error"])
    assert {a for a in answers.values()} == {answers["/etc/shadow"]}   # one answer, exists or not
    assert answers["/etc/shadow"][0] == 403 and "media_roots" in answers["/etc/shadow"][1]
    for url in ("synthetic://?seed=1", "ftp://10.0.0.1/x.mp4", "/dev/video0"):
        status, _, body = s.request("POST", "/streams", {"name": "x", "url": url})
        assert status == 403 and "allowed_schemes" in json.loads(body)["error"], url
    status, _, body = s.request("POST", "/streams", {"name": "clip", "url": str(clip)})
    assert status == 201, body
    # the default: no media roots, so no file at all
    assert ApiServer._allowed_hosts("127.0.0.1", []) >= {"localhost", "127.0.0.1"}
