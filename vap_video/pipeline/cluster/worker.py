"""The Ray Serve deployment `StreamWorker`: one replica per GPU, each a `ShardWorker`.

Serve does what a home-made controller would: places one replica per GPU, restarts a replica
whose process or node died (on a spare GPU when there is one), calls `check_health` and replaces
a replica that fails it, and delivers the `user_config` to every replica through `reconfigure`
without restarting it. This module only adapts those three hooks to `ShardWorker`.

The shard id is a sticky slot kept in Ray's GCS (`ledger`, `ownership`), not the replica's Serve
rank: Serve renumbers ranks on a downscale (3 -> 2 stops rank 0 and makes rank 2 the new 0),
which would move cameras between two processes that both keep running. The shard *count* is
`user_config.num_shards`, never Serve's `world_size` (seen stale during a 3 -> 2 rescale).

Importing this module imports Ray; `pipeline` itself never does. Serve config files refer to
`vap_video.pipeline.cluster.worker:app`.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from vap_video.pipeline.cluster.ledger import GcsKV, Ledger
from vap_video.pipeline.cluster.shard import ShardWorker

log = logging.getLogger("vap.cluster")

DEPLOYMENT_NAME = "StreamWorker"
IMPORT_PATH = "vap_video.pipeline.cluster.worker:app"


@serve.deployment(
    name=DEPLOYMENT_NAME,
    # Defaults only: `vap cluster up` sets these in the Serve config file, which takes precedence.
    ray_actor_options={"num_gpus": 1},
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=20,
    max_ongoing_requests=8,
)
class StreamWorker:
    """One shard: owns the cameras `placement.assign` gives its shard, runs them on the single-node pipeline."""

    def __init__(self) -> None:
        # The pipeline starts in reconfigure: Serve always calls it right after __init__ with the
        # user_config and the rank, and the rank is needed to know which cameras to open.
        context = serve.get_replica_context()
        runtime = ray.get_runtime_context()
        ledger = Ledger(GcsKV.connect(runtime.gcs_address), app=context.app_name)
        self.shard = ShardWorker(replica_id=context.replica_id.unique_id, ledger=ledger,
                                 node=runtime.get_node_id())

    def reconfigure(self, user_config: dict[str, Any], rank: Any) -> None:
        """Serve calls this at start, on every user_config change and when the rank changes.

        Raises only when this replica cannot work at all (see `ShardWorker.reconfigure`): Serve
        2.60 stops a replica whose in-place reconfigure raises, and its replacements fail the same
        way, so a data problem is kept as `vap_shard_config_error` instead.
        """
        summary = self.shard.reconfigure(user_config, int(getattr(rank, "rank", rank)))  # ReplicaRank or int
        log.info("reconfigured: %s", {k: (len(v) if isinstance(v, list) else v) for k, v in summary.items()})

    def check_health(self) -> None:
        """Raising here makes Serve replace this replica (hung data path, stalled frame counters)."""
        self.shard.check_health()

    def describe(self) -> dict[str, Any]:
        """Owned cameras, shard, pid, fps, drops, errors: the record `vap cluster status` reads
        from the GCS heartbeat (this call is the same through a handle)."""
        return self.shard.record()

    async def __call__(self, request: Any) -> dict[str, Any]:
        """HTTP GET on the route prefix (if one is set): the same as `describe`."""
        return self.shard.describe()

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown (downscale, redeploy): drain and flush the sinks.
        try:
            self.shard.close()
        except Exception:
            log.exception("closing the shard worker failed")


app = StreamWorker.bind()  # type: ignore[attr-defined]  # added by @serve.deployment at runtime

__all__ = ["DEPLOYMENT_NAME", "IMPORT_PATH", "StreamWorker", "app"]
