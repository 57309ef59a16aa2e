"""Redis Streams sink: XADD per event with MAXLEN, for a light broker without Kafka's operations.

Each event becomes one stream entry with fields `id`, `type`, `stream` and `event` (the JSON), so a
consumer can filter by type without parsing. `MAXLEN ~` bounds Redis memory: the stream is a
rolling window, not an archive (consumers that fall behind by more than `maxlen` lose the oldest).
A batch goes in one pipelined round trip. A connection failure raises and the batch stays in the
runner's spool. Per-command errors are told apart: a transient one (OOM, LOADING, READONLY, ...)
hands the events from the first failure on back to the runner (`PartialDelivery`, replayed later);
a permanent one (e.g. WRONGTYPE: the key holds something else) cannot succeed by retrying, so
that event is dropped and counted (`vap_sink_dropped_total`) instead of being re-added with its
whole batch on every retry.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from vap_video.pipeline.config import redact_url
from vap_video.pipeline.sinks.base import (PartialDelivery, Sink, SinkConfigBase, SinkKind, encode, env_secret,
                                           optional_client)

log = logging.getLogger("vap.sinks.redis")

# Error replies that can pass by themselves (memory, startup, failover); anything else is permanent.
_TRANSIENT = ("OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
              "NOAUTH", "NOPERM")


class RedisSinkConfig(SinkConfigBase):
    """Append events to Redis Streams (XADD ... MAXLEN ~ n)."""

    type: Literal["redis"] = Field("redis", description="Sink kind")
    url: str = Field("redis://localhost:6379/0", description="redis:// or rediss:// (TLS) URL, without password")
    key: str = Field("vap:events", description="Stream key; '{stream}' is replaced by the stream name, e.g. "
                     "'vap:{stream}:events'")
    maxlen: int = Field(100_000, ge=1, description="Keep about this many entries per stream key")
    approximate: bool = Field(True, description="MAXLEN ~ (much cheaper trimming; may keep a few more)")
    timeout_s: float = Field(5.0, gt=0, description="Socket connect and read timeout")
    password_env: str | None = Field("VAP_REDIS_PASSWORD", description="Environment variable holding the password")
    username_env: str | None = Field(None, description="Environment variable holding the ACL user name")


class RedisSink(Sink):
    def __init__(self, cfg: RedisSinkConfig) -> None:
        redis = optional_client("redis", "redis")
        self._redis = redis
        self.cfg = cfg
        self.name = cfg.name
        self.where = redact_url(cfg.url)
        creds = {k: v for k, v in (("password", env_secret(cfg.password_env)),
                                   ("username", env_secret(cfg.username_env))) if v is not None}
        self.client = redis.Redis.from_url(cfg.url, socket_timeout=cfg.timeout_s,
                                           socket_connect_timeout=cfg.timeout_s, **creds)

    def write(self, events: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for e in events:
            pipe.xadd(self.cfg.key.replace("{stream}", e["stream"]),
                      {"id": e["id"], "type": e["type"], "stream": e["stream"], "event": encode(e)},
                      maxlen=self.cfg.maxlen, approximate=self.cfg.approximate)
        try:
            results = pipe.execute(raise_on_error=False)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, AuthenticationError
            raise ConnectionError(f"Redis {self.where}: {exc}") from None
        for i, (e, result) in enumerate(zip(events, results)):
            if not isinstance(result, Exception):
                continue
            text = str(result)
            if text.split(" ", 1)[0].upper() in _TRANSIENT or not isinstance(result, self._redis.ResponseError):
                raise PartialDelivery(f"Redis {self.where}: {text}", events[i:])
            self.not_delivered += 1
            if self.metrics is not None:
                self.metrics.sink_dropped.labels(self.name).inc()
            log.error("redis %s: event %s dropped, Redis refuses it for good (%s)", self.name, e["id"], text)

    def close(self) -> None:
        self.client.close()


KIND = SinkKind(RedisSinkConfig, RedisSink)
