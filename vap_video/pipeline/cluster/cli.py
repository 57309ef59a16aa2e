"""`vap cluster plan | config | up | status`: size a Ray deployment, deploy it, watch it.

- `plan` reads the registry and prints shards (GPU workers doing work), spares, the per-shard
  loads the assignment gives, and the Helm values for `deploy/helm/vap-cluster`.
- `config` prints the Ray Serve config file (for `serve deploy`, or KubeRay's `serveConfigV2`).
- `up` PUTs that config to a running Ray cluster's dashboard (the Serve REST API, what `serve
  deploy` does). That PUT replaces the cluster's whole Serve config, so `up` refuses when other
  Serve applications run there (unless `--replace-all`). A config-file deploy updates `user_config` in
  place, so adding a camera or a shard reconfigures running replicas; Python's `serve.run` would restart
  every replica on any change.
- `status` prints one row per replica from their heartbeats in Ray's GCS (`status.py`) and exits
  non-zero when coverage is not exact.

`plan`, `config` and `up` do not import Ray: they compute, print and talk HTTP. `status` uses
Ray's GCS client only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vap_video.pipeline.cluster.placement import DEFAULT_SLACK, assign, loads, shard_cap
from vap_video.pipeline.cluster.registry import Registry, load_registry
from vap_video.pipeline.cluster.cluster_config import ClusterConfig, render_settings
from vap_video.pipeline.config import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
APP_NAME = "vap"
DEPLOYMENT = "StreamWorker"        # = worker.DEPLOYMENT_NAME (not imported: that imports Ray)
IMPORT_PATH = "vap_video.pipeline.cluster.worker:app"
MIN_SLACK = 0.1
PROXY_LOCATIONS = ("Disabled", "HeadOnly", "EveryNode")


class DeployError(Exception):
    """The Ray cluster is unreachable or refused the config (exit 1, not a usage error)."""


def plan_shards(total_load: float, per_gpu: float, min_slack: float = MIN_SLACK,
                spares: int | None = None) -> dict[str, Any]:
    """Shards so that each GPU's cap is `per_gpu` with at least `min_slack` headroom over the mean.

    Headroom matters because the bounded-load hash balances only up to its cap: with none, every
    shard sits at its cap and each added camera pushes others around. Spares default to 10% of
    the shards, at least one: a replica lost with its node restarts on a spare at once; without
    one it waits for a new node.
    """
    if not (per_gpu > 0 and math.isfinite(per_gpu)):
        raise ConfigError(f"--per-gpu must be a positive number (cameras one GPU handles), got {per_gpu}")
    if spares is not None and spares < 0:
        raise ConfigError(f"--spares must be >= 0, got {spares}")
    shards = max(1, math.ceil(total_load * (1 + min_slack) / per_gpu - 1e-9))
    spares = max(1, math.ceil(0.1 * shards)) if spares is None else spares
    return {"shards": shards, "spares": spares, "capacity": float(per_gpu),
            "mean_load": total_load / shards if shards else 0.0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vap cluster", description="Scale out on Ray Serve (KubeRay on Kubernetes)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--cameras", required=True, metavar="REGISTRY",
                        help="camera registry YAML (path or http(s):// URL) with version and cameras")
        sp.add_argument("--per-gpu", type=float, default=None, metavar="N",
                        help="cameras one GPU worker handles (1080p25 equivalents with --weighted)")
        sp.add_argument("--shards", type=int, default=None, help="shard count (default: from --per-gpu)")
        sp.add_argument("--spares", type=int, default=None, help="spare GPU workers (default: 10%%, at least 1)")
        sp.add_argument("--weighted", action="store_true", help="balance by width x height x fps")

    sp = sub.add_parser("plan", help="print shards, spares, per-shard loads and Helm values")
    common(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    for name, help_text in (("config", "print the Ray Serve config file"),
                            ("up", "deploy to a running Ray cluster through the Serve REST API")):
        sp = sub.add_parser(name, help=help_text)
        common(sp)
        sp.add_argument("--registry-location", default=None, metavar="PATH_OR_URL",
                        help="where the workers read the registry (default: --cameras, made absolute)")
        sp.add_argument("--settings", type=Path, default=None,
                        help="worker deployment YAML without streams (model, batch, sinks, ...); "
                             "'{replica}' in a string becomes the replica's id, '{shard}' the shard number "
                             "(a re-rank then restarts the pipeline); validated here as the workers will")
        sp.add_argument("--gpus-per-worker", type=float, default=1.0, help="0 for CPU-only workers")
        sp.add_argument("--cpus-per-worker", type=float, default=1.0)
        sp.add_argument("--metrics-port", type=int, default=9108)
        sp.add_argument("--stall-s", type=float, default=30.0)
        sp.add_argument("--app", default=APP_NAME, help="Serve application name")
        sp.add_argument("--proxy-location", choices=PROXY_LOCATIONS, default="Disabled",
                        help="Serve HTTP proxies (default Disabled: the workers take no HTTP requests through "
                             "Serve, and a proxy costs ~130 MiB per node)")
        if name == "up":
            sp.add_argument("--address", default="http://127.0.0.1:8265",
                            help="Ray dashboard address (the Serve REST API)")
            sp.add_argument("--timeout", type=float, default=30.0)
            sp.add_argument("--replace-all", action="store_true",
                            help="deploy even when the cluster runs other Serve applications: the Serve "
                                 "REST API replaces the whole config, so they are deleted")
    sp = sub.add_parser("status", help="who owns what (from the replicas' heartbeats in Ray's GCS); exit 1 "
                                       "unless coverage is exact")
    sp.add_argument("--address", default=None, metavar="HOST:PORT",
                    help="the head's Ray (GCS) address, default $RAY_ADDRESS or the cluster on this machine")
    sp.add_argument("--app", default=APP_NAME, help="Serve application name")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds per GCS request")
    return p


def cli(argv: list[str]) -> int:
    """Entry point of `vap cluster`; returns the exit code (0 ok, 1 deploy failed, 2 bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        if args.cmd == "plan":
            return cmd_plan(args)
        if args.cmd == "status":
            from vap_video.pipeline.cluster.status import cmd_status
            return cmd_status(args.address, args.app, args.json, args.timeout)
        cfg = serve_config_from_args(args)
        if args.cmd == "config":
            print(yaml.safe_dump(cfg, sort_keys=False), end="")
            return EXIT_OK
        return cmd_up(cfg, args.address, args.timeout, replace_all=args.replace_all)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL


def _check_numbers(args: argparse.Namespace) -> None:
    """Usage errors argparse lets through (nan, inf, negatives): exit 2 with the flag named."""
    if args.per_gpu is not None and not (args.per_gpu > 0 and math.isfinite(args.per_gpu)):
        raise ConfigError(f"--per-gpu must be a positive number (cameras one GPU handles), got {args.per_gpu}")
    if args.spares is not None and args.spares < 0:
        raise ConfigError(f"--spares must be >= 0, got {args.spares}")
    gpus = getattr(args, "gpus_per_worker", None)
    if gpus is not None and not (gpus >= 0 and math.isfinite(gpus) and (gpus <= 1 or gpus == int(gpus))):
        raise ConfigError(f"--gpus-per-worker must be 0 (CPU-only), a fraction of one GPU, or a whole number of "
                          f"GPUs, got {gpus}")
    cpus = getattr(args, "cpus_per_worker", None)
    if cpus is not None and not (cpus >= 0 and math.isfinite(cpus)):
        raise ConfigError(f"--cpus-per-worker must be >= 0, got {cpus}")


def _shards_from_args(args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    _check_numbers(args)
    total = sum(registry.weights(args.weighted).values())
    if args.shards is not None:
        if args.shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {args.shards}")
        spares = max(1, math.ceil(0.1 * args.shards)) if args.spares is None else args.spares
        return {"shards": args.shards, "spares": spares, "capacity": args.per_gpu,
                "mean_load": total / args.shards}
    if args.per_gpu is None:
        raise ConfigError("give --per-gpu N (cameras one GPU handles) or --shards N")
    return plan_shards(total, args.per_gpu, spares=args.spares)


def cmd_plan(args: argparse.Namespace) -> int:
    registry = load_registry(args.cameras)
    plan = _shards_from_args(args, registry)
    weights = registry.weights(args.weighted)
    table = assign(weights, plan["shards"], DEFAULT_SLACK, plan["capacity"])
    per_shard = loads(table, plan["shards"], weights)
    counts = loads(table, plan["shards"])
    cap = shard_cap(sum(weights.values()), plan["shards"], DEFAULT_SLACK, plan["capacity"]) if weights else 0.0
    values = helm_values(plan, registry, args.weighted)
    if args.json:
        print(json.dumps({**plan, "cameras": len(registry.cameras), "registry_version": registry.version,
                          "cap": cap, "loads": per_shard, "counts": counts, "helm_values": values}, indent=2))
        return EXIT_OK
    unit = "1080p25-equivalents" if args.weighted else "cameras"
    print(f"registry {registry.version}: {len(registry.cameras)} cameras, total load "
          f"{sum(weights.values()):.1f} {unit}")
    print(f"shards: {plan['shards']} (GPU workers doing work), spares: {plan['spares']} "
          f"(idle GPU workers that take over a lost one), worker pods: {plan['shards'] + plan['spares']}")
    print(f"cap per shard: {cap:g} {unit}")
    for s in range(plan["shards"]):
        print(f"  shard {s}: {counts[s]:.0f} cameras, load {per_shard[s]:.1f}")
    if plan["capacity"] is not None and per_shard and max(per_shard) > plan["capacity"] + 1e-9:
        print(f"warning: a shard exceeds --per-gpu {plan['capacity']:g}; add shards", file=sys.stderr)
    print("\n# Helm values (deploy/helm/vap-cluster):")
    print(yaml.safe_dump(values, sort_keys=False), end="")
    return EXIT_OK


def helm_values(plan: dict[str, Any], registry: Registry, weighted: bool) -> dict[str, Any]:
    """The values a `helm install -f` needs for this plan (registry goes in separately)."""
    return {"shards": plan["shards"], "spares": plan["spares"], "capacity": plan["capacity"],
            "weighted": weighted, "registry": {"version": registry.version}}


def serve_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    registry = load_registry(args.cameras)
    plan = _shards_from_args(args, registry)
    location = args.registry_location
    if location is None:
        location = args.cameras if args.cameras.startswith(("http://", "https://")) else \
            str(Path(args.cameras).resolve())
    settings: dict[str, Any] = {}
    if args.settings is not None:
        try:
            settings = yaml.safe_load(args.settings.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{args.settings}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{args.settings}: not valid YAML ({exc})") from None
        if not isinstance(settings, dict):
            raise ConfigError(f"{args.settings}: must be a mapping (a deployment YAML without streams)")
    user_config = {"num_shards": plan["shards"], "registry": location, "registry_version": registry.version,
                   "weighted": bool(args.weighted), "settings": settings, "metrics_port": args.metrics_port,
                   "stall_s": args.stall_s}
    if plan["capacity"] is not None:
        user_config["capacity"] = plan["capacity"]
    validate_settings(ClusterConfig.parse(user_config), str(args.settings or "--settings"))
    return serve_config(user_config, num_replicas=plan["shards"], gpus=args.gpus_per_worker,
                        cpus=args.cpus_per_worker, app=args.app, proxy_location=args.proxy_location)


def validate_settings(cfg: ClusterConfig, source: str) -> None:
    """Fail here, not in every replica: render the worker settings exactly as a replica does.

    `${VAR}` that are unset on this machine but set on the workers (a sink password from a
    Secret) get a placeholder for the check, with a note on stderr; only the shape is checked.
    """
    missing = sorted({m.group(1) for text in _strings(cfg.settings) for m in _ENV_REF.finditer(text)
                      if m.group(2) is None and m.group(1) not in os.environ})
    for name in missing:
        os.environ[name] = "1"
    try:
        render_settings(cfg, 0, "check")
    except ConfigError as exc:
        raise ConfigError(f"{source}: the workers would refuse these settings: {exc}") from None
    finally:
        for name in missing:
            os.environ.pop(name, None)
    if missing:
        print(f"note: {', '.join('${' + n + '}' for n in missing)} not set here; the workers must set "
              f"{'them' if len(missing) > 1 else 'it'}", file=sys.stderr)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def serve_config(user_config: dict[str, Any], num_replicas: int, gpus: float = 1.0, cpus: float = 1.0,
                 app: str = APP_NAME, proxy_location: str = "Disabled") -> dict[str, Any]:
    """A Ray Serve config file (ServeDeploySchema) with one StreamWorker replica per shard.

    No HTTP proxies by default: the application has no route (frames never go through Serve),
    and Serve's default starts one proxy actor per node (~130 MiB RSS each, measured).
    """
    return {
        "proxy_location": proxy_location,
        "applications": [{
            "name": app,
            "import_path": IMPORT_PATH,
            "route_prefix": None,
            "deployments": [{
                "name": DEPLOYMENT,
                "num_replicas": num_replicas,
                "ray_actor_options": {"num_gpus": gpus, "num_cpus": cpus},
                "health_check_period_s": 10,
                "health_check_timeout_s": 30,
                "graceful_shutdown_timeout_s": 20,
                "user_config": user_config,
            }],
        }],
    }


def deploy(config: dict[str, Any], address: str, timeout_s: float = 30.0) -> None:
    """PUT a Serve config to the dashboard's REST API (declarative: Serve diffs it against what runs).

    Raises DeployError when the cluster is unreachable or refuses the config.
    """
    url = address.rstrip("/") + "/api/serve/applications/"
    req = urllib.request.Request(url, data=json.dumps(config).encode(), method="PUT",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")[:2000]
        raise DeployError(f"{url}: the cluster refused the config (HTTP {exc.code}): {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeployError(f"{url}: cannot reach the Ray dashboard ({getattr(exc, 'reason', exc)}); is the "
                          "cluster running and --address right (default port 8265)?") from None


def other_applications(address: str, app: str, timeout_s: float = 30.0) -> list[str]:
    """Serve applications other than `app` running on the cluster (GET /api/serve/applications/)."""
    url = address.rstrip("/") + "/api/serve/applications/"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            details = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise DeployError(f"{url}: cannot list the running Serve applications (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeployError(f"{url}: cannot reach the Ray dashboard ({getattr(exc, 'reason', exc)}); is the "
                          "cluster running and --address right (default port 8265)?") from None
    except ValueError:
        raise DeployError(f"{url}: the answer is not JSON; is --address the Ray dashboard?") from None
    apps = details.get("applications") if isinstance(details, dict) else None
    return sorted(name for name in (apps or {}) if name != app)


def cmd_up(config: dict[str, Any], address: str, timeout_s: float, replace_all: bool = False) -> int:
    """Deploy; refuses (exit 2) when other Serve applications run, since a PUT replaces them all."""
    app = config["applications"][0]["name"]
    others = other_applications(address, app, timeout_s)
    if others and not replace_all:
        raise ConfigError(f"the cluster runs other Serve applications ({', '.join(others)}); the Serve REST API "
                          "replaces the whole config, so deploying would delete them. Put vap's application "
                          "into your Serve config file (`vap cluster config`) and `serve deploy` that, or pass "
                          "--replace-all to delete them")
    if others:
        print(f"warning: --replace-all: deleting Serve applications {', '.join(others)}", file=sys.stderr)
    deploy(config, address, timeout_s)
    d = config["applications"][0]["deployments"][0]
    print(f"deployed {config['applications'][0]['name']}: {d['num_replicas']} shards, registry "
          f"{d['user_config']['registry_version']}; watch with `serve status --address {address}`")
    return EXIT_OK


__all__ = ["DeployError", "cli", "deploy", "helm_values", "other_applications", "plan_shards", "serve_config",
           "validate_settings"]
