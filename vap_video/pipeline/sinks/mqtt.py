"""MQTT sink (paho-mqtt 2.x): events to `<prefix>/<stream>/events`, stream state to `<prefix>/<stream>/state`.

Why these choices:
- QoS 1 and a write counts as done only when the broker acknowledged every message (PUBACK), so a
  batch that raises was possibly not delivered and the runner spools it: at least once, never
  silently lost. A batch that reached the broker just before a failure may arrive twice;
  consumers drop duplicates by event `id`.
- The state topic is retained, so a dashboard that subscribes later sees each stream's last state.
- The availability topic is retained "online" while connected and the broker publishes the last
  will "offline" when vap dies without saying goodbye (Home Assistant's availability convention).
- Credentials come from environment variables named in the config, never from the YAML itself.
- Throughput depends on the broker answering PUBACKs at once: mosquitto's default leaves Nagle's
  algorithm on, which holds acknowledgements back by ~40 ms per batch (measured here: 225 events/s
  at 10 events per batch, against ~17,700 with `set_tcp_nodelay true` in mosquitto.conf).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vap_video.pipeline.config import ConfigError, Strict
from vap_video.pipeline.sinks.base import Sink, SinkConfigBase, SinkKind, encode, env_secret, optional_client

log = logging.getLogger("vap.sinks.mqtt")


class MqttTls(Strict):
    """TLS to the broker; with no files the system CA store verifies it."""

    enabled: bool = Field(False, description="Connect with TLS")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="Client key (mutual TLS)")
    insecure: bool = Field(False, description="Skip the broker hostname check (testing only)")


class MqttSinkConfig(SinkConfigBase):
    """Publish events to an MQTT broker with QoS 1 (Home Assistant, Node-RED, ...)."""

    type: Literal["mqtt"] = Field("mqtt", description="Sink kind")
    host: str = Field("localhost", description="Broker host")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS)")
    topic_prefix: str = Field("vap", description="Topics are <prefix>/<stream>/events and <prefix>/<stream>/state")
    availability_topic: str | None = Field(
        None, description="Retained online/offline topic with last will (default <prefix>/status); make it "
        "unique per node when several nodes share a broker")
    qos: Literal[0, 1, 2] = Field(1, description="MQTT QoS of event messages (1 = at least once)")
    client_id: str | None = Field(None, description="MQTT client id (default vap-<sink name>-<hostname>)")
    keepalive_s: int = Field(30, ge=5, description="Keepalive; the broker sends the last will after 1.5x this "
                             "without traffic")
    username_env: str | None = Field("VAP_MQTT_USERNAME", description="Environment variable holding the user name")
    password_env: str | None = Field("VAP_MQTT_PASSWORD", description="Environment variable holding the password")
    tls: MqttTls = Field(default_factory=MqttTls, description="TLS settings")
    ack_timeout_s: float = Field(10.0, gt=0, description="A batch not acknowledged within this is spooled")
    connect_wait_s: float = Field(1.0, gt=0, description="How long a write waits for a (re)connection before "
                                  "spooling")
    reconnect_max_s: float = Field(1.0, ge=0.5, description="Longest wait between reconnect attempts while the "
                                   "broker is down (a TCP connect each: cheap; delivery resumes within about "
                                   "this long of the broker's return)")


MAX_QUEUED = 5000
"""Most messages paho may hold unacknowledged (a replay batch of 500 events is at most 1000 messages)."""


class MqttSink(Sink):
    def __init__(self, cfg: MqttSinkConfig) -> None:
        mqtt = optional_client("paho.mqtt.client", "mqtt")
        self.cfg = cfg
        self.name = cfg.name
        self._mqtt = mqtt
        self._connected = threading.Event()
        self._closing = False
        self.availability = cfg.availability_topic or f"{cfg.topic_prefix}/status"
        client_id = cfg.client_id or f"vap-{cfg.name}-{socket.gethostname()}"[:64]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        user, password = env_secret(cfg.username_env), env_secret(cfg.password_env)
        if user is not None:
            self.client.username_pw_set(user, password)
        if cfg.tls.enabled:
            for f in (cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file):
                if f is not None and not Path(f).is_file():
                    raise ConfigError(f"sinks: {cfg.name}: TLS file {f} does not exist")
            self.client.tls_set(ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None)
            self.client.tls_insecure_set(cfg.tls.insecure)
        self.client.will_set(self.availability, b"offline", qos=1, retain=True)
        self.client.max_inflight_messages_set(100)
        # Messages whose acknowledgement timed out stay queued in paho (and go out after a reconnect)
        # while the spooled copy is replayed too: bound that queue, so a long stretch of a slow or
        # half-dead broker cannot grow it without limit. A full queue fails the write (the events
        # stay in the spool) instead of queueing yet another copy.
        self.client.max_queued_messages_set(MAX_QUEUED)
        # paho doubles its delay from min to max between attempts. A long max (paho's default is
        # 120 s, ours was 15) left delivery stalled that long after the broker was back; an attempt
        # is one TCP connect, so a low bound costs nothing even for a broker down for hours.
        self.client.reconnect_delay_set(min_delay=min(0.5, cfg.reconnect_max_s),
                                        max_delay=cfg.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        # Asynchronous connect: a broker that is down at start must not stop vap; events spool.
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.error("mqtt %s: broker %s:%d refused the connection (%s)", self.name, self.cfg.host,
                      self.cfg.port, reason)
            return
        client.publish(self.availability, b"online", qos=1, retain=True)
        log.info("mqtt %s: connected to %s:%d", self.name, self.cfg.host, self.cfg.port)
        self._connected.set()
        self._link(True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if self._connected.is_set() and not self._closing:
            log.warning("mqtt %s: disconnected from %s:%d (%s); events spool until it is back",
                        self.name, self.cfg.host, self.cfg.port, reason)
        self._connected.clear()
        if not self._closing:
            self._link(False)

    def _link(self, up: bool) -> None:
        """Tell the runner the connection came or went (on paho's thread: it only sets flags)."""
        hook = self.on_link
        if hook is not None:
            try:
                hook(up)
            except Exception:
                log.exception("mqtt %s: link hook failed", self.name)

    def write(self, events: list[dict[str, Any]]) -> None:
        if not self._connected.wait(self.cfg.connect_wait_s):
            raise ConnectionError(f"not connected to MQTT broker {self.cfg.host}:{self.cfg.port}")
        prefix = self.cfg.topic_prefix
        infos = []
        for e in events:
            infos.append(self.client.publish(f"{prefix}/{e['stream']}/events", encode(e), qos=self.cfg.qos))
            if e["type"].startswith("stream."):
                state = {k: e[k] for k in ("id", "type", "ts", "state", "reason") if k in e}
                infos.append(self.client.publish(f"{prefix}/{e['stream']}/state", json.dumps(state), qos=1,
                                                 retain=True))
        mqtt = self._mqtt
        for info in infos:
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # NO_CONN: the connection dropped mid-batch. paho may still send what it queued after
                # reconnecting; the spooled copy then arrives twice, which dedup by id absorbs.
                raise ConnectionError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        if self.cfg.qos == 0:
            return
        deadline = time.monotonic() + self.cfg.ack_timeout_s
        for info in infos:
            while not info.is_published():
                if not self._connected.is_set():
                    raise ConnectionError(f"lost MQTT broker {self.cfg.host}:{self.cfg.port} before its "
                                          "acknowledgement")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"MQTT broker {self.cfg.host}:{self.cfg.port} did not acknowledge "
                                       f"within {self.cfg.ack_timeout_s:.0f}s")
                try:
                    info.wait_for_publish(0.1)
                except (RuntimeError, ValueError) as exc:
                    raise ConnectionError(f"MQTT publish failed: {exc}") from None

    def close(self) -> None:
        self._closing = True
        try:
            if self._connected.is_set():
                self.client.publish(self.availability, b"offline", qos=1, retain=True).wait_for_publish(2.0)
        except (RuntimeError, ValueError):
            pass
        finally:
            self.client.disconnect()
            self.client.loop_stop()


KIND = SinkKind(MqttSinkConfig, MqttSink)
