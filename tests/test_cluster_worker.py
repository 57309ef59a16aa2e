"""The shard worker without Ray: registry, config, reconfigure diffing, health, metrics, `vap cluster`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from vap_video.pipeline.cluster.placement import assign, owned
from vap_video.pipeline.cluster.cli import cli
from vap_video.pipeline.cluster.registry import RegistryError, load_registry, parse_registry
from vap_video.pipeline.cluster.shard import ClusterConfig, ShardWorker
from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.metrics import Metrics


def write_registry(path: Path, n: int, version: str, fps: int = 2) -> list[str]:
    names = [f"cam-{i:02d}" for i in range(n)]
    cams = [{"name": c, "url": f"synthetic://?seed={i}&fps={fps}&width=96&height=64&objects=2"}
            for i, c in enumerate(names)]
    path.write_text(yaml.safe_dump({"version": version, "cameras": cams}))
    return names


class FakePipeline:
    """Records stream changes; counters are driven by the test."""

    instances: list[FakePipeline] = []

    def __init__(self, settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.configs: dict = {}
        self.log: list[tuple[str, str]] = []
        self.error = None
        self.ready = False
        self.state = "streaming"
        FakePipeline.instances.append(self)

    def start(self) -> None:
        self.ready = True

    def stop(self, timeout=None) -> bool:
        self.ready = False
        return True

    def add_stream(self, cfg, **kw) -> None:   # incarnation, first_up: ledger mode
        if cfg.name in self.configs:
            raise ValueError("taken")
        self.configs[cfg.name] = cfg
        self.log.append(("add", cfg.name))

    def remove_stream(self, name, timeout=5.0, reason=None) -> None:
        del self.configs[name]
        self.log.append(("remove", name))

    def streams(self) -> list[dict]:
        return [{"name": n, "state": self.state} for n in self.configs]


def cfg(registry: Path, **kw) -> ClusterConfig:
    return ClusterConfig.parse({"num_shards": 2, "registry": str(registry), "metrics_port": 0, **kw})


@pytest.fixture()
def fake_worker():
    FakePipeline.instances.clear()
    w = ShardWorker(FakePipeline, serve_http=False)
    yield w
    w.close()


# ---------------------------------------------------------------- registry
def test_registry_loads_and_weights(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"version": 5, "cameras": [
        {"name": "a", "url": "rtsp://10.0.0.1/s", "width": 3840, "height": 2160, "fps": 25},
        {"name": "b", "url": "rtsp://10.0.0.2/s", "max_fps": 5}]}))
    r = load_registry(str(p))
    assert r.version == "5" and r.names() == ["a", "b"]
    assert r.weights(True) == {"a": pytest.approx(4.0), "b": 1.0}
    assert r.weights(False) == {"a": 1.0, "b": 1.0}
    s = r.cameras[1].stream()  # load hints stripped, stream settings kept
    assert s.max_fps == 5 and not hasattr(s, "width")


@pytest.mark.parametrize("data,match", [
    ({"cameras": []}, "version: Field required"),
    ({"version": "1", "cameras": [{"name": "a", "url": "rtsp://h/s", "bogus": 1}]},
     r"cameras\[0\].bogus: unknown key 'bogus' \(allowed here: .*url"),
    ({"version": "1", "cameras": [{"name": "a", "url": "rtsp://h/s"}, {"name": "a", "url": "rtsp://h/t"}]},
     "used twice"),
    ({"version": "1", "cameras": [{"name": "a", "url": "gopher://h"}]}, "unsupported source"),
    ({"version": "1", "cameras": [{"name": "a", "url": "rtsp://u:${NOPE_NOT_SET}@h/s"}]}, "NOPE_NOT_SET"),
    (["not", "a", "mapping"], "top level must be a mapping"),
])
def test_registry_errors_name_the_problem(data, match):
    with pytest.raises(RegistryError, match=match):
        parse_registry(data, "reg.yaml")


def test_registry_password_never_in_messages():
    with pytest.raises(RegistryError) as err:
        parse_registry({"version": "1", "cameras": [{"name": "bad name", "url": "rtsp://u:s3cret@h:99999/x"}]})
    assert "s3cret" not in str(err.value)


def test_registry_file_problems(tmp_path):
    with pytest.raises(RegistryError, match="no such registry file"):
        load_registry(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [1\n")
    with pytest.raises(RegistryError, match="not valid YAML at line"):
        load_registry(str(bad))
    with pytest.raises(RegistryError, match="is a directory"):
        load_registry(str(tmp_path))


def test_registry_from_url(tmp_path):
    body = yaml.safe_dump({"version": "u1", "cameras": [{"name": "a", "url": "rtsp://h/s"}]}).encode()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/r.yaml":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        assert load_registry(base + "/r.yaml").version == "u1"
        with pytest.raises(RegistryError, match="HTTP 404"):
            load_registry(base + "/nope.yaml")
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------- cluster config
@pytest.mark.parametrize("data,match", [
    ({"registry": "r.yaml"}, "num_shards"),
    ({"num_shards": 0, "registry": "r.yaml"}, "num_shards"),
    ({"num_shards": 2, "registry": "r.yaml", "bogus": 1}, "bogus"),
    ({"num_shards": 2, "registry": "r.yaml", "settings": {"streams": [{"name": "x", "url": "rtsp://h/s"}]}},
     "cameras come from the registry"),
    ("nope", "must be a mapping"),
])
def test_cluster_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        ClusterConfig.parse(data)


# ---------------------------------------------------------------- reconfigure
def test_apply_owns_its_part_of_the_assignment(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    names = write_registry(reg, 10, "v1")
    out = fake_worker.apply(cfg(reg), 1)
    want = owned(assign(names, 2), 1)
    assert fake_worker.owned == want and set(out["added"]) == want
    assert set(fake_worker.pipeline.configs) == want


def test_rank_beyond_num_shards_owns_nothing(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 10, "v1")
    fake_worker.apply(cfg(reg), 0)
    out = fake_worker.apply(cfg(reg), 2)  # a surplus replica during a 3 -> 2 rescale
    assert fake_worker.owned == set() and fake_worker.pipeline.configs == {}
    assert out["added"] == []


def test_new_camera_is_added_without_restart_or_touching_others(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    names = write_registry(reg, 10, "v1")
    fake_worker.apply(cfg(reg, registry_version="v1"), 0)
    p = fake_worker.pipeline
    before = set(fake_worker.owned)
    p.log.clear()
    # add cameras until one lands on shard 0
    n = 10
    while True:
        n += 1
        names = write_registry(reg, n, f"v{n}")
        if assign(names, 2)[names[-1]] == 0:
            break
    fake_worker.apply(cfg(reg, registry_version=f"v{n}"), 0)
    assert fake_worker.pipeline is p  # same pipeline: no restart
    assert p.log == [("add", names[-1])]
    assert fake_worker.owned == before | {names[-1]}


def test_changed_camera_url_is_replaced(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 6, "v1")
    fake_worker.apply(cfg(reg), 0)
    mine = sorted(fake_worker.owned)[0]
    data = yaml.safe_load(reg.read_text())
    for c in data["cameras"]:
        if c["name"] == mine:
            c["url"] = "rtsp://10.9.9.9/new"
    data["version"] = "v2"
    reg.write_text(yaml.safe_dump(data))
    fake_worker.pipeline.log.clear()
    fake_worker.apply(cfg(reg), 0)
    assert fake_worker.pipeline.log == [("remove", mine), ("add", mine)]
    assert fake_worker.pipeline.configs[mine].url == "rtsp://10.9.9.9/new"


def test_settings_change_restarts_pipeline_with_same_cameras(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 8, "v1")
    fake_worker.apply(cfg(reg), 0)
    first = fake_worker.pipeline
    fake_worker.apply(cfg(reg, settings={"batch": {"max_batch": 2}}), 0)
    assert fake_worker.pipeline is not first and not first.ready
    assert set(fake_worker.pipeline.configs) == fake_worker.owned
    assert fake_worker.pipeline.settings.batch.max_batch == 2


def test_shard_and_replica_placeholders(tmp_path):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 4, "v1")
    w = ShardWorker(FakePipeline, serve_http=False, replica_id="abc")
    try:
        w.apply(cfg(reg, settings={"sinks": [{"type": "jsonl", "path": str(tmp_path / "ev-{shard}-{replica}.jsonl")}]}),
                1)
        assert str(w.pipeline.settings.sinks[0].path).endswith("ev-1-abc.jsonl")
        assert w.pipeline.settings.server.enabled is False  # the worker serves its own endpoints
    finally:
        w.close()


def test_registry_version_mismatch_waits_then_fails(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 4, "v1")
    fake_worker.apply(cfg(reg, registry_version="v1"), 0)
    before = set(fake_worker.owned)
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match="has version 'v1', the deployment asks for 'v2'"):
        fake_worker.apply(cfg(reg, registry_version="v2", registry_wait_s=0.3), 0)
    assert time.monotonic() - t0 >= 0.3
    assert fake_worker.owned == before  # nothing changed on a failed update

    def publish_later():
        time.sleep(0.3)
        write_registry(reg, 5, "v2")
    threading.Thread(target=publish_later).start()
    out = fake_worker.apply(cfg(reg, registry_version="v2", registry_wait_s=5), 0)
    assert out["registry_version"] == "v2"


def test_one_refused_camera_does_not_cost_the_shard_its_others(tmp_path):
    class Picky(FakePipeline):
        def add_stream(self, cfg):
            if cfg.name == "cam-03":
                raise ConfigError("streams.cam-03.analytics: class 'truck' is not in the model")
            super().add_stream(cfg)
    reg = tmp_path / "r.yaml"
    names = write_registry(reg, 10, "v1")
    shard = assign(names, 2)["cam-03"]
    w = ShardWorker(Picky, serve_http=False)
    try:
        out = w.apply(cfg(reg), shard)
        assert out["failed"] == ["cam-03"] and "truck" in w.describe()["failed"]["cam-03"]
        assert set(w.pipeline.configs) == owned(assign(names, 2), shard) - {"cam-03"}
        assert "cam-03" in w.owned  # still this shard's responsibility: reported, not silently dropped
        text = __import__("prometheus_client").generate_latest(w.metrics_registry).decode()
        assert f'vap_shard_camera_failures{{shard="{shard}"}} 1.0' in text
    finally:
        w.close()


# ---------------------------------------------------------------- health
def test_health_check_does_not_wait_for_a_long_reconfigure(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 4, "v1")
    fake_worker.apply(cfg(reg), 0)
    t = threading.Thread(target=lambda: pytest.raises(RegistryError, fake_worker.apply,
                                                      cfg(reg, registry_version="v2", registry_wait_s=1.0), 0))
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    fake_worker.check_health()
    fake_worker.describe()
    assert time.monotonic() - t0 < 0.2
    t.join()

def test_health_fails_when_frames_stall_while_cameras_stream(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 6, "v1")
    fake_worker.apply(cfg(reg, stall_s=0.2), 0)
    p = fake_worker.pipeline
    name = sorted(fake_worker.owned)[0]
    p.metrics.frames_processed.labels(name).inc()
    fake_worker.check_health()
    time.sleep(0.1)
    p.metrics.frames_processed.labels(name).inc()
    fake_worker.check_health()  # progressing: healthy
    time.sleep(0.3)
    with pytest.raises(RuntimeError, match="no frame processed"):
        fake_worker.check_health()
    p.metrics.frames_processed.labels(name).inc()
    fake_worker.check_health()  # recovered


def test_health_ok_when_all_cameras_are_down(tmp_path, fake_worker):
    """Cameras that are down are not the worker's fault; restarting it would not help."""
    reg = tmp_path / "r.yaml"
    write_registry(reg, 6, "v1")
    fake_worker.apply(cfg(reg, stall_s=0.1), 0)
    fake_worker.pipeline.state = "backoff"
    time.sleep(0.25)
    fake_worker.check_health()


