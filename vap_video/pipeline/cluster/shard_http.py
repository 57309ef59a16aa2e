"""A shard worker's own HTTP endpoints and metrics: /metrics, /healthz, /readyz, /cluster.

The series are the pipeline's with a `shard` label added, plus the shard's gauges. `/cluster`
(who owns what, pids, errors) answers only with the API token (`Authorization: Bearer`) once
`$VAP_API_TOKEN` (`server.token_env` of the worker settings) is set, like the main API;
/metrics, /healthz and /readyz stay public unless `server.public_metrics` is false.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vap_video.pipeline.api_guard import read_token
from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.http_server import JsonHandler
from vap_video.pipeline.settings import ServerConfig

if TYPE_CHECKING:
    from vap_video.pipeline.cluster.shard import ShardWorker

PORT_TRIES = 16
_PUBLIC = {"/metrics", "/healthz", "/readyz"}


class ShardCollector:
    """The pipeline's series with a `shard` label added, plus the shard's own gauges."""

    def __init__(self, worker: ShardWorker) -> None:
        self.w = worker

    def describe(self) -> list[Metric]:
        return []  # names vary with the pipeline; skip registration-time collection

    def collect(self) -> Iterator[Metric]:
        w = self.w
        shard = "" if w.shard is None else str(w.shard)
        num_shards = w.cfg.num_shards if w.cfg else 0
        active = w.active

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["shard"])
            g.add_metric([shard], value)
            return g
        yield gauge("vap_owned_cameras", "Cameras this shard owns now", len(w.owned))
        yield gauge("vap_registry_cameras", "Cameras in the registry this shard loaded",
                    len(w.registry.cameras) if w.registry else 0)
        yield gauge("vap_cluster_shards", "num_shards in the deployment config", num_shards)
        yield gauge("vap_shard_camera_failures", "Owned cameras the pipeline refused to start (see /cluster)",
                    len(w.failed))
        yield gauge("vap_shard_config_error", "1 when the last config was not applied (the shard keeps its "
                    "previous cameras and settings; see /cluster config_error and the log)",
                    1.0 if w.config_error else 0.0)
        yield gauge("vap_shard_active", "1 when this replica's shard takes part in the assignment",
                    1.0 if active else 0.0)
        moves = CounterMetricFamily("vap_shard_camera_changes", "Cameras added to or removed from this shard",
                                    labels=["shard", "change"])
        moves.add_metric([shard, "added"], w._added_total)
        moves.add_metric([shard, "removed"], w._removed_total)
        yield moves
        p = w.pipeline
        if p is None:
            return
        for fam in p.metrics.registry.collect():
            out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                out.add_sample(s.name, {**s.labels, "shard": shard}, s.value, s.timestamp, s.exemplar)
            yield out


class MetricsServer:
    """GET /metrics, /healthz, /readyz, /cluster for one worker, on its own daemon thread."""

    def __init__(self, worker: ShardWorker, host: str, port: int) -> None:
        handler = type("Handler", (Handler,), {"worker": worker})
        self.asked = (host, port)
        last: OSError | None = None
        tries = 1 if port == 0 else PORT_TRIES
        for candidate in range(port, port + tries):
            try:
                self.httpd = ThreadingHTTPServer((host, candidate), handler)
                break
            except OSError as exc:
                last = exc
        else:
            raise ConfigError(f"metrics_port: no free port in {port}..{port + tries - 1} on {host} ({last}); "
                              "choose another metrics_port (0 picks any)")
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vap-shard-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Handler(JsonHandler):
    worker: ShardWorker

    def _server_config(self) -> ServerConfig:
        settings = self.worker._settings
        return settings.server if settings is not None else ServerConfig()

    def _authorised(self, cfg: ServerConfig) -> bool:
        """The main API's rule (`vap_video.pipeline.api`): no token set -> open; else `Bearer <token>`."""
        try:
            token = read_token(cfg)
        except ConfigError:
            return False   # a token too short to be one: refuse rather than run open
        if token is None:
            return True
        auth = self.headers.get("Authorization") or ""
        return auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), token.encode())

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        w = self.worker
        cfg = self._server_config()
        if not ((path in _PUBLIC and cfg.public_metrics) or self._authorised(cfg)):
            self._send(401, {"error": f"missing or wrong API token: send 'Authorization: Bearer <the value of "
                                      f"${cfg.token_env}>'"}, headers={"WWW-Authenticate": 'Bearer realm="vap"'})
            return
        if path == "/metrics":
            self._send(200, generate_latest(w.metrics_registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            try:
                w.check_health()
                self._send(200, {"status": "ok"})
            except RuntimeError as exc:
                self._send(503, {"status": str(exc)})
        elif path == "/readyz":
            ready = w.pipeline is not None and w.pipeline.ready
            self._send(200 if ready else 503, {"ready": ready, "owned": len(w.owned)})
        elif path == "/cluster":
            self._send(200, w.describe())
        else:
            self._send(404, {"error": "unknown path; try /metrics, /healthz, /readyz, /cluster"})


__all__ = ["PORT_TRIES", "Handler", "MetricsServer", "ShardCollector"]
