"""Webhook sink against a local HTTP server that fails, times out, rejects, and finally accepts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.events import make_event
from pipeline.metrics import Metrics
from pipeline.settings import parse_settings
from pipeline.sinks import EventBus, SinkRunner, build_sink

SECRET = "hook-secret"


class Receiver:
    """Answers requests from a script of behaviours ('500', '503', 'hang', '400', '200'); the last one repeats."""

    def __init__(self, script: list[str], hang_s: float = 1.5):
        self.script, self.hang_s = script, hang_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        recv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with recv.lock:
                    n = len(recv.requests)
                    recv.requests.append({"t": time.monotonic(), "body": body, "headers": dict(self.headers)})
                    action = recv.script[min(n, len(recv.script) - 1)]
                if action == "hang":
                    time.sleep(recv.hang_s)
                    action = "200"
                self.send_response(int(action))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _cfg(url: str, tmp_path, **extra):
    return parse_settings({"sinks": [{"type": "webhook", "url": url, "timeout_s": 0.5, "backoff_initial_s": 0.1,
                                      "backoff_max_s": 0.4, "dead_letter": str(tmp_path / "dead.jsonl"),
                                      "spool": {"dir": str(tmp_path / "spool")}, **extra}]}).sinks[0]


def _verify(req: dict) -> bool:
    """What a receiver does: recompute the HMAC over '<timestamp>.<body>' and compare in constant time."""
    ts = req["headers"]["X-Vap-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + req["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, req["headers"]["X-Vap-Signature"])


def _event(i: int) -> dict:
    return make_event("stream.down", "cam", time.time(), state="backoff", reason=f"try {i}")


def test_retries_with_backoff_through_errors_and_a_timeout_then_delivers_signed(tmp_path, monkeypatch):
    monkeypatch.setenv("VAP_WEBHOOK_SECRET", SECRET)
    rx = Receiver(["500", "503", "hang", "200"])
    m = Metrics()
    runner = SinkRunner(build_sink(_cfg(rx.url, tmp_path)), _cfg(rx.url, tmp_path).filter, m)
    try:
        ev = [_event(0), _event(1)]
        EventBus([runner]).publish(ev)
        assert runner.close(15.0)
        reqs = rx.requests
        assert len(reqs) == 5                           # 500, 503, timeout, then the two events
        assert all(_verify(r) for r in reqs)            # every attempt is signed
        tampered = dict(reqs[-1], body=reqs[-1]["body"] + b" ")
        assert not _verify(tampered)                    # and a changed body fails the check
        assert [json.loads(r["body"])["id"] for r in reqs] == [ev[0]["id"]] * 4 + [ev[1]["id"]]
        assert reqs[3]["headers"]["X-Vap-Event-Id"] == ev[0]["id"]
        gaps = [b["t"] - a["t"] for a, b in zip(reqs, reqs[1:4])]
        # exponential backoff 0.1 s, then 0.2 s; then the 0.5 s timeout and the capped 0.4 s wait (times are
        # taken at the server, a few ms after the client's clock starts: 20 ms of slack)
        assert gaps[0] >= 0.08 and gaps[1] >= 0.18
        assert gaps[2] >= 0.5 + 0.4 - 0.02
        assert not (tmp_path / "dead.jsonl").read_text()
        assert m.registry.get_sample_value("vap_sink_events_total", {"sink": "webhook"}) == 2
    finally:
        rx.close()


def test_never_succeeds_goes_to_dead_letter_and_rejections_skip_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("VAP_WEBHOOK_SECRET", SECRET)
    rx = Receiver(["503"])
    m = Metrics()
    cfg = _cfg(rx.url, tmp_path, max_attempts=3, batch=True)
    runner = SinkRunner(build_sink(cfg), cfg.filter, m)
    try:
        ev = [_event(i) for i in range(3)]
        EventBus([runner]).publish(ev)
        assert runner.close(10.0)
        assert len(rx.requests) == 3                    # max_attempts, one batch
        assert [e["id"] for e in json.loads(rx.requests[0]["body"])] == [e["id"] for e in ev]
        dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
        assert [d["event"]["id"] for d in dead] == [e["id"] for e in ev]
        assert all("503" in d["reason"] and d["sink"] == "webhook" for d in dead)
        assert m.registry.get_sample_value("vap_sink_dead_letter_total", {"sink": "webhook"}) == 3
    finally:
        rx.close()

    rx = Receiver(["400"])
    cfg = _cfg(rx.url, tmp_path, max_attempts=5)
    runner = SinkRunner(build_sink(cfg), cfg.filter, Metrics())
    try:
        runner.offer([_event(9)], 1.0)
        assert runner.close(5.0)
        assert len(rx.requests) == 1                    # a 400 is final: no retries
        assert "HTTP 400" in (tmp_path / "dead.jsonl").read_text().splitlines()[-1]
    finally:
        rx.close()


def test_without_dead_letter_the_batch_spools_and_is_replayed(tmp_path, monkeypatch):
    monkeypatch.delenv("VAP_WEBHOOK_SECRET", raising=False)
    rx = Receiver(["500"] * 4 + ["200"])
    cfg = _cfg(rx.url, tmp_path, max_attempts=2, dead_letter=None)
    m = Metrics()
    runner = SinkRunner(build_sink(cfg), cfg.filter, m, retry_s=0.1)
    try:
        ev = [_event(i) for i in range(2)]
        runner.offer(ev, 1.0)
        assert runner.close(10.0)
        ids = [json.loads(r["body"])["id"] for r in rx.requests]
        # attempts 1-2 fail (write raises, batch spooled), replay attempts 3-4 fail, replay 5 and 6 succeed
        assert ids == [ev[0]["id"]] * 5 + [ev[1]["id"]]
        assert m.registry.get_sample_value("vap_sink_errors_total", {"sink": "webhook"}) == 2
        assert "X-Vap-Signature" not in rx.requests[0]["headers"]   # no secret, no signature
        assert m.registry.get_sample_value("vap_spool_events", {"sink": "webhook"}) == 0
    finally:
        rx.close()


def test_bad_url_is_a_config_error(tmp_path):
    from pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="http:// or https://"):
        build_sink(_cfg("ftp://example.org/x", tmp_path))


def test_outage_dead_letters_one_event_and_spools_the_rest_of_the_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("VAP_WEBHOOK_SECRET", SECRET)
    rx = Receiver(["503", "503", "200"])
    cfg = _cfg(rx.url, tmp_path, max_attempts=2)
    m = Metrics()
    runner = SinkRunner(build_sink(cfg), cfg.filter, m, retry_s=0.1)
    try:
        ev = [_event(i) for i in range(3)]
        runner.offer(ev, 1.0)
        assert runner.close(10.0)
        ids = [json.loads(r["body"])["id"] for r in rx.requests]
        # e0 had its two attempts and went to the dead-letter file; e1, e2 were spooled (not retried
        # one by one on the spot) and delivered once, in order, by the replay
        assert ids == [ev[0]["id"], ev[0]["id"], ev[1]["id"], ev[2]["id"]]
        dead = [json.loads(line)["event"]["id"] for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
        assert dead == [ev[0]["id"]]
        assert m.registry.get_sample_value("vap_sink_dead_letter_total", {"sink": "webhook"}) == 1
        assert m.registry.get_sample_value("vap_sink_errors_total", {"sink": "webhook"}) == 1
        assert m.registry.get_sample_value("vap_spool_events", {"sink": "webhook"}) == 0
    finally:
        rx.close()
