"""Redis Streams sink against a real redis-server started by the test: XADD, MAXLEN, outage and replay."""

from __future__ import annotations

import json
import time

import pytest

from vap_video.pipeline.events import make_event
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.settings import parse_settings
from vap_video.pipeline.sinks import EventBus, SinkRunner, build_sink
from tests.real_servers import redis_server

redis = pytest.importorskip("redis")


def _cfg(port: int, tmp_path, **extra):
    return parse_settings({"sinks": [{"type": "redis", "url": f"redis://127.0.0.1:{port}/0", "timeout_s": 1,
                                      "spool": {"dir": str(tmp_path / "spool")}, **extra}]}).sinks[0]


def _ev(stream: str, i: int) -> dict:
    return make_event("stream.up", stream, time.time(), state="streaming", reason=str(i))


def _entries(client, key: str) -> list[dict]:
    return [json.loads(f[b"event"]) for _, f in client.xrange(key)]


def test_xadd_per_stream_key_with_fields_and_maxlen(tmp_path):
    srv = redis_server(tmp_path / "r").start()
    try:
        cfg = _cfg(srv.port, tmp_path, key="vap:{stream}:events", maxlen=50, approximate=False)
        sink = build_sink(cfg)
        ev = [_ev("a", i) for i in range(80)] + [_ev("b", 0)]
        sink.write(ev)
        c = redis.Redis(port=srv.port)
        got = _entries(c, "vap:a:events")
        assert [e["id"] for e in got] == [e["id"] for e in ev[30:80]]   # exact MAXLEN keeps the newest 50
        fields = c.xrange("vap:b:events")[0][1]
        assert fields[b"id"].decode() == ev[-1]["id"] and fields[b"type"] == b"stream.up"
        assert fields[b"stream"] == b"b"
        sink.close()
    finally:
        srv.stop()


def test_outage_spools_then_replays_in_order(tmp_path):
    srv = redis_server(tmp_path / "r").start()
    cfg = _cfg(srv.port, tmp_path)
    m = Metrics()
    runner = SinkRunner(build_sink(cfg), cfg.filter, m, retry_s=0.1, retry_max_s=0.5)
    bus = EventBus([runner])
    sent = []
    try:
        for i in range(10):
            sent.append(_ev("a", i))
            bus.publish(sent[-1:])
        srv.stop()
        for i in range(10, 30):
            sent.append(_ev("a", i))
            bus.publish(sent[-1:])
        deadline = time.time() + 10
        while (m.registry.get_sample_value("vap_spool_events", {"sink": "redis"}) or 0) == 0:
            assert time.time() < deadline, "nothing spooled during the outage"
            time.sleep(0.05)
        srv.start()        # no persistence: the first 10 are gone with the old server; the rest must arrive
        assert runner.close(15.0)
        got = _entries(redis.Redis(port=srv.port), "vap:events")
        ids = [e["id"] for e in got]
        assert len(set(ids)) == len(ids)
        # everything sent after the outage began is there, in order (a batch in flight at the stop may
        # have landed on the old server or be replayed; either way the tail is complete and ordered)
        assert ids == [e["id"] for e in sent[len(sent) - len(ids):]]
        assert len(ids) >= 20
        assert m.registry.get_sample_value("vap_sink_up", {"sink": "redis"}) == 1
    finally:
        runner.close(1.0)
        srv.stop()


def test_password_from_env(tmp_path, monkeypatch):
    srv = redis_server(tmp_path / "r")
    srv.argv += ["--requirepass", "pw-from-env"]
    srv.start()
    try:
        cfg = _cfg(srv.port, tmp_path)
        monkeypatch.delenv("VAP_REDIS_PASSWORD", raising=False)
        with pytest.raises(ConnectionError, match="(?i)auth"):
            build_sink(cfg).write([_ev("a", 0)])
        monkeypatch.setenv("VAP_REDIS_PASSWORD", "pw-from-env")
        sink = build_sink(cfg)
        sink.write([_ev("a", 1)])
        assert redis.Redis(port=srv.port, password="pw-from-env").xlen("vap:events") == 1
        sink.close()
    finally:
        srv.stop()


def test_a_wrong_type_key_drops_only_that_event_and_nothing_is_re_added(tmp_path):
    """Review finding 6: one WRONGTYPE reply failed the whole pipeline batch, re-added on every retry."""
    srv = redis_server(tmp_path / "r").start()
    try:
        c = redis.Redis(port=srv.port)
        c.set("vap:bad:events", "a string, not a stream")
        cfg = _cfg(srv.port, tmp_path, key="vap:{stream}:events")
        m = Metrics()
        runner = SinkRunner(build_sink(cfg), cfg.filter, m, retry_s=0.05, retry_max_s=0.1)
        ev = [_ev("a", 0), _ev("bad", 0), _ev("a", 1)]
        runner.offer(ev, 1.0)
        time.sleep(0.5)                          # time for several retries, had there been any
        assert runner.close(5.0)
        assert [e["id"] for e in _entries(c, "vap:a:events")] == [ev[0]["id"], ev[2]["id"]]
        assert m.registry.get_sample_value("vap_sink_dropped_total", {"sink": "redis"}) == 1
        assert m.registry.get_sample_value("vap_sink_events_total", {"sink": "redis"}) == 2
        assert m.registry.get_sample_value("vap_spool_events", {"sink": "redis"}) == 0
    finally:
        srv.stop()
