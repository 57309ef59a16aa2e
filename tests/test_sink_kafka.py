"""Kafka sink against librdkafka's built-in mock cluster (`test.mock.num.brokers`).

No real Kafka broker can be started here (no JVM/packages), so this runs the real confluent-kafka
producer against the mock brokers librdkafka embeds: real protocol, real delivery reports, real
partitioning by key. docs/deploy.md says so.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from pipeline.events import make_event
from pipeline.metrics import Metrics
from pipeline.settings import parse_settings
from pipeline.sinks import EventBus, SinkRunner, build_sink

ck = pytest.importorskip("confluent_kafka")


def _cfg(tmp_path, **extra):
    return parse_settings({"sinks": [{"type": "kafka", "spool": {"dir": str(tmp_path / "spool")},
                                      **extra}]}).sinks[0]


def _consume(bootstrap: str, topics: list[str], n: int, timeout: float = 20.0) -> list:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "test", "auto.offset.reset": "earliest"})
    c.subscribe(topics)
    out = []
    deadline = time.time() + timeout
    try:
        while len(out) < n and time.time() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        c.close()
    return out


def test_keyed_by_stream_topic_per_type_delivery_confirmed(tmp_path):
    cfg = _cfg(tmp_path, topic="vap.events", topics={"line.cross": "vap.crossings"},
               options={"test.mock.num.brokers": 3})
    sink = build_sink(cfg)
    assert sink.settings["enable.idempotence"] is True and sink.settings["acks"] == "all"
    broker = next(iter(sink.producer.list_topics(timeout=5).brokers.values()))
    bootstrap = f"{broker.host}:{broker.port}"
    m = Metrics()
    runner = SinkRunner(sink, cfg.filter, m)
    box = dict(class_id=0, score=0.9, box=[1.0, 2.0, 3.0, 4.0], **{"class": "car"})
    sent = []
    for i in range(20):
        for s in ("north", "south", "east"):
            sent.append(make_event("track.start", s, time.time(), track_id=f"{s}:{i + 1}", **box))
            if i % 5 == 0:
                sent.append(make_event("line.cross", s, time.time(), track_id=f"{s}:{i + 1}", line="gate",
                                       direction="in", **box))
    for i in range(0, len(sent), 7):
        EventBus([runner]).publish(sent[i:i + 7])
    assert runner.close(20.0)
    assert m.registry.get_sample_value("vap_sink_events_total", {"sink": "kafka"}) == len(sent)

    msgs = _consume(bootstrap, ["vap.events", "vap.crossings"], len(sent))
    assert len(msgs) == len(sent)
    by_id = {json.loads(x.value())["id"]: x for x in msgs}
    assert set(by_id) == {e["id"] for e in sent}
    for e in sent:
        x = by_id[e["id"]]
        assert x.key().decode() == e["stream"]
        assert x.topic() == ("vap.crossings" if e["type"] == "line.cross" else "vap.events")
        assert dict(x.headers())["vap-event-id"].decode() == e["id"]
    for s in ("north", "south", "east"):       # one key -> one partition -> stream order kept per topic
        for topic in ("vap.events", "vap.crossings"):
            mine = [x for x in msgs if x.key().decode() == s and x.topic() == topic]
            assert len({x.partition() for x in mine}) == 1
            got = [json.loads(x.value())["id"] for x in sorted(mine, key=lambda x: x.offset())]
            assert got == [e["id"] for e in sent if e["stream"] == s and by_id[e["id"]].topic() == topic]


def test_unreachable_cluster_fails_the_write_and_spools(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    cfg = _cfg(tmp_path, bootstrap_servers=f"127.0.0.1:{port}", delivery_timeout_s=1.0)
    sink = build_sink(cfg)
    ev = [make_event("stream.up", "cam", time.time(), state="streaming")]
    with pytest.raises((ConnectionError, TimeoutError)):
        sink.write(ev)
    m = Metrics()
    runner = SinkRunner(sink, cfg.filter, m, retry_s=5)
    runner.offer(ev, 1.0)
    deadline = time.time() + 10
    while (m.registry.get_sample_value("vap_spool_events", {"sink": "kafka"}) or 0) < 1:
        assert time.time() < deadline, "the failed batch was not spooled"
        time.sleep(0.05)
    runner.close(0.2)
    lines = [json.loads(x) for f in (tmp_path / "spool").glob("seg-*") for x in f.read_text().splitlines()]
    assert [x["e"]["id"] for x in lines] == [ev[0]["id"]]


def test_bad_librdkafka_option_is_a_config_error(tmp_path):
    from pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="bad Kafka settings"):
        build_sink(_cfg(tmp_path, options={"no.such.option": 1}))
