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

from vap_video.pipeline.events import make_event
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.settings import parse_settings
from vap_video.pipeline.sinks import EventBus, SinkRunner, build_sink

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
    from vap_video.pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="bad Kafka settings"):
        build_sink(_cfg(tmp_path, options={"no.such.option": 1}))


def test_close_interrupts_a_write_waiting_for_a_silent_broker_and_everything_stays_spooled(tmp_path):
    """Review finding 3: close() used to flush(5 s) behind a write blocked in flush(delivery_timeout_s)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(100)                        # accepts TCP, never answers
    try:
        cfg = _cfg(tmp_path, bootstrap_servers=f"127.0.0.1:{hole.getsockname()[1]}", delivery_timeout_s=30.0)
        runner = SinkRunner(build_sink(cfg), cfg.filter, Metrics())
        ev = [make_event("stream.up", "cam", time.time(), state="streaming", reason=str(i)) for i in range(20)]
        bus = EventBus([runner])
        for i in range(0, 20, 5):
            bus.publish(ev[i:i + 5])
        time.sleep(0.3)                     # the sink thread is now inside flush()
        t0 = time.monotonic()
        assert bus.close(0.5) is True       # undelivered but safe on disk
        assert time.monotonic() - t0 < 3.0
    finally:
        hole.close()
    lines = [json.loads(x) for f in sorted((tmp_path / "spool").glob("seg-*")) for x in f.read_text().splitlines()]
    assert [x["e"]["id"] for x in lines] == [e["id"] for e in ev]


class _FakeProducer:
    """Stands in for a producer whose produce() raises a given KafkaError for chosen events."""

    def __init__(self, errors: dict[str, object]):
        self.errors, self.sent = errors, []

    def produce(self, topic, value, key, on_delivery, headers):
        eid = json.loads(value)["id"]
        if eid in self.errors:
            raise ck.KafkaException(self.errors[eid])
        self.sent.append(eid)
        on_delivery(None, None)

    def flush(self, timeout=None):
        return 0

    def poll(self, timeout=None):
        return 0

    def purge(self, *a, **k):
        pass


def test_a_fatal_producer_error_makes_a_new_producer_and_a_permanent_one_drops_only_that_event(tmp_path):
    """Review finding 6: a KafkaException from produce() escaped and was retried forever."""
    sink = build_sink(_cfg(tmp_path, options={"test.mock.num.brokers": 1}))
    m = Metrics()
    sink.metrics = m
    ev = [make_event("stream.up", "cam", time.time(), state="streaming", reason=str(i)) for i in range(3)]
    fake = _FakeProducer({ev[0]["id"]: ck.KafkaError(ck.KafkaError._FATAL, "idempotence lost", fatal=True)})
    sink.producer = fake
    with pytest.raises(ConnectionError, match="new producer"):
        sink.write(ev)
    assert sink.producer is not fake and isinstance(sink.producer, ck.Producer)

    fake = _FakeProducer({ev[1]["id"]: ck.KafkaError(ck.KafkaError.MSG_SIZE_TOO_LARGE, "too large")})
    sink.producer = fake
    sink.write(ev)                           # the rejected event is dropped and counted, the rest go on
    assert fake.sent == [ev[0]["id"], ev[2]["id"]]
    assert m.registry.get_sample_value("vap_sink_dropped_total", {"sink": "kafka"}) == 1
    fake = _FakeProducer({ev[2]["id"]: ck.KafkaError(ck.KafkaError._TRANSPORT, "down", retriable=True)})
    sink.producer = fake
    with pytest.raises(ConnectionError):     # retriable: the batch stays spooled and is retried
        sink.write(ev)