def test_health_fails_when_decoding_continues_but_processing_stalls(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 6, "v1")
    fake_worker.apply(cfg(reg, stall_s=0.2), 0)
    p = fake_worker.pipeline
    p.state = "stalled"
    name = sorted(fake_worker.owned)[0]
    fake_worker.check_health()
    time.sleep(0.3)
    p.metrics.frames_decoded.labels(name).inc()
    with pytest.raises(RuntimeError, match="no frame processed"):
        fake_worker.check_health()


def test_health_fails_on_data_path_error(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 2, "v1")
    fake_worker.apply(cfg(reg), 0)
    fake_worker.pipeline.error = RuntimeError("engine died")
    with pytest.raises(RuntimeError, match="engine died"):
        fake_worker.check_health()


def test_unconfigured_worker_is_unhealthy():
    with pytest.raises(RuntimeError, match="not configured"):
        ShardWorker(FakePipeline, serve_http=False).check_health()


# ---------------------------------------------------------------- real pipeline + HTTP
def test_real_pipeline_worker_serves_metrics_with_shard_label(tmp_path):
    reg = tmp_path / "r.yaml"
    names = write_registry(reg, 4, "v1", fps=5)
    w = ShardWorker()
    try:
        w.apply(cfg(reg, settings={"model": {"onnxruntime": {"intra_op_threads": 1}},
                                   "sinks": [{"type": "jsonl", "path": str(tmp_path / "ev-{shard}.jsonl")}]}), 1)
        mine = owned(assign(names, 2), 1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and w.describe()["frames_processed"] < 4:
            time.sleep(0.2)
        base = f"http://127.0.0.1:{w.metrics_port}"
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert f'vap_owned_cameras{{shard="1"}} {float(len(mine))}' in text
        assert 'vap_registry_cameras{shard="1"} 4.0' in text
        assert 'vap_cluster_shards{shard="1"} 2.0' in text
        for cam in mine:
            assert f'vap_frames_processed_total{{shard="1",stream="{cam}"}}' in text
        info = json.loads(urllib.request.urlopen(base + "/cluster", timeout=5).read())
        assert info["shard"] == 1 and set(info["owned"]) == mine and info["frames_processed"] >= 4
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
    finally:
        w.close()
    events = [json.loads(x) for x in (tmp_path / "ev-1.jsonl").read_text().splitlines()]
    assert {e["stream"] for e in events} == mine  # only its own cameras' events


# ---------------------------------------------------------------- vap cluster
def test_plan_prints_shards_spares_and_helm_values(tmp_path, capsys):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 40, "v9")
    assert cli(["plan", "--cameras", str(reg), "--per-gpu", "16"]) == 0
    out = capsys.readouterr().out
    assert "shards: 3" in out and "spares: 1" in out  # ceil(40 x 1.1 / 16) = 3
    values = yaml.safe_load(out.split("# Helm values (deploy/helm/vap-cluster):", 1)[1])
    assert values == {"shards": 3, "spares": 1, "capacity": 16.0, "weighted": False, "registry": {"version": "v9"}}
    assert cli(["plan", "--cameras", str(reg), "--per-gpu", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sum(data["counts"]) == 40 and max(data["loads"]) <= 16


def test_plan_bad_input_exit_2(tmp_path, capsys):
    assert cli(["plan", "--cameras", str(tmp_path / "none.yaml"), "--per-gpu", "4"]) == 2
    assert "no such registry file" in capsys.readouterr().err
    reg = tmp_path / "r.yaml"
    write_registry(reg, 3, "v1")
    assert cli(["plan", "--cameras", str(reg)]) == 2
    assert "--per-gpu" in capsys.readouterr().err
    assert cli(["plan", "--cameras", str(reg), "--per-gpu", "0"]) == 2


def test_config_is_a_valid_serve_config(tmp_path, capsys):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 5, "v3")
    settings = tmp_path / "worker.yaml"
    settings.write_text("batch: {max_batch: 4}\n")
    assert cli(["config", "--cameras", str(reg), "--shards", "2", "--settings", str(settings)]) == 0
    cfg_out = yaml.safe_load(capsys.readouterr().out)
    dep = cfg_out["applications"][0]["deployments"][0]
    assert dep["num_replicas"] == 2 and dep["user_config"]["num_shards"] == 2
    assert dep["user_config"]["registry"] == str(reg.resolve())
    assert dep["user_config"]["registry_version"] == "v3"
    assert dep["user_config"]["settings"] == {"batch": {"max_batch": 4}}
    assert cfg_out["proxy_location"] == "Disabled"   # no HTTP proxy per node unless asked
    assert cli(["config", "--cameras", str(reg), "--shards", "2", "--proxy-location", "EveryNode"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["proxy_location"] == "EveryNode"
    ray = pytest.importorskip("ray")
    assert ray
    from ray.serve.schema import ServeDeploySchema
    ServeDeploySchema.model_validate(cfg_out)


def _fake_dashboard(running: list[str]):
    """A Serve REST API stand-in: GET lists `running` applications, PUT records the config."""
    seen: list[tuple[str, str, dict]] = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"applications": {name: {"status": "RUNNING"} for name in running}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}", seen


def test_up_puts_the_config_to_the_serve_rest_api(tmp_path, capsys):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 5, "v3")
    srv, address, seen = _fake_dashboard(["vap"])  # only our own app: an update
    try:
        rc = cli(["up", "--cameras", str(reg), "--shards", "3", "--address", address])
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 0
    (method, path, body), = seen
    assert method == "PUT" and path == "/api/serve/applications/"
    assert body["applications"][0]["deployments"][0]["user_config"]["num_shards"] == 3


def test_up_refuses_to_delete_other_serve_apps(tmp_path, capsys):
    """A PUT replaces the whole Serve config: other applications would be deleted silently."""
    reg = tmp_path / "r.yaml"
    write_registry(reg, 5, "v3")
    srv, address, seen = _fake_dashboard(["vap", "ocr", "billing"])
    try:
        assert cli(["up", "--cameras", str(reg), "--shards", "2", "--address", address]) == 2
        err = capsys.readouterr().err
        assert "billing, ocr" in err and "--replace-all" in err and seen == []
        assert cli(["up", "--cameras", str(reg), "--shards", "2", "--address", address, "--replace-all"]) == 0
        assert "deleting Serve applications billing, ocr" in capsys.readouterr().err and len(seen) == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_config_and_up_validate_settings_like_the_workers(tmp_path, capsys, monkeypatch):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 5, "v3")
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch: {max_batchh: 4}\n")
    assert cli(["config", "--cameras", str(reg), "--shards", "2", "--settings", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "workers would refuse" in err and "max_batchh" in err
    srv, address, seen = _fake_dashboard([])
    try:
        assert cli(["up", "--cameras", str(reg), "--shards", "2", "--settings", str(bad), "--address", address]) == 2
        assert seen == []  # nothing deployed
    finally:
        srv.shutdown()
        srv.server_close()
    # a ${VAR} set only on the workers is not an error here, and stays unexpanded in the config
    monkeypatch.delenv("VAP_TEST_EVDIR", raising=False)
    ok = tmp_path / "ok.yaml"
    ok.write_text('sinks: [{type: jsonl, path: "/ev/${VAP_TEST_EVDIR}/e-{replica}.jsonl"}]\n')
    assert cli(["config", "--cameras", str(reg), "--shards", "2", "--settings", str(ok)]) == 0
    out = capsys.readouterr()
    assert "${VAP_TEST_EVDIR}" in out.out and "VAP_TEST_EVDIR} not set here" in out.err
    assert "VAP_TEST_EVDIR" not in __import__("os").environ


@pytest.mark.parametrize("args,match", [
    (["--per-gpu", "nan"], "--per-gpu must be a positive number"),
    (["--per-gpu", "inf"], "--per-gpu must be a positive number"),
    (["--shards", "2", "--spares", "-1"], "--spares must be >= 0"),
    (["--per-gpu", "4", "--spares", "-1"], "--spares must be >= 0"),
    (["--shards", "2", "--gpus-per-worker", "-1"], "--gpus-per-worker"),
    (["--shards", "2", "--gpus-per-worker", "1.5"], "--gpus-per-worker"),
    (["--shards", "2", "--cpus-per-worker", "-2"], "--cpus-per-worker"),
])
def test_bad_numbers_are_exit_2_with_a_message(tmp_path, capsys, args, match):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 5, "v3")
    assert cli(["config", "--cameras", str(reg), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_up_unreachable_cluster_is_exit_1(tmp_path, capsys):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 2, "v1")
    assert cli(["up", "--cameras", str(reg), "--shards", "1", "--address", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "cannot reach the Ray dashboard" in capsys.readouterr().err


def test_cluster_commands_and_pipeline_import_without_ray(tmp_path):
    """`import pipeline` and `vap cluster plan` never import Ray (the single-node product doesn't need it)."""
    reg = tmp_path / "r.yaml"
    write_registry(reg, 6, "v1")
    code = ("import sys; sys.modules['ray'] = None\n"  # any `import ray` now fails
            "import vap_video.pipeline, vap_video.pipeline.runtime, vap_video.pipeline.cluster.shard\n"
            "from vap_video.pipeline.cli import main\n"
            f"rc = main(['cluster', 'plan', '--cameras', {str(reg)!r}, '--per-gpu', '4'])\n"
            "assert 'ray' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
            "sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "shards: 2" in run.stdout


# ---------------------------------------------------------------- reconfigure never loses the shard
def _gauge(w: ShardWorker, name: str) -> float:
    text = __import__("prometheus_client").generate_latest(w.metrics_registry).decode()
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def _ucfg(registry: Path, **kw) -> dict:
    return {"num_shards": 2, "registry": str(registry), "metrics_port": 0, **kw}


def test_reconfigure_keeps_cameras_and_settings_on_data_problems(tmp_path):
    """Serve 2.60 stops a replica whose reconfigure raises (and its replacements): a data problem
    must be reported as vap_shard_config_error, never raised, and what runs must stay."""
    reg = tmp_path / "r.yaml"
    write_registry(reg, 10, "v1")
    w = ShardWorker(FakePipeline, serve_http=False, retry_s=0.1)
    try:
        w.reconfigure(_ucfg(reg, registry_version="v1"), 0)
        p, before = w.pipeline, set(w.owned)
        assert before and _gauge(w, "vap_shard_config_error") == 0.0
        problems = [
            _ucfg(reg, registry_version="v1", settings={"batchh": {"max_batch": 2}}),   # settings typo
            _ucfg(reg, registry_version="v1", num_shards=0),                             # invalid user_config
            _ucfg(tmp_path / "gone.yaml", registry_version="v1", registry_wait_s=0.2),   # fetch fails
        ]
        for bad in problems:
            out = w.reconfigure(bad, 0)
            assert out["error"] and w.config_error == out["error"]
            assert w.pipeline is p and p.ready and set(p.configs) == before and w.owned == before
            assert _gauge(w, "vap_shard_config_error") == 1.0
            assert w.describe()["config_error"] == out["error"]
        assert "batchh" in w.reconfigure(problems[0], 0)["error"]

        # registry version not there yet: kept, then picked up by the worker's own retry
        out = w.reconfigure(_ucfg(reg, registry_version="v2", registry_wait_s=0.2), 0)
        assert "asks for 'v2'" in out["error"] and w.owned == before
        names = write_registry(reg, 11, "v2")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and w.config_error is not None:
            time.sleep(0.05)
        assert w.config_error is None and w.registry.version == "v2"
        assert w.owned == owned(assign(names, 2), 0) and _gauge(w, "vap_shard_config_error") == 0.0
    finally:
        w.close()


def test_first_config_with_unreadable_registry_starts_empty_and_retries(tmp_path):
    reg = tmp_path / "r.yaml"
    w = ShardWorker(FakePipeline, serve_http=False, retry_s=0.1)
    try:
        out = w.reconfigure(_ucfg(reg, registry_wait_s=0.1), 1)
        assert "no such registry file" in out["error"]
        assert w.pipeline is not None and w.pipeline.ready and w.owned == set()
        w.check_health()  # up and visible (config_error=1, owned 0): the alerts say what is wrong
        assert _gauge(w, "vap_shard_config_error") == 1.0
        names = write_registry(reg, 8, "v1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and w.config_error is not None:
            time.sleep(0.05)
        assert w.owned == owned(assign(names, 2), 1) and set(w.pipeline.configs) == w.owned
    finally:
        w.close()


def test_first_config_that_cannot_work_raises(tmp_path):
    reg = tmp_path / "r.yaml"
    write_registry(reg, 4, "v1")
    w = ShardWorker(FakePipeline, serve_http=False, retry_s=0)
    with pytest.raises(ConfigError, match="batchh"):  # nothing to keep: Serve should report it
        w.reconfigure(_ucfg(reg, registry_wait_s=0.1, settings={"batchh": 1}), 0)


def _busy_port_block(n: int) -> tuple[int, list]:
    import socket
    for _ in range(50):
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        base, socks = first.getsockname()[1], [first]
        try:
            for port in range(base + 1, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
        except OSError:
            for s in socks:
                s.close()
            continue
        for s in socks:
            s.listen()
        return base, socks
    raise RuntimeError("no free port block")


def test_busy_metrics_port_is_a_config_error_not_a_crash(tmp_path):
    from vap_video.pipeline.cluster.shard import PORT_TRIES
    reg = tmp_path / "r.yaml"
    write_registry(reg, 6, "v1")
    base, socks = _busy_port_block(PORT_TRIES)
    w = ShardWorker(FakePipeline, retry_s=0.1)
    try:
        out = w.reconfigure(_ucfg(reg, metrics_host="127.0.0.1", metrics_port=base), 0)
        assert "no free port" in out["error"] and w.owned  # cameras run; only /metrics is missing
        assert _gauge(w, "vap_shard_config_error") == 1.0
        socks[3].close()  # a port frees up: the retry binds it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and w.metrics_port is None:
            time.sleep(0.05)
        assert w.metrics_port == base + 3 and w.config_error is None
    finally:
        w.close()
        for s in socks:
            s.close()


def test_refused_camera_on_a_settings_restart_does_not_abort_the_reconfigure(tmp_path):
    class Picky(FakePipeline):
        def add_stream(self, cfg):
            if self.settings.batch.max_batch == 2 and cfg.name == victim:
                raise ConfigError(f"streams.{victim}.analytics: class 'truck' is not in the model")
            super().add_stream(cfg)
    reg = tmp_path / "r.yaml"
    write_registry(reg, 10, "v1")
    w = ShardWorker(Picky, serve_http=False)
    try:
        w.reconfigure(_ucfg(reg), 0)
        mine = set(w.owned)
        victim = sorted(mine)[0]
        out = w.reconfigure(_ucfg(reg, settings={"batch": {"max_batch": 2}}), 0)
        assert "error" not in out and out["failed"] == [victim]
        assert w.pipeline.settings.batch.max_batch == 2
        assert set(w.pipeline.configs) == set(w._streams) == mine - {victim}
        assert w.owned == mine and _gauge(w, "vap_shard_camera_failures") == 1.0
    finally:
        w.close()


def test_pipeline_that_does_not_start_keeps_the_previous_one(tmp_path):
    gpu_lost = threading.Event()

    def factory(settings):
        if settings.batch.max_batch == 3:
            raise ConfigError("model.path: /models/nope.onnx does not exist")
        if gpu_lost.is_set():
            raise RuntimeError("GPU lost")
        return FakePipeline(settings)
    reg = tmp_path / "r.yaml"
    write_registry(reg, 10, "v1")
    FakePipeline.instances.clear()
    w = ShardWorker(factory, serve_http=False)
    try:
        w.reconfigure(_ucfg(reg, settings={"batch": {"max_batch": 5}}), 0)
        mine = set(w.owned)
        out = w.reconfigure(_ucfg(reg, settings={"batch": {"max_batch": 3}}), 0)
        assert "nope.onnx" in out["error"] and "kept the previous settings" in out["error"]
        assert w.pipeline.ready and w.pipeline.settings.batch.max_batch == 5  # a fresh one, old settings
        assert set(w.pipeline.configs) == mine == w.owned
        # neither the new nor the previous settings start (the GPU is gone): nothing runs, and
        # owned says so (0), so the owned-cameras alert fires instead of a shard claiming cameras
        gpu_lost.set()
        with pytest.raises(RuntimeError, match="no pipeline starts"):
            w.reconfigure(_ucfg(reg, settings={"batch": {"max_batch": 3}}), 0)
        assert w.owned == set() and _gauge(w, "vap_owned_cameras") == 0.0
    finally:
        w.close()


def test_registry_fetch_errors_are_retried_within_the_wait(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"

    def publish_later():
        time.sleep(0.4)
        write_registry(reg, 6, "v1")
    threading.Thread(target=publish_later).start()
    out = fake_worker.apply(cfg(reg, registry_version="v1", registry_wait_s=5), 0)
    assert out["registry_version"] == "v1" and fake_worker.owned


def test_rank_only_change_reuses_the_loaded_registry(tmp_path, fake_worker):
    reg = tmp_path / "r.yaml"
    names = write_registry(reg, 10, "v1")
    c = cfg(reg, registry_wait_s=0.1)
    fake_worker.apply(c, 0)
    reg.unlink()  # a fetch now fails: a re-rank must not depend on it
    fake_worker.apply(c, 1)
    assert fake_worker.owned == owned(assign(names, 2), 1) and fake_worker.rank == 1


def test_rank_change_with_shard_placeholder_never_reopens_old_cameras(tmp_path):
    reg = tmp_path / "r.yaml"
    names = write_registry(reg, 12, "v1")
    c = cfg(reg, num_shards=3, settings={"sinks": [{"type": "jsonl", "path": str(tmp_path / "ev-{shard}.jsonl")}]})
    w = ShardWorker(FakePipeline, serve_http=False, replica_id="r1")
    try:
        w.apply(c, 1)
        old_pipeline, old_cams = w.pipeline, set(w.owned)
        w.apply(c, 0)  # Serve re-ranks this replica 1 -> 0
        assert w.pipeline is not old_pipeline  # the sink path changed: a restart is right
        opened = {name for op, name in w.pipeline.log if op == "add"}
        assert opened == owned(assign(names, 3), 0) and not opened & old_cams
    finally:
        w.close()
