"""deploy/: alert rules (promtool), Grafana dashboard, compose, Kubernetes manifests, Dockerfiles.

Docker is not available on the build machines, so images are not built here: the Dockerfiles are
linted (non-root user, health check on /healthz) and the compose file is parsed and cross-checked
(services, volumes, mounted files, the vap config it mounts).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from vap_video.pipeline.config import interpolate_env
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.settings import load_settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\b(vap_[a-z0-9_]+)")


def _exposed_names() -> set[str]:
    """Every series name vap can expose (counters, histograms and info expand to their sample names)."""
    names = set()
    for fam in Metrics().registry.collect():
        n = fam.name
        names |= {"counter": {n + "_total", n + "_created"}, "histogram": {n + "_bucket", n + "_sum", n + "_count"},
                  "info": {n + "_info"}}.get(fam.type, {n})
    return names


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; tests/run.sh installs it)")
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests():
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=DEPLOY / "prometheus",
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=DEPLOY / "prometheus",
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"VapStreamDown", "VapStreamStalled", "VapFrameDropRateHigh", "VapLatencyP95High",
            "VapSpoolGrowing", "VapSinkDropping", "VapSinkDeadLetters", "VapSpoolOldEvents"} <= alerts
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())
    tested = {t["alertname"] for group in tests["tests"] for t in group.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    assert alerts <= tested, f"alerts without a promtool test that fires them: {alerts - tested}"
    target_down = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == "VapTargetDown")
    assert 'job="vap"' not in target_down["expr"].replace(" ", "")   # works whatever the scrape job is called
    exposed = _exposed_names()
    for g in rules["groups"]:
        for r in g["rules"]:
            assert set(METRIC.findall(r["expr"])) <= exposed, f"{r['alert']} uses a metric vap does not expose"


def test_prometheus_config_is_valid(tmp_path):
    promtool = _promtool()
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]      # where compose mounts alerts.yml
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    cfg["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_uses_only_real_metrics_and_covers_the_essentials():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "vap.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used <= _exposed_names(), f"unknown metrics in the dashboard: {used - _exposed_names()}"
    for needed in ("vap_stream_fps", "vap_frames_dropped_total", "vap_stream_reconnects_total",
                   "vap_frame_latency_seconds_bucket", "vap_batch_size_sum", "vap_inference_seconds_bucket",
                   "vap_events_total", "vap_spool_events", "vap_spool_dropped_total"):
        assert needed in used, f"dashboard lacks {needed}"
    assert any("histogram_quantile(0.95" in e for e in exprs)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "vap.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[prov["providers"][0]["options"]["path"]] == "./grafana/dashboards"


def test_compose_services_volumes_and_mounted_files():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"vap", "mosquitto", "prometheus", "grafana"} <= set(services)
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    dockerfile = services["vap"]["build"]["dockerfile"]
    default = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", dockerfile)
    assert (DEPLOY / services["vap"]["build"]["context"] / default).is_file()
    cfg_mount = next(v for v in services["vap"]["volumes"] if v.endswith("/etc/vap/vap.yaml:ro"))
    settings = load_settings(DEPLOY / cfg_mount.split(":")[0])
    assert settings.server.host == "0.0.0.0" and settings.server.port == 9108
    mqtt = [s for s in settings.sinks if s.type == "mqtt"]
    assert mqtt and mqtt[0].host == "mosquitto"
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["vap:9108"]
    # safe defaults: every port on loopback unless the user opts in, no default passwords anywhere
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${VAP_PUBLISH_ADDR:-127.0.0.1}:"), f"{name} publishes {port} on all interfaces"
    env = services["vap"]["environment"]
    assert env["VAP_API_TOKEN"].startswith("${VAP_API_TOKEN:?")        # required: vap binds 0.0.0.0 inside
    assert env["VAP_MQTT_PASSWORD"].startswith("${VAP_MQTT_PASSWORD:?")
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    conf = dict(ln.split(None, 1) for ln in (DEPLOY / "mosquitto.conf").read_text().splitlines()
                if ln.strip() and not ln.startswith("#"))
    assert conf["allow_anonymous"] == "false" and conf["password_file"] == "/mosquitto/data/passwd"
    assert "mosquitto_passwd -b -c /mosquitto/data/passwd" in " ".join(services["mosquitto"]["command"])
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_run_as_non_root_with_a_healthcheck(name):
    text = (DEPLOY / name).read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    health = [ln for ln in lines if ln.upper().startswith("HEALTHCHECK")]
    assert len(health) == 1 and "/healthz" in health[0]
    assert any(ln.startswith("EXPOSE 9108") for ln in lines)
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"{name} copies missing {src}"
    if name == "Dockerfile.gpu":
        assert re.search(r"^FROM nvcr.io/nvidia/tensorrt:", text, re.M) or "nvcr.io/nvidia/tensorrt" in text


def _manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "k8s").glob("*.yaml"))
            if p.name != "kustomization.yaml"}


def test_k8s_manifests_validate_against_the_kubernetes_schema(monkeypatch):
    kv = pytest.importorskip("kubernetes_validate")
    docs = _manifests()
    kinds = {d["kind"] for d in docs.values()}
    assert {"ConfigMap", "StatefulSet", "Service", "NetworkPolicy"} <= kinds
    assert "Secret" not in kinds       # generated by kustomize from a git-ignored file, never committed
    for doc in docs.values():
        kv.validate(doc, "1.30", strict=True)
    bad = copy.deepcopy(docs["statefulset.yaml"])
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kv.ValidationError):                  # the validator does catch a typo
        kv.validate(bad, "1.30", strict=True)
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(docs)
    (gen,) = kust["secretGenerator"]
    assert gen["envs"] == ["credentials.env"]
    assert "credentials.env" in (DEPLOY / "k8s" / ".gitignore").read_text().split()
    example = dict(ln.split("=", 1) for ln in (DEPLOY / "k8s" / "credentials.env.example").read_text().splitlines()
                   if ln.strip() and not ln.startswith("#"))
    assert "VAP_API_TOKEN" in example and all("change-me" != v for v in example.values())

    sts = docs["statefulset.yaml"]
    pod = sts["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9108"
    assert c["envFrom"][0]["secretRef"]["name"] == gen["name"]   # kustomize adds the hash suffix to both
    policy = docs["networkpolicy.yaml"]["spec"]
    assert policy["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"] and policy["ingress"][0]["ports"] == [{"port": 9108, "protocol": "TCP"}]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/vap"
    assert docs["service.yaml"]["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    # Pods are annotated for scraping; the Service must not be too, or every pod is scraped twice.
    assert not any(k.startswith("prometheus.io/") for k in
                   (docs["service.yaml"]["metadata"].get("annotations") or {}))

    # The ConfigMap's vap.yaml is a valid vap config once the Secret's variables are in the environment.
    for k, v in example.items():
        monkeypatch.setenv(k, v)
    raw = yaml.safe_load(docs["configmap.yaml"]["data"]["vap.yaml"])
    settings = parse_settings(interpolate_env(raw))
    assert settings.server.host == "0.0.0.0"
    for s in settings.sinks:
        if s.spool.enabled:
            assert str(s.spool.dir).startswith("/var/lib/vap/"), "spools must live on the persistent volume"

    # The image the StatefulSet runs must provide the execution providers its config asks for.
    image = c["image"]
    dockerfile = (DEPLOY / ("Dockerfile.gpu" if image.endswith(":gpu") else "Dockerfile.cpu")).read_text()
    installs = " ".join(ln for ln in dockerfile.replace("\\\n", " ").splitlines() if not ln.lstrip().startswith("#"))
    providers = list(raw.get("model", {}).get("onnxruntime", {}).get("providers", []))
    backend = raw.get("model", {}).get("backend", "onnxruntime")
    if backend == "onnxruntime" and any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
                                        for p in providers):
        assert "onnxruntime-gpu" in installs and "uninstall -y onnxruntime" in installs, \
            f"the config asks ONNX Runtime for {providers} but {image} installs the CPU-only onnxruntime"
    if "nvidia.com/gpu" in c["resources"].get("requests", {}):
        assert image.endswith(":gpu"), "a pod that requests a GPU must run the GPU image"


def test_compose_broker_config_refuses_anonymous_clients_on_a_real_mosquitto(tmp_path):
    """deploy/mosquitto.conf as compose runs it (its password file written by mosquitto_passwd from
    the environment), on Debian's mosquitto: anonymous refused, the vap user accepted."""
    import getpass

    paho = pytest.importorskip("paho.mqtt.client")
    from tests.real_servers import Server, free_port, need

    binary, passwd_tool = need("mosquitto"), need("mosquitto_passwd")
    port = free_port()
    passwd = tmp_path / "passwd"
    subprocess.run([passwd_tool, "-b", "-c", str(passwd), "vap", "Br0kerPass"], check=True, timeout=30)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    # the same file, with the container's paths and port mapped onto this machine
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/data/passwd", str(passwd)).replace("/mosquitto/data/", f"{tmp_path}/")
    (tmp_path / "m.conf").write_text(conf + f"user {getpass.getuser()}\n")
    server = Server([binary, "-c", str(tmp_path / "m.conf")], port, tmp_path).start()
    try:
        def connect(user: str | None, password: str | None) -> int:
            client = paho.Client(paho.CallbackAPIVersion.VERSION2)
            if user:
                client.username_pw_set(user, password)
            try:
                client.connect("127.0.0.1", port, keepalive=5)
            except OSError:
                return -1
            codes: list[int] = []
            client.on_connect = lambda c, u, f, rc, p=None: codes.append(int(rc.value if hasattr(rc, "value") else rc))
            deadline = time.time() + 10
            while not codes and time.time() < deadline:
                client.loop(0.1)
            client.disconnect()
            return codes[0] if codes else -2

        assert connect(None, None) != 0                  # anonymous: refused
        assert connect("vap", "wrong-password") != 0
        assert connect("vap", "Br0kerPass") == 0
    finally:
        server.stop()
