"""The cluster config every replica gets (the Serve `user_config`) and the worker settings it renders.

Kept apart from `shard` so `vap cluster config|up` can validate a deployment without loading
the worker: the same `ClusterConfig.parse` and `render_settings` run in both places.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from vap_video.pipeline.cluster.placement import DEFAULT_SLACK
from vap_video.pipeline.cluster.shard_http import PORT_TRIES
from vap_video.pipeline.config import ConfigError, Strict
from vap_video.pipeline.settings import Settings, parse_settings

SHARD_PLACEHOLDER = "{shard}"
REPLICA_PLACEHOLDER = "{replica}"


class ClusterConfig(Strict):
    """What every replica gets as the Serve deployment's `user_config`.

    Changing any field makes Serve call `reconfigure` on every replica in place (no restart),
    in batches of about 20 % of the replicas (so replicas briefly disagree during a rollout).
    """

    num_shards: int = Field(ge=1, description="Shards (= GPU workers doing work); never taken from Serve's "
                            "world_size, which can be stale during a rescale")
    registry: str = Field(description="Camera registry: a YAML path on every node, or an http(s):// URL")
    registry_version: str | None = Field(None, description="Expected registry version; a replica that reads "
                                         "another one retries until registry_wait_s, then keeps its current "
                                         "cameras, reports vap_shard_config_error and retries every 15 s")
    weighted: bool = Field(False, description="Balance by width x height x fps instead of camera count")
    slack: float = Field(DEFAULT_SLACK, ge=0, description="Per-shard cap = (1 + slack) x mean load")
    capacity: float | None = Field(None, gt=0, description="Lowers the cap to what one GPU takes (cameras, or "
                                   "1080p25 equivalents when weighted); from `vap cluster plan --per-gpu`")
    settings: dict[str, Any] = Field(default_factory=dict, description="Each worker's deployment YAML, "
                                     "without streams; in any string '{shard}' becomes the shard number and "
                                     "'{replica}' the replica's unique id (e.g. one event file per worker)")
    metrics_host: str = Field("0.0.0.0", description="Bind address of the worker's /metrics")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Worker /metrics port; the next free one of "
                              f"{PORT_TRIES} is taken when busy (several replicas per node); 0 = any")
    stall_s: float = Field(30.0, gt=0, description="Unhealthy when no frame was processed this long while "
                           "cameras deliver frames")
    registry_wait_s: float = Field(30.0, ge=0, description="How long a reconfigure retries a registry fetch "
                                   "or waits for registry_version before keeping the last good registry")

    @classmethod
    def parse(cls, data: Any, source: str = "user_config") -> ClusterConfig:
        """Validate; every problem is a ConfigError naming the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a mapping with num_shards and registry, got {type(data).__name__}")
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
                                 f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
            raise ConfigError(f"{source}: {problems}") from None
        if cfg.settings.get("streams"):
            raise ConfigError(f"{source}: settings.streams must be empty: cameras come from the registry")
        return cfg


def render_settings(cfg: ClusterConfig, shard: int, replica: str = "0") -> Settings:
    """The worker's pipeline settings, '{shard}'/'{replica}' filled in, HTTP server off (the worker
    serves its own endpoints)."""
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(SHARD_PLACEHOLDER, str(shard)).replace(REPLICA_PLACEHOLDER, replica)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value
    data = fill(dict(cfg.settings))
    data["streams"] = []
    data.setdefault("server", {})
    if isinstance(data["server"], dict):
        data["server"] = {**data["server"], "enabled": False}
    return parse_settings(data, "user_config.settings")


__all__ = ["REPLICA_PLACEHOLDER", "SHARD_PLACEHOLDER", "ClusterConfig", "render_settings"]
