"""One shard's worker, without Ray: the ordinary pipeline plus "own these cameras".

Over 400 lines on purpose: ownership, the diff against running streams and the handover and
takeover reports happen in one order under one lock, in one class; the HTTP side
(`shard_http`), the stall watch (`shard_health`), the ledger and the config rendering live in
their own modules.

`worker.StreamWorker` (the Ray Serve deployment) is a thin wrapper around `ShardWorker`, so all
logic here is testable in a plain process. A `ShardWorker`:
- takes the cluster config (the Serve `user_config`, `ClusterConfig`), loads the registry,
  computes the global assignment (`placement.assign`) and keeps its own part: its shard is its
  sticky slot under Ray (with a `Ledger`: `ownership.py`), else the Serve rank it is given;
- diffs that part against the streams it runs and adds/removes streams on the running pipeline
  (no restart: a camera added elsewhere moves nothing here);
- rebuilds the pipeline only when the worker settings themselves change (model, batching, sinks);
- serves `/metrics` with a `shard` label on every series plus `vap_owned_cameras{shard}`, and
  `/healthz`, `/readyz`, `/cluster` (`shard_http.py`); under Ray it heartbeats its `record()`
  into the GCS every second (what `vap cluster status` shows);
- reports unhealthy when its frame counters stall while cameras deliver (so Serve replaces it);
- never fails a reconfigure for a data problem (see `reconfigure`): Ray Serve 2.60 stops a replica
  whose in-place reconfigure raises and its replacements get the same config, so one registry
  blip or settings typo would cost the shard for good. It keeps what it runs, exposes
  `vap_shard_config_error{shard}` = 1 and retries transient problems itself.

Frames never leave this process: only the config comes in, only events (sinks) and metrics go out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from vap_video.pipeline.cluster.placement import assign, owned
from vap_video.pipeline.cluster.cluster_config import ClusterConfig, render_settings
from vap_video.pipeline.cluster.ledger import Ledger
from vap_video.pipeline.cluster.ownership import Ownership
from vap_video.pipeline.cluster.registry import Registry, RegistryError, load_registry
from vap_video.pipeline.cluster.shard_health import StallWatch, frame_counters
from vap_video.pipeline.cluster.shard_http import PORT_TRIES, MetricsServer, ShardCollector
from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.settings import Settings, StreamSettings

log = logging.getLogger("vap.cluster")

HEARTBEAT_S = 1.0  # under Ray: how often a replica publishes its record and checks who is alive
RETRY_S = 15.0   # a registry or metrics-port problem is retried this often (Serve only calls on a change)


class ShardWorker:
    """The cameras of one shard on one single-node pipeline; see the module docstring."""

    def __init__(self, pipeline_factory: Callable[[Settings], Any] | None = None, *, serve_http: bool = True,
                 replica_id: str | None = None, retry_s: float = RETRY_S, ledger: Ledger | None = None,
                 node: str | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._factory = pipeline_factory or _default_pipeline
        self.replica_id = replica_id or f"pid{os.getpid()}"
        # With a ledger (under Ray): sticky slots, heartbeats, incarnations (see ownership.py);
        # without one the shard is Serve's rank, as in a plain process.
        self.own = Ownership(ledger, self.replica_id, node) if ledger is not None else None
        self.heartbeat_s = heartbeat_s
        self._beating = False
        self._serve_http = serve_http
        self._lock = threading.RLock()
        self.pipeline: Any = None
        self.cfg: ClusterConfig | None = None
        self.rank: int | None = None
        self.registry: Registry | None = None
        self.owned: set[str] = set()
        self._settings: Settings | None = None
        self._streams: dict[str, StreamSettings] = {}
        self._added_total = 0
        self._removed_total = 0
        self._reconfigures = 0
        self._stall = StallWatch()
        self._server: MetricsServer | None = None
        self._applying = False
        self.failed: dict[str, str] = {}   # owned cameras the pipeline refused (bad analytics classes...)
        self.config_error: str | None = None  # why the last reconfigure was not (fully) applied
        self.retry_s = retry_s
        self._retryable = False
        self._generation = 0                # bumped by every reconfigure: a stale retry never applies
        self._stop = threading.Event()
        self.metrics_registry = CollectorRegistry(auto_describe=False)
        self.metrics_registry.register(ShardCollector(self))

    @property
    def shard(self) -> int | None:
        """This worker's shard id: its sticky slot under Ray, else Serve's rank."""
        return self.own.slot if self.own is not None else self.rank

    @property
    def active(self) -> bool:
        """This worker's shard takes part in the assignment now."""
        if self.cfg is None:
            return False
        if self.own is not None:
            return self.own.active(self.cfg.num_shards)
        return self.rank is not None and self.rank < self.cfg.num_shards

    # ------------------------------------------------------------------ control
    def reconfigure(self, user_config: Any, rank: int) -> dict[str, Any]:
        """What Serve's `reconfigure` calls: apply `user_config` as shard `rank`, never raising for data.

        A data problem (invalid user_config, settings that do not validate or whose pipeline does
        not start, a registry that cannot be fetched, is invalid or lacks the requested version,
        a busy metrics port) is logged, keeps the cameras and settings this replica runs now, sets
        `config_error` (`vap_shard_config_error{shard}` = 1, `/cluster`) and, when it may clear
        by itself (registry, port), is retried every `retry_s` until it works or a newer config
        arrives. Raising would make Ray Serve 2.60 stop this replica and fail its replacements with
        the same config (DEPLOY_FAILED, no re-rank), losing the shard for good.

        Raises only when the replica cannot work at all: the very first config is unusable
        (nothing to keep), or no pipeline starts with either the new or the previous settings.
        """
        self._generation += 1
        return self._reconfigure(user_config, rank, self._generation, schedule=True)

    def _reconfigure(self, user_config: Any, rank: int, generation: int, schedule: bool) -> dict[str, Any]:
        self._retryable = False
        try:
            cfg = user_config if isinstance(user_config, ClusterConfig) else ClusterConfig.parse(user_config)
            out = self.apply(cfg, rank, generation)
        except ConfigError as exc:  # RegistryError is one too
            message = str(exc)
            self._retryable = isinstance(exc, RegistryError)
            log.error("shard %s: config not applied, keeping the current cameras and settings: %s",
                      self.rank if self.rank is not None else rank, message)
            with self._lock:
                if generation != self._generation:
                    return {"shard": rank, "superseded": True}
                self.config_error = message
                if self.pipeline is None:  # first config: nothing to keep; start with no cameras
                    self._start_empty(user_config, rank)
            out = {"shard": self.rank, "owned": len(self.owned), "added": [], "removed": [],
                   "failed": sorted(self.failed), "error": message}
        if schedule and self.config_error is not None and self._retryable:
            self._schedule_retry(user_config, rank, generation)
        return out

    def _start_empty(self, user_config: Any, rank: int) -> None:
        """First config failed on the registry: run the pipeline with no cameras so the replica is
        up, visible (`vap_shard_config_error`) and retrying. Raises when even that is impossible."""
        cfg = user_config if isinstance(user_config, ClusterConfig) else ClusterConfig.parse(user_config)
        settings = render_settings(cfg, rank, self.replica_id)
        self.pipeline = self._factory(settings)
        self.pipeline.start()
        self._settings, self.cfg, self.rank = settings, cfg, rank
        self._ensure_server(cfg)

    def _schedule_retry(self, user_config: Any, rank: int, generation: int) -> None:
        if self.retry_s <= 0:
            return

        def retry() -> None:
            while not self._stop.wait(self.retry_s) and generation == self._generation:
                try:
                    self._reconfigure(user_config, rank, generation, schedule=False)
                except Exception:
                    log.exception("retrying the config failed")
                if self.config_error is None or not self._retryable:
                    return
        threading.Thread(target=retry, name="vap-shard-retry", daemon=True).start()

    def apply(self, cfg: ClusterConfig, rank: int, generation: int | None = None) -> dict[str, Any]:
        """Bring this worker to `cfg` as shard `rank`: load the registry, add/remove streams.

        A rank >= num_shards owns nothing (a surplus replica during a rescale). Returns what
        changed. Strict: raises ConfigError/RegistryError for a bad config or registry, before
        changing anything (or after restoring the previous pipeline when the new settings do not
        start one); `reconfigure` turns those into `config_error`. RuntimeError means no pipeline
        runs any more. A call whose `generation` is no longer the latest changes nothing.
        """
        registry = self._load_registry(cfg, rank)  # may wait for a version: outside the lock
        with self._lock:
            if generation is not None and generation != self._generation:
                return {"shard": rank, "superseded": True}
            self._applying = True
            try:
                return self._apply(cfg, rank, registry)
            finally:
                self._applying = False
                self._reset_progress()

    def _apply(self, cfg: ClusterConfig, rank: int, registry: Registry) -> dict[str, Any]:
        if self.own is not None:
            if not self._beating:  # be alive in the ledger before counting who is
                self.own.beat(self.record())
            self.own.refresh(cfg.num_shards)
            shard = self.own.slot if self.own.slot is not None else rank
        else:
            shard = rank
        settings = render_settings(cfg, shard, self.replica_id)  # a typo fails here, before any change
        mine: set[str] = set()
        if self.own is not None:
            mine = self.own.mine(registry.weights(cfg.weighted), cfg.num_shards, cfg.slack, cfg.capacity,
                                 self.owned)
        elif rank < cfg.num_shards:
            table = assign(registry.weights(cfg.weighted), cfg.num_shards, cfg.slack, cfg.capacity)
            mine = owned(table, rank)
        wanted = {c.name: c.stream() for c in registry.cameras if c.name in mine}
        previous = dict(self._streams)
        removed = [n for n in previous if n not in wanted or previous[n] != wanted[n]]
        if self.pipeline is None or settings != self._settings:
            # Only the cameras still wanted go on the new pipeline: a rank change with '{shard}'
            # in the settings must not re-open the old rank's cameras for a moment.
            self._restart_pipeline(settings)
        else:
            for name in removed:
                self._remove(name, "handover" if name in registry.by_name() else None)
        failed: dict[str, str] = {}
        for name in sorted(wanted):
            if name in self._streams:
                continue
            try:
                self._add(wanted[name])
            except (ConfigError, ValueError) as exc:  # one bad camera must not cost the shard its others
                failed[name] = str(exc)
                log.error("camera %s not started: %s", name, exc)
        added = sorted(n for n in self._streams if n not in previous or n in removed)
        self.failed = failed
        self.cfg, self.rank, self.registry, self.owned = cfg, rank, registry, set(wanted)
        self._reconfigures += 1
        self._added_total += len(added)
        self._removed_total += len(removed)
        self.config_error = None
        self._ensure_server(cfg)
        self._start_heartbeat()
        log.info("shard %s/%s: owns %d of %d cameras (registry %s): +%d -%d%s", self.shard, cfg.num_shards,
                 len(self.owned), len(registry.cameras), registry.version, len(added), len(removed),
                 f", {len(self.failed)} failed to start" if self.failed else "")
        out = {"shard": self.shard, "owned": len(self.owned), "added": added, "removed": removed,
               "failed": sorted(self.failed), "registry_version": registry.version}
        if self.config_error is not None:
            out["error"] = self.config_error
        return out

    def _ensure_server(self, cfg: ClusterConfig) -> None:
        """(Re)bind /metrics where `cfg` asks; a busy port is a retryable config_error, not a crash."""
        if not self._serve_http:
            return
        where = (cfg.metrics_host, cfg.metrics_port)
        if self._server is not None and self._server.asked != where:
            self._server.close()
            self._server = None
        if self._server is None:
            try:
                self._server = MetricsServer(self, *where)
            except ConfigError as exc:
                log.error("shard %s: %s", self.rank, exc)
                self.config_error = str(exc)
                self._retryable = True

    def _load_registry(self, cfg: ClusterConfig, rank: int) -> Registry:
        """The registry `cfg` asks for; fetch errors and a missing version are retried until
        `registry_wait_s`. The loaded one is reused when only the rank changed (same config), or
        when the same location is pinned to the version already loaded."""
        current, have = self.cfg, self.registry
        if have is not None and current is not None and (
                (cfg == current and rank != self.rank)
                or (cfg.registry == current.registry and cfg.registry_version is not None
                    and cfg.registry_version == have.version)):
            return have
        deadline = time.monotonic() + cfg.registry_wait_s
        pause = min(1.0, cfg.registry_wait_s / 10 or 0.1)
        while True:
            try:
                registry = load_registry(cfg.registry)
            except RegistryError as exc:
                if time.monotonic() >= deadline:
                    raise RegistryError(f"{exc} (tried for {cfg.registry_wait_s:g} s)") from None
                log.warning("registry not readable yet, retrying: %s", exc)
                time.sleep(pause)
                continue
            if cfg.registry_version is None or registry.version == cfg.registry_version:
                return registry
            if time.monotonic() >= deadline:
                raise RegistryError(f"{cfg.registry}: has version {registry.version!r}, the deployment asks for "
                                    f"{cfg.registry_version!r} (waited {cfg.registry_wait_s:g} s); update the "
                                    "registry or registry_version")
            time.sleep(pause)

    def _restart_pipeline(self, settings: Settings) -> None:
        """Replace the pipeline for new settings; its streams are added afterwards by `_apply`.

        When no pipeline starts with the new settings, the previous settings and cameras are
        restored and a ConfigError says why (keep what works); when that fails too, nothing runs,
        `owned` is cleared (so the owned-cameras alert fires) and RuntimeError is raised.
        """
        old, old_settings, old_streams = self.pipeline, self._settings, dict(self._streams)
        self.pipeline, self._streams = None, {}
        if old is not None:
            log.info("worker settings changed: restarting the pipeline")
            old.stop()
        try:
            self.pipeline = self._start_pipeline(settings)
            self._settings = settings
            return
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ConfigError) else str(exc)
        if old_settings is not None:
            try:
                self.pipeline = self._start_pipeline(old_settings)
            except Exception as exc:
                problem += f"; the previous settings do not start either ({exc})"
            else:
                for cfg in old_streams.values():
                    try:
                        self._add(cfg)
                    except (ConfigError, ValueError) as exc:
                        self.failed[cfg.name] = str(exc)
                raise ConfigError(f"settings: no pipeline starts with the new worker settings ({problem}); "
                                  "kept the previous settings and cameras")
        self.owned, self.failed = set(), {}
        raise RuntimeError(f"no pipeline starts with the worker settings: {problem}")

    def _start_pipeline(self, settings: Settings) -> Any:
        pipeline = self._factory(settings)
        hooks = getattr(pipeline, "hooks", None)
        if self.own is not None and hooks is not None:
            hooks.append(self.own.on_frame)
        pipeline.start()
        return pipeline

    def _add(self, cfg: StreamSettings) -> None:
        extra: dict[str, Any] = {}
        if self.own is not None:
            n = self.own.claim(cfg.name)
            extra = {"incarnation": n, "first_up": self.own.first_up(cfg.name, n)}
        for attempt in range(50):  # a stream just removed under the same name is released within moments
            try:
                self.pipeline.add_stream(cfg, **extra)
                break
            except ValueError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self._streams[cfg.name] = cfg

    def _remove(self, name: str, reason: str | None = None) -> None:
        """Stop one camera; `handover` (it moves to another shard) goes on its track.end events."""
        try:
            if self.own is not None:
                self.pipeline.remove_stream(name, reason=reason)
            else:
                self.pipeline.remove_stream(name)
        except KeyError:
            pass
        self._streams.pop(name, None)
        if self.own is not None:
            self.own.released(name)

    def close(self) -> None:
        """Stop the pipeline (drain, flush sinks), the metrics server and any config retry.

        Under Ray this is a planned handover: the slot is given up first (the other replicas
        take over at once), then every camera is stopped with `reason: handover`."""
        self._stop.set()
        with self._lock:
            if self.own is not None and self.pipeline is not None:
                self.own.leave(self.record())
                for name in list(self._streams):
                    self._remove(name, "handover")
                self.owned = set()
            if self._server is not None:
                self._server.close()
                self._server = None
            if self.pipeline is not None:
                self.pipeline.stop()
                self.pipeline = None
            if self.own is not None:
                self.own.gone()

    # ------------------------------------------------------------------ heartbeat (under Ray)
    def _start_heartbeat(self) -> None:
        if self.own is None or self._beating or self.heartbeat_s <= 0:
            return
        self._beating = True
        self.own.beat(self.record())
        threading.Thread(target=self._heartbeat_loop, name="vap-shard-heartbeat", daemon=True).start()

    def _heartbeat_loop(self) -> None:
        """Every `heartbeat_s`: publish the record; when the live slots changed, re-apply."""
        assert self.own is not None
        beats = 0
        while not self._stop.wait(self.heartbeat_s):
            beats += 1
            try:
                self.own.beat(self.record())
                if beats % 60 == 0:   # dead replicas' records (a clean stop deletes its own)
                    self.own.ledger.prune()
                cfg = self.cfg
                if cfg is None or self.registry is None or self.own.leaving:
                    continue
                if self.own.refresh(cfg.num_shards):
                    with self._lock:
                        if not self._stop.is_set() and self.cfg is cfg and self.registry is not None:
                            self._apply(cfg, self.rank if self.rank is not None else 0, self.registry)
            except Exception:
                log.exception("heartbeat failed")

    def record(self) -> dict[str, Any]:
        """What `vap cluster status` shows for this replica (the heartbeat's payload)."""
        info = self.describe()
        streams = self.pipeline.streams() if self.pipeline is not None else []
        errors = [f"{s['name']}: {s['last_error']}" for s in streams if s.get("last_error")]
        errors += [f"{name}: {msg}" for name, msg in sorted(self.failed.items())]
        info.update({
            "rank": self.rank,
            "fps": round(sum(float(s.get("fps") or 0.0) for s in streams), 2),
            "drops": int(sum(int(s.get("drops") or 0) for s in streams)),
            "last_error": self.config_error or (self.own.kv_error if self.own else None)
            or (errors[-1] if errors else None),
            "config_version": f"{info['registry_version']}/{info['num_shards']}",
            "active": self.active,
        })
        return info

    # ------------------------------------------------------------------ health
    def _reset_progress(self) -> None:
        self._stall.reset(*(frame_counters(self.pipeline) if self.pipeline is not None else (0.0, 0.0)))

    def check_health(self) -> None:
        """Raise RuntimeError when this worker should be replaced.

        Unhealthy: the data path died, or no frame was processed for `stall_s` while frames are
        being decoded or a camera reports streaming (a hung engine or post stage). Cameras that are
        all down are not the worker's fault: restarting would not help, the stream alerts say so.
        Takes no lock, so a long reconfigure (many streams, a registry wait) never times it out;
        while one runs only a data-path failure counts.
        """
        p = self.pipeline
        if self._applying:
            if p is not None and p.error is not None:
                raise RuntimeError(f"data path failed: {p.error}")
            return
        if p is None or self.cfg is None:
            raise RuntimeError("not configured yet")
        if p.error is not None:
            raise RuntimeError(f"data path failed: {p.error}")
        if not p.ready:
            raise RuntimeError("pipeline threads are not running")
        processed, decoded = frame_counters(p)
        stalled_s, decoding = self._stall.observe(processed, decoded)
        if self.owned and stalled_s > self.cfg.stall_s:
            streaming = any(s["state"] == "streaming" for s in p.streams())
            if streaming or decoding:
                raise RuntimeError(f"no frame processed for {stalled_s:.0f} s while cameras deliver frames "
                                   f"(frame counters stalled at {processed:.0f})")

    # ------------------------------------------------------------------ reporting
    @property
    def metrics_port(self) -> int | None:
        return self._server.port if self._server else None

    def describe(self) -> dict[str, Any]:
        """What this worker does now (JSON-friendly): used by /cluster and the tests. Lock-free (a
        reconfigure may be running), so fields can be a moment apart."""
        p = self.pipeline
        streams = p.streams() if p is not None else []
        return {
            "shard": self.shard,
            "num_shards": self.cfg.num_shards if self.cfg else None,
            "pid": os.getpid(),
            "replica": self.replica_id,
            "host": socket.gethostname(),
            "registry_version": self.registry.version if self.registry else None,
            "registry_cameras": len(self.registry.cameras) if self.registry else 0,
            "owned": sorted(self.owned),
            "failed": dict(self.failed),
            "streams": {s["name"]: s["state"] for s in streams},
            "frames_processed": frame_counters(p)[0] if p is not None else 0.0,
            "metrics_port": self.metrics_port,
            "reconfigures": self._reconfigures,
            "config_error": self.config_error,
        }


def _default_pipeline(settings: Settings) -> Any:
    from vap_video.pipeline.runtime import Pipeline
    return Pipeline(settings)


__all__ = ["PORT_TRIES", "ClusterConfig", "ShardWorker", "render_settings"]  # all but ShardWorker: re-exported
