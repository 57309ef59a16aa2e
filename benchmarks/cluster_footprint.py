"""Ray's own footprint under vap's cluster deployment: RSS and CPU of every process of a local
multi-node cluster (head + 3 nodes with a logical GPU), idle and with 2 shards deployed with no
cameras, Serve HTTP proxies off (vap's default) and on (Serve's default, EveryNode).

    PYTHONPATH=$PWD nice python benchmarks/cluster_footprint.py [--idle-s 20]

Linux only (reads /proc). RSS counts shared pages once per process, as `ps` does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs() -> dict[int, tuple[int, str, float, int]]:
    """pid -> (ppid, name, cpu seconds, rss bytes) for every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            f = stat[stat.rindex(")") + 2:].split()
            out[int(d.name)] = (int(f[1]), name, (int(f[11]) + int(f[12])) / TICK, int(f[21]) * PAGE)
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> dict[int, tuple[int, str, float, int]]:
    procs = _procs()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, *_) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out[k] = procs[k]
            todo.append(k)
    return out


def sample(idle_s: float) -> dict[str, float]:
    """Total RSS (MiB) and CPU (cores) of the cluster's processes over `idle_s`."""
    a = descendants(os.getpid())
    time.sleep(idle_s)
    b = descendants(os.getpid())
    cpu = sum(b[p][2] - a[p][2] for p in b if p in a)
    return {"processes": len(b), "rss_mib": round(sum(v[3] for v in b.values()) / 2**20),
            "cores": round(cpu / idle_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle-s", type=float, default=20.0)
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from vap_video.pipeline.cluster.cli import cli

    tmp = Path(tempfile.mkdtemp(prefix="vap-footprint-"))
    reg = tmp / "registry.yaml"
    reg.write_text(yaml.safe_dump({"version": "empty", "cameras": []}))
    settings = tmp / "worker.yaml"
    settings.write_text(yaml.safe_dump({"model": {"onnxruntime": {"intra_op_threads": 1}}}))
    port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "include_dashboard": True, "dashboard_port": port,
        "object_store_memory": 80 * 2**20})
    for _ in range(3):
        cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 2**20,
                         dashboard_agent_listen_port=_free_port())
    ray.init(address=cluster.address, logging_level="error", log_to_driver=False)
    results: dict[str, dict[str, float]] = {}
    try:
        time.sleep(5)
        results["ray only (head + 3 nodes, no app)"] = sample(args.idle_s)
        for proxy in ("Disabled", "EveryNode"):
            rc = cli(["up", "--cameras", str(reg), "--shards", "2", "--spares", "1", "--settings", str(settings),
                      "--gpus-per-worker", "1", "--cpus-per-worker", "0", "--metrics-port", "0",
                      "--proxy-location", proxy, "--address", f"http://127.0.0.1:{port}"])
            if rc != 0:
                return rc
            time.sleep(20)  # replicas up, model loaded
            results[f"2 idle shards, proxy_location {proxy}"] = sample(args.idle_s)
            from ray import serve
            serve.shutdown()
            time.sleep(5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"load": os.getloadavg(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
