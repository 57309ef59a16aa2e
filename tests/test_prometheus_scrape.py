"""A real Prometheus server (Debian package) scrapes a running vap, and PromQL returns its series.

The pipeline runs a generated live scene through a tiny constant detector with the HTTP API on a free
port; one sink points at a Redis port where nothing listens, so the spool metrics have something to
show. Prometheus loads the shipped alert rules too.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from vap_video.pipeline.api import ApiServer
from vap_video.pipeline.runtime import Pipeline
from vap_video.pipeline.settings import parse_settings
from tests.onnx_models import constant_detector
from tests.real_servers import Server, free_port, need

ROOT = Path(__file__).resolve().parent.parent


def _query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _eventually(base: str, promql: str, timeout: float = 40.0) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        try:
            result = _query(base, promql)
        except OSError:
            result = []
        if result:
            return result
        assert time.time() < deadline, f"no result for {promql!r} after {timeout}s"
        time.sleep(0.5)


@pytest.mark.slow
def test_prometheus_scrapes_vap_and_promql_returns_the_series(tmp_path):
    binary = need("prometheus")
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 40, 40, 0.9, 0]], np.float32), ["person"])
    settings = parse_settings({
        "streams": [{"name": "cam", "url": "synthetic://?seed=3&fps=10&width=160&height=120&objects=2"}],
        "model": {"path": str(model)},
        "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"},
                  {"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout_s": 0.2,
                   "spool": {"dir": str(tmp_path / "spool")}}],
        "server": {"port": 0}})
    p = Pipeline(settings)
    api = ApiServer(p, "127.0.0.1", 0)
    prom_port = free_port()
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": "vap", "static_configs": [{"targets": [f"127.0.0.1:{api.port}"]}]}]}))
    prom = Server([binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{prom_port}"], prom_port, tmp_path)
    base = f"http://127.0.0.1:{prom_port}"
    api.start()
    p.start()
    try:
        prom.start()
        up = _eventually(base, 'up{job="vap"} == 1')
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{api.port}"
        processed = _eventually(base, 'vap_frames_processed_total{stream="cam"} > 0')
        assert processed[0]["metric"]["job"] == "vap"
        assert float(_eventually(base, 'vap_stream_up{stream="cam"}')[0]["value"][1]) == 1.0
        rate = _eventually(base, 'rate(vap_frames_decoded_total{stream="cam"}[5s]) > 0')
        assert 1 < float(rate[0]["value"][1]) < 30       # the scene runs at 10 fps (slack for a loaded machine)
        p95 = _eventually(base, 'histogram_quantile(0.95, sum by (le) (rate(vap_frame_latency_seconds_bucket[10s])))')
        assert 0 < float(p95[0]["value"][1]) < 5
        spooled = _eventually(base, 'vap_spool_events{sink="redis"} > 0')
        assert float(spooled[0]["value"][1]) > 0
        assert float(_eventually(base, 'vap_sink_up{sink="redis"}')[0]["value"][1]) == 0.0
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as r:
            groups = {g["name"] for g in json.loads(r.read())["data"]["groups"]}
        assert {"vap-streams", "vap-delivery"} <= groups
    finally:
        prom.stop()
        p.stop(timeout=5)
        api.close()
