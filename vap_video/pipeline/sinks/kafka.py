"""Kafka sink (confluent-kafka / librdkafka): key = stream name, idempotent producer, delivery reports.

Why: keying by stream puts all events of one camera in one partition, so Kafka keeps them in order
per stream; the idempotent producer (acks=all, enable.idempotence) stops librdkafka's own retries
from writing duplicates or reordering. A write returns only when every message has a successful
delivery report; otherwise it raises and the batch stays in the runner's spool (at least once: a
message that was in fact delivered may arrive again, consumers drop it by event `id`, also sent as
the `vap-event-id` header).

Errors: a fatal producer error (`err.fatal()`, e.g. the idempotent producer lost its sequence) makes
the producer unusable, so a new one is created and the batch is retried; a non-retriable error
for one message (e.g. larger than the broker accepts) cannot succeed by retrying: that event is
dropped and counted (`vap_sink_dropped_total`) instead of blocking every later event forever.
At shutdown `close()` purges librdkafka's queues, so a write waiting in `flush` returns at once
and its events stay in the spool for the next start.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from pydantic import Field

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.sinks.base import Sink, SinkConfigBase, SinkKind, encode, env_secret, optional_client

log = logging.getLogger("vap.sinks.kafka")


class KafkaSinkConfig(SinkConfigBase):
    """Produce events to Kafka; one topic for all, or a topic per event type."""

    type: Literal["kafka"] = Field("kafka", description="Sink kind")
    bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list")
    topic: str = Field("vap.events", description="Topic for event types not listed in `topics`")
    topics: dict[str, str] = Field(default_factory=dict,
                                   description="Topic per event type, e.g. {'line.cross': 'vap.crossings'}")
    delivery_timeout_s: float = Field(30.0, gt=0, description="A batch not confirmed within this is spooled")
    username_env: str | None = Field(None, description="Environment variable holding the SASL user name")
    password_env: str | None = Field(None, description="Environment variable holding the SASL password")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra librdkafka settings (security.protocol, sasl.mechanism, "
        "compression.type, ...)")


class KafkaSink(Sink):
    def __init__(self, cfg: KafkaSinkConfig) -> None:
        ck = optional_client("confluent_kafka", "kafka")
        self.cfg = cfg
        self.name = cfg.name
        conf: dict[str, Any] = {
            "bootstrap.servers": cfg.bootstrap_servers,
            "client.id": f"vap-{cfg.name}",
            "enable.idempotence": True,  # implies acks=all and in-order retries
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(cfg.delivery_timeout_s * 1000),
        }
        user, password = env_secret(cfg.username_env), env_secret(cfg.password_env)
        if user is not None:
            conf.update({"sasl.username": user, "sasl.password": password or ""})
        conf.update(cfg.options)
        self._ck = ck
        self._conf = conf
        self._closing = threading.Event()
        self.settings = {k: v for k, v in conf.items() if "password" not in k}  # for logs and tests
        try:
            self.producer = ck.Producer(conf, logger=log)
        except ck.KafkaException as exc:
            raise ConfigError(f"sinks: {cfg.name}: bad Kafka settings ({exc.args[0]}); check `options`") from None

    def _renew_producer(self, reason: str) -> None:
        """Replace a producer that hit a fatal error (it refuses every later message)."""
        log.error("kafka %s: fatal producer error (%s); creating a new producer", self.name, reason)
        try:
            self.producer.purge()
        except Exception:  # a fatal producer may refuse even this; it is dropped anyway
            pass
        self.producer = self._ck.Producer(self._conf, logger=log)

    def write(self, events: list[dict[str, Any]]) -> None:
        failures: list[str] = []
        fatal: list[str] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err.str()}")
                if err.fatal():
                    fatal.append(err.str())

        for e in events:
            topic = self.cfg.topics.get(e["type"], self.cfg.topic)
            while True:
                if self._closing.is_set():
                    raise ConnectionError(f"Kafka sink {self.name} is closing")
                try:
                    self.producer.produce(topic, value=encode(e), key=e["stream"].encode(), on_delivery=report,
                                          headers=[("vap-event-id", e["id"].encode())])
                    break
                except BufferError:  # local queue full: let deliveries complete, then go on
                    self.producer.poll(0.1)
                except self._ck.KafkaException as exc:
                    err = exc.args[0]
                    if err.fatal():
                        self._renew_producer(err.str())
                        raise ConnectionError(f"Kafka producer failed fatally ({err.str()}); "
                                              "retrying with a new producer") from None
                    if err.retriable():
                        raise ConnectionError(f"Kafka refused an event for now ({err.str()})") from None
                    if self.metrics is not None:
                        self.metrics.sink_dropped.labels(self.name).inc()
                    log.error("kafka %s: event %s dropped, Kafka rejects it for good (%s)", self.name, e["id"],
                              err.str())
                    break
        left = self.producer.flush(self.cfg.delivery_timeout_s)
        if fatal:
            self._renew_producer(fatal[0])
        if failures:
            raise ConnectionError(f"Kafka delivery failed for {len(failures)} events, e.g. {failures[0]}")
        if left:
            raise TimeoutError(f"Kafka did not confirm {left} events within {self.cfg.delivery_timeout_s:.0f}s")

    def close(self) -> None:
        """Stop now: purge what librdkafka still holds, so a write blocked in `flush` returns and its
        batch stays in the spool (the runner calls this after its deadline)."""
        self._closing.set()
        try:
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
        except Exception as exc:  # purge of a fatally failed producer: nothing more to save here
            log.warning("kafka %s: purge at close failed (%s)", self.name, exc)
        left = self.producer.flush(1.0)
        if left:
            log.error("kafka %s: %d events unconfirmed at close (they stay in the spool if one is set)",
                      self.name, left)


KIND = SinkKind(KafkaSinkConfig, KafkaSink)
