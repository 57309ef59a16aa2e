"""`vap cluster status`: who owns what, read from the replicas' heartbeats in Ray's GCS.

Every replica publishes its record each second (`ledger`); this reads them straight from the
GCS (`ray._raylet.GcsClient`: no Ray driver, no port scanning, works wherever the head's Ray
port is reachable) and checks coverage: exactly `num_shards` live shards, each camera of the
registry owned and running on exactly one of them, one config version everywhere, no errors.
Exit 0 when that holds, 1 when not, 2 when no cluster is reachable.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from vap_video.pipeline.cluster.ledger import STALE_S, GcsKV, Ledger

EXIT_OK, EXIT_NOT_EXACT, EXIT_UNREACHABLE = 0, 1, 2
COLUMNS = ("shard", "replica", "node", "pid", "cameras", "fps", "drops", "last error", "config version")


class Unreachable(Exception):
    """No Ray cluster at the address (or none found)."""


def find_address(address: str | None) -> str:
    """The GCS address: as given, else $RAY_ADDRESS, else the cluster started on this machine."""
    if address and address != "auto":
        return address.removeprefix("ray://").removeprefix("http://")
    try:
        from ray._private.services import get_ray_address_from_environment
        found = get_ray_address_from_environment("auto", None)
    except Exception:
        found = None
    if not found:
        raise Unreachable("no Ray cluster found on this machine; pass --address HEAD:6379 (the head's Ray "
                          "port) or set RAY_ADDRESS")
    return found


def connect(address: str, timeout_s: float = 5.0) -> GcsKV:
    """A GCS client; Unreachable (one line) when nothing answers at `address`."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise Unreachable(f"no Ray cluster at {address} ({getattr(exc, 'strerror', None) or exc}); is the head "
                          "running and is this its Ray port (6379 by default)?") from None
    try:
        return GcsKV.connect(address, timeout_s=timeout_s)
    except Exception as exc:
        raise Unreachable(f"{address} answers but is not a Ray GCS ({type(exc).__name__}: {exc})") from None


def gather(ledger: Ledger) -> dict[str, Any]:
    """Rows (one per live replica, sorted by shard) and the coverage verdict with its reasons."""
    records = ledger.replicas()
    live = [r for r in records.values() if r["alive"] and not r.get("leaving")]
    rows = sorted(live, key=lambda r: (r.get("shard") is None, r.get("shard") or 0, r["replica"]))
    problems: list[str] = []
    shards = {r.get("num_shards") for r in live}
    versions = {r.get("config_version") for r in live}
    if not live:
        problems.append("no live replica")
    if len(shards) > 1:
        problems.append(f"replicas disagree on num_shards: {sorted(map(str, shards))}")
    if len(versions) > 1:
        problems.append(f"replicas run different config versions: {sorted(map(str, versions))}")
    num_shards = next(iter(shards)) if len(shards) == 1 else None
    active = [r for r in live if r.get("active")]
    if num_shards is not None and len(active) != num_shards:
        problems.append(f"{len(active)} active shards, num_shards is {num_shards}")
    owners: dict[str, list[Any]] = {}
    for r in live:
        for cam in r.get("owned") or []:
            owners.setdefault(cam, []).append(r.get("shard"))
        running = set(r.get("streams") or {})
        if running != set(r.get("owned") or []):
            problems.append(f"shard {r.get('shard')}: runs {len(running)} cameras, owns {len(r.get('owned') or [])}")
        if r.get("failed"):
            problems.append(f"shard {r.get('shard')}: {len(r['failed'])} cameras failed to start")
        if r.get("config_error"):
            problems.append(f"shard {r.get('shard')}: config not applied")
    twice = sorted(c for c, s in owners.items() if len(s) > 1)
    if twice:
        problems.append(f"{len(twice)} cameras owned twice: {', '.join(twice[:5])}")
    registry = {r.get("registry_cameras") for r in live}
    expected = max((n for n in registry if isinstance(n, int)), default=0)
    if len(owners) != expected:
        problems.append(f"{len(owners)} of {expected} cameras owned")
    stale = sorted(r["replica"] for r in records.values() if not r["alive"])
    return {"exact": not problems, "problems": problems, "num_shards": num_shards, "cameras": expected,
            "replicas": rows, "stale": stale}


def _row(r: dict[str, Any]) -> list[str]:
    error = r.get("last_error") or ""
    return [str(r.get("shard")), str(r["replica"])[:12], str(r.get("node") or r.get("host") or "")[:12],
            str(r.get("pid")), str(len(r.get("owned") or [])), f"{float(r.get('fps') or 0):.1f}",
            str(r.get("drops") or 0), error if len(error) <= 40 else error[:39] + "…",
            str(r.get("config_version"))]


def render(report: dict[str, Any]) -> str:
    """The human table and the verdict line."""
    table = [list(COLUMNS)] + [_row(r) for r in report["replicas"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    if report["stale"]:
        lines.append(f"stale (no heartbeat for a while, ignored): {', '.join(report['stale'])}")
    if report["exact"]:
        lines.append(f"coverage: exact ({report['cameras']} cameras on {report['num_shards']} shards)")
    else:
        lines.append("coverage: NOT exact: " + "; ".join(report["problems"]))
    return "\n".join(lines)


def cmd_status(address: str | None, app: str, as_json: bool, timeout_s: float = 5.0,
               stale_s: float = STALE_S) -> int:
    """`vap cluster status`: print the table (or JSON); exit 0 exact, 1 not exact, 2 unreachable."""
    try:
        kv = connect(find_address(address), timeout_s)
        report = gather(Ledger(kv, app=app, stale_s=stale_s))
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as exc:
        print(f"error: reading the cluster state from the GCS failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not report["replicas"] and not report["stale"]:
        report["problems"] = [f"no replica of application {app!r} has reported; is it deployed (`vap cluster up`)?"]
    print(json.dumps(report, indent=2, default=str) if as_json else render(report))
    return EXIT_OK if report["exact"] else EXIT_NOT_EXACT


__all__ = ["COLUMNS", "Unreachable", "cmd_status", "connect", "find_address", "gather", "render"]
