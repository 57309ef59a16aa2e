"""The Helm chart deploy/helm/vap-cluster: rendered offline, then every manifest validated.

Rendering uses Helm's own Go template engine through `helm-python-sdk` (a wheel that bundles
libhelm; no helm binary exists in Debian or as a plain PyPI binary). Validation:
- core kinds (the ConfigMap, and the head/worker pod templates as Pods) with kubernetes-validate;
- the RayService (a CRD) structurally, plus its serveConfigV2 against Ray Serve's own schema and
  its user_config against ClusterConfig, and the registry ConfigMap against the registry model;
- the PodMonitor against the worker pods it must select;
- the PrometheusRule's rules with `promtool check rules` and `promtool test rules` (the alerts
  fire when a shard is missing for more than 60 s, when the owned total is off for 60 s, when a
  shard owning cameras never processed a frame, on a config error and on refused cameras).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vap_video.pipeline.cluster.registry import parse_registry
from vap_video.pipeline.cluster.shard import ClusterConfig

helm = pytest.importorskip("helm_python", reason="renders the chart: pip install helm-python-sdk")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "vap-cluster"
K8S = "1.30"
CAMERAS = [{"name": "gate-01", "url": "rtsp://u:${CAM_PASS}@10.0.0.1/s", "width": 1920, "height": 1080, "fps": 25},
           {"name": "dock-02", "url": "rtsp://10.0.0.2/s"}]


def render(values: dict) -> dict[str, dict]:
    out = helm.chart.Chart.load(str(CHART)).render(values, name="site", namespace="vision", is_install=True)
    docs = {}
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def k8s_valid(obj: dict) -> None:
    try:
        kv.validate(obj, K8S, strict=True)
    except kv.ValidationError as exc:  # the library's message embeds the whole schema; keep the point
        raise AssertionError(f"{obj['kind']} {obj['metadata'].get('name')}: {exc.message} at "
                             f"{list(exc.path)}") from None


def as_pod(template: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template.get("metadata", {})},
            "spec": template["spec"]}


@pytest.fixture(scope="module")
def docs():
    return render({"registry": {"version": "7", "cameras": CAMERAS}, "shards": 3, "spares": 2, "capacity": 40})


def test_renders_expected_kinds(docs):
    assert set(docs) == {"RayService", "ConfigMap", "PodMonitor", "PrometheusRule", "NetworkPolicy"}


def test_pods_hardened_and_network_policy(docs):
    """Non-root, read-only root, no capabilities; only the operator reaches the dashboard; GCS Redis
    needs a password (the chart refuses to render without one while fault tolerance is on)."""
    cluster = docs["RayService"]["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for t in templates:
        assert t["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in t["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}   # Ray's scratch on an emptyDir
    policy = docs["NetworkPolicy"]
    k8s_valid(policy)
    labels = templates[0]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    dashboard = [r for r in policy["spec"]["ingress"] if {"port": 8265, "protocol": "TCP"} in r.get("ports", [])]
    assert len(dashboard) == 1 and dashboard[0]["from"][0]["namespaceSelector"]["matchLabels"] == \
        {"kubernetes.io/metadata.name": "kuberay-system"}
    redis = cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert redis == {"name": "vap-gcs-redis", "key": "password"}
    with pytest.raises(Exception, match="redisPasswordSecret"):
        render({"registry": {"version": "1", "cameras": CAMERAS},
                "gcsFaultTolerance": {"redisPasswordSecret": {"name": ""}}})


def test_lint_has_no_errors():
    result = helm.chart.lint(str(CHART), {"registry": {"version": "1", "cameras": CAMERAS}}, strict=True)
    assert result["errors"] == []
    assert not [m for m in result["messages"] if m["severity"] >= 3]  # 3 = error


def test_core_kinds_validate(docs):
    k8s_valid(docs["ConfigMap"])
    cluster = docs["RayService"]["spec"]["rayClusterConfig"]
    k8s_valid(as_pod(cluster["headGroupSpec"]["template"], "head"))
    for group in cluster["workerGroupSpecs"]:
        k8s_valid(as_pod(group["template"], group["groupName"]))


def test_rayservice_structure_and_serve_config(docs, monkeypatch):
    rs = docs["RayService"]
    assert rs["apiVersion"] == "ray.io/v1"
    spec = rs["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"]
    # head does no work; GCS survives a head restart through Redis
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3 + 2  # shards + spares
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert group["rayStartParams"]["num-gpus"] == "1"
    assert worker["livenessProbe"] and worker["readinessProbe"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["livenessProbe"] and head["readinessProbe"]

    serve_cfg = yaml.safe_load(spec["serveConfigV2"])
    from ray.serve.schema import ServeDeploySchema  # the schema Serve's REST API validates with
    ServeDeploySchema.model_validate(serve_cfg)
    assert serve_cfg["proxy_location"] == "Disabled"   # no HTTP proxy actor per node unless asked
    (app,) = serve_cfg["applications"]
    assert app["import_path"] == "vap_video.pipeline.cluster.worker:app"
    (dep,) = app["deployments"]
    assert dep["name"] == "StreamWorker" and dep["num_replicas"] == 3
    assert dep["ray_actor_options"]["num_gpus"] == 1
    uc = ClusterConfig.parse(dep["user_config"])
    assert uc.num_shards == 3 and uc.capacity == 40 and uc.registry_version == "7"
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports["vap-metrics"] == uc.metrics_port

    # the workers read the registry from the mounted ConfigMap, and it is the version asked for
    cm = docs["ConfigMap"]
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "registry")
    assert uc.registry == f"{mount['mountPath']}/registry.yaml"
    vol = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "registry")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    monkeypatch.setenv("CAM_PASS", "x")  # the registry interpolates ${CAM_PASS} on the worker
    registry = parse_registry(yaml.safe_load(cm["data"]["registry.yaml"]), "configmap")
    assert registry.version == uc.registry_version and registry.names() == ["gate-01", "dock-02"]


def test_model_and_event_volumes_mounted_by_values(docs):
    """The model (read-only) and the event/spool folder are volumes from values: the root file
    system is read-only, so without the events volume the JSONL sink could not write."""
    group = docs["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    spec = group["template"]["spec"]
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    uc = ClusterConfig.parse(yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])
                             ["applications"][0]["deployments"][0]["user_config"])
    assert mounts["model"]["readOnly"] is True
    assert uc.settings["model"]["path"].startswith(mounts["model"]["mountPath"] + "/")
    assert vols["model"]["persistentVolumeClaim"]["claimName"] == "vap-models"
    assert uc.settings["sinks"][0]["path"].startswith(mounts["events"]["mountPath"] + "/")
    assert "emptyDir" in vols["events"]
    # a model baked into the image: no model volume; events on a claim
    other = render({"registry": {"version": "1", "cameras": CAMERAS}, "model": {"claimName": ""},
                    "events": {"claimName": "vap-events"}})
    spec = other["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "model" not in {v["name"] for v in spec["volumes"]}
    assert "model" not in {m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert next(v for v in spec["volumes"] if v["name"] == "events") == \
        {"name": "events", "persistentVolumeClaim": {"claimName": "vap-events"}}
    k8s_valid(as_pod(other["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"], "w"))


def test_podmonitor_selects_worker_pods_and_port(docs):
    pm = docs["PodMonitor"]
    group = docs["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    labels = group["template"]["metadata"]["labels"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    head_labels = docs["RayService"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert not pm["spec"]["selector"]["matchLabels"].items() <= head_labels.items()
    ports = {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= ports


def test_registry_url_instead_of_configmap():
    docs = render({"registry": {"version": "3", "url": "https://cmdb.example/cameras.yaml"}})
    assert "ConfigMap" not in docs
    serve_cfg = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])
    uc = serve_cfg["applications"][0]["deployments"][0]["user_config"]
    assert uc["registry"] == "https://cmdb.example/cameras.yaml" and uc["registry_version"] == "3"


def test_missing_registry_is_a_clear_render_error():
    with pytest.raises(helm.HelmError, match="registry.url or list registry.cameras"):
        render({"registry": {"version": "1"}})


def test_cpu_only_workers_ask_no_gpu_and_fit_one_replica_per_pod():
    docs = render({"registry": {"version": "1", "cameras": CAMERAS}, "worker": {"gpus": 0, "cpusPerReplica": 6}})
    group = docs["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert "nvidia.com/gpu" not in group["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    dep = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]
    assert dep["ray_actor_options"] == {"num_gpus": 0, "num_cpus": 6}
    # the pod offers exactly one replica's CPUs to Ray, so a spare pod really stays free
    assert group["rayStartParams"]["num-cpus"] == "6" and "num-gpus" not in group["rayStartParams"]


@pytest.mark.parametrize("worker,match", [
    ({"gpus": 0.5}, "worker.gpus must be a whole number"),
    ({"gpus": -1}, "worker.gpus must be a whole number"),
    ({"gpus": 0, "cpusPerReplica": 1.5}, "cpusPerReplica must be a whole number"),
])
def test_worker_resources_that_ray_cannot_place_fail_the_render(worker, match):
    with pytest.raises(helm.HelmError, match=match):
        render({"registry": {"version": "1", "cameras": CAMERAS}, "worker": worker})


def test_numeric_registry_version_fails_the_render(monkeypatch):
    """A number in values becomes a float in Helm: 20261122 would render as '2.0261122e+07'."""
    with pytest.raises(helm.HelmError, match="registry.version must be a quoted string"):
        render({"registry": {"version": 20261122, "cameras": CAMERAS}})
    docs = render({"registry": {"version": "20261122", "cameras": CAMERAS}})
    monkeypatch.setenv("CAM_PASS", "x")
    uc = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]["user_config"]
    assert uc["registry_version"] == "20261122"
    assert parse_registry(yaml.safe_load(docs["ConfigMap"]["data"]["registry.yaml"]), "cm").version == "20261122"


def test_redis_namespace_is_per_raycluster_unless_set(docs):
    """A fixed externalStorageNamespace would make the old and new RayCluster of an upgrade share GCS
    state in Redis; left out, KubeRay gives each RayCluster its own."""
    gcs = docs["RayService"]["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert "externalStorageNamespace" not in gcs
    docs = render({"registry": {"version": "1", "cameras": CAMERAS},
                   "gcsFaultTolerance": {"externalStorageNamespace": "pinned"}})
    assert docs["RayService"]["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"][
        "externalStorageNamespace"] == "pinned"


def test_default_worker_settings_do_not_change_with_the_rank():
    """The chart's default settings use {replica}, not {shard}: a replica that renders its rank
    before it holds its slot must not restart its pipeline when it gets the slot."""
    docs = render({"registry": {"version": "1", "cameras": CAMERAS}})
    dep = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]
    from vap_video.pipeline.cluster.shard import render_settings
    uc = ClusterConfig.parse(dep["user_config"])
    assert render_settings(uc, 0, "r1") == render_settings(uc, 1, "r1")
    assert render_settings(uc, 0, "r1") != render_settings(uc, 0, "r2")  # one event file per replica


PROMTOOL_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 15s
tests:
  # shard 1 of 2 disappears at minute 2; the alert waits 60 s, then fires
  - interval: 15s
    input_series:
      - series: 'vap_cluster_shards{vap_cluster="site-vap-cluster",shard="0"}'
        values: '2x20'
      - series: 'vap_shard_active{vap_cluster="site-vap-cluster",shard="0"}'
        values: '1x20'
      - series: 'vap_shard_active{vap_cluster="site-vap-cluster",shard="1"}'
        values: '1x7 stale'
      - series: 'vap_owned_cameras{vap_cluster="site-vap-cluster",shard="0"}'
        values: '6x20'
      - series: 'vap_owned_cameras{vap_cluster="site-vap-cluster",shard="1"}'
        values: '7x7 stale'
      - series: 'vap_registry_cameras{vap_cluster="site-vap-cluster",shard="0"}'
        values: '13x20'
    alert_rule_test:
      - eval_time: 1m
        alertname: VapShardMissing
        exp_alerts: []
      - eval_time: 2m30s
        alertname: VapShardMissing
        exp_alerts: []
      - eval_time: 3m30s
        alertname: VapShardMissing
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: SHARD_MISSING_ANNOTATIONS
      - eval_time: 1m
        alertname: VapOwnedCamerasMismatch
        exp_alerts: []
      - eval_time: 2m45s
        alertname: VapOwnedCamerasMismatch
        exp_alerts: []
      - eval_time: 3m15s
        alertname: VapOwnedCamerasMismatch
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: MISMATCH_ANNOTATIONS
      - eval_time: 4m45s
        alertname: VapOwnedCamerasMismatch
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: MISMATCH_ANNOTATIONS
  # shard 1 owns cameras but never processed a frame (no frame series at all); its config failed
  # at 1m; shard 0 processes but two of its cameras were refused
  - interval: 15s
    input_series:
      - series: 'vap_owned_cameras{vap_cluster="site-vap-cluster",shard="0"}'
        values: '5x40'
      - series: 'vap_owned_cameras{vap_cluster="site-vap-cluster",shard="1"}'
        values: '4x40'
      - series: 'vap_frames_processed_total{vap_cluster="site-vap-cluster",shard="0",stream="cam-1"}'
        values: '0+10x40'
      - series: 'vap_shard_config_error{vap_cluster="site-vap-cluster",shard="0"}'
        values: '0x40'
      - series: 'vap_shard_config_error{vap_cluster="site-vap-cluster",shard="1"}'
        values: '0x3 1x37'
      - series: 'vap_shard_camera_failures{vap_cluster="site-vap-cluster",shard="0"}'
        values: '2x40'
      - series: 'vap_shard_camera_failures{vap_cluster="site-vap-cluster",shard="1"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 4m
        alertname: VapShardNotProcessing
        exp_alerts: []
      - eval_time: 6m
        alertname: VapShardNotProcessing
        exp_alerts:
          - exp_labels: {severity: warning, shard: "1"}
            exp_annotations: NOT_PROCESSING_ANNOTATIONS
      - eval_time: 2m
        alertname: VapShardConfigError
        exp_alerts: []
      - eval_time: 3m30s
        alertname: VapShardConfigError
        exp_alerts:
          - exp_labels: {severity: critical, shard: "1"}
            exp_annotations: CONFIG_ERROR_ANNOTATIONS
      - eval_time: 4m
        alertname: VapShardCamerasRefused
        exp_alerts: []
      - eval_time: 6m
        alertname: VapShardCamerasRefused
        exp_alerts:
          - exp_labels: {severity: warning, shard: "0"}
            exp_annotations: REFUSED_ANNOTATIONS
"""


