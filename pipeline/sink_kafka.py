"""Kafka sink (confluent-kafka / librdkafka): key = stream name, idempotent producer, delivery reports.

Why: keying by stream puts all events of one camera in one partition, so Kafka keeps them in order
per stream; the idempotent producer (acks=all, enable.idempotence) stops librdkafka's own retries
from writing duplicates or reordering. A write returns only when every message has a successful
delivery report; otherwise it raises and the runner spools the batch (at least once: a message that
was in fact delivered may arrive again, consumers drop it by event `id`, also sent as the
`vap-event-id` header).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from pipeline.config import ConfigError
from pipeline.sink_base import Sink, SinkConfigBase, encode, env_secret, optional_client

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
        self.settings = {k: v for k, v in conf.items() if "password" not in k}  # for logs and tests
        try:
            self.producer = ck.Producer(conf, logger=log)
        except ck.KafkaException as exc:
            raise ConfigError(f"sinks: {cfg.name}: bad Kafka settings ({exc.args[0]}); check `options`") from None

    def write(self, events: list[dict[str, Any]]) -> None:
        failures: list[str] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err.str()}")

        for e in events:
            topic = self.cfg.topics.get(e["type"], self.cfg.topic)
            while True:
                try:
                    self.producer.produce(topic, value=encode(e), key=e["stream"].encode(), on_delivery=report,
                                          headers=[("vap-event-id", e["id"].encode())])
                    break
                except BufferError:  # local queue full: let deliveries complete, then go on
                    self.producer.poll(0.1)
        left = self.producer.flush(self.cfg.delivery_timeout_s)
        if failures:
            raise ConnectionError(f"Kafka delivery failed for {len(failures)} events, e.g. {failures[0]}")
        if left:
            raise TimeoutError(f"Kafka did not confirm {left} events within {self.cfg.delivery_timeout_s:.0f}s")

    def close(self) -> None:
        left = self.producer.flush(5.0)
        if left:
            log.error("kafka %s: %d events unconfirmed at close (they stay in the spool if one is set)",
                      self.name, left)
