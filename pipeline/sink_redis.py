"""Redis Streams sink: XADD per event with MAXLEN, for a light broker without Kafka's operations.

Each event becomes one stream entry with fields `id`, `type`, `stream` and `event` (the JSON), so a
consumer can filter by type without parsing. `MAXLEN ~` bounds Redis memory: the stream is a
rolling window, not an archive (consumers that fall behind by more than `maxlen` lose the oldest).
A batch goes in one pipelined round trip; a failure raises and the runner spools the batch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.config import redact_url
from pipeline.sink_base import Sink, SinkConfigBase, encode, env_secret, optional_client


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
            pipe.execute()
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ResponseError (e.g. WRONGTYPE)
            raise ConnectionError(f"Redis {self.where}: {exc}") from None

    def close(self) -> None:
        self.client.close()