def _annotations(rule: dict, shard: str = "", value: str = "") -> str:
    filled = {k: v.replace("{{ $labels.shard }}", shard).replace("{{ $value }}", value)
              for k, v in rule["annotations"].items()}
    return yaml.safe_dump(filled, default_flow_style=True, width=10**6).strip()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_prometheus_rules_check_and_fire(docs, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": docs["PrometheusRule"]["spec"]["groups"]}))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    names = {r["alert"] for g in docs["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    assert {"VapShardMissing", "VapOwnedCamerasMismatch"} <= names
    rule = {r["alert"]: r for g in docs["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    mismatch = dict(rule["VapOwnedCamerasMismatch"]["annotations"])
    mismatch["summary"] = mismatch["summary"].replace("{{ $value }}", "6")  # 13 in the registry, 6 owned
    tests = tmp_path / "tests.yaml"
    tests.write_text(PROMTOOL_TESTS
                     .replace("SHARD_MISSING_ANNOTATIONS", yaml.safe_dump(rule["VapShardMissing"]["annotations"],
                                                                          default_flow_style=True, width=10**6).strip())
                     .replace("MISMATCH_ANNOTATIONS", yaml.safe_dump(mismatch, default_flow_style=True,
                                                                     width=10**6).strip())
                     .replace("NOT_PROCESSING_ANNOTATIONS", _annotations(rule["VapShardNotProcessing"], "1"))
                     .replace("CONFIG_ERROR_ANNOTATIONS", _annotations(rule["VapShardConfigError"], "1"))
                     .replace("REFUSED_ANNOTATIONS", _annotations(rule["VapShardCamerasRefused"], "0", "2")))
    run = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
