"""What the replicas of a cluster must agree on, kept in Ray's GCS key-value store.

Three records, all small, all written with the GCS's atomic "put unless it exists":

- **Slots** (`<app>/slot/<k>/<epoch>`): a replica's stable shard id. Serve's replica rank is
  renumbered on a downscale (3 -> 2 stops rank 0 and makes rank 2 the new 0), which would move
  cameras between processes that both keep running; a slot stays with its replica for life. A
  replica that starts takes over the lowest slot whose holder died (so a replacement after a
  crash gets the dead replica's cameras and nobody else's), else the lowest free one. The
  assignment (`placement.assign`) runs over the slots of the live replicas.
- **Heartbeats** (`<app>/rep/<replica>`): every second, each replica's slot, node, pid, cameras,
  fps, drops, errors, config version and the capture time of the last frame it processed per
  camera. Membership (who is alive) and `vap cluster status` read these; so does a new owner
  after a crash, to measure the gap. A clean stop deletes its record; a dead replica's record is
  deleted by the others after `FORGET_S` (status lists it as stale until then).
- **Owner incarnations** (`<app>/inc/<camera>/<n>`): every time a replica starts owning a camera
  it takes the camera's next number. Track ids carry it (`cam-01:3.17`), so no two owners ever
  mint the same id for one camera. A planned handover adds `<app>/rel/<camera>/<n>` (the old
  owner released it, when), which tells the next owner "handover" from "takeover after a crash".

`MemoryKV` keeps the same records in a dict, for tests and anything without Ray. Wall-clock
times are compared across nodes: keep node clocks in sync (NTP); skew adds to measured gaps.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

NAMESPACE = "vap"
STALE_S = 5.0      # a heartbeat older than this means the replica is gone
FORGET_S = 600.0   # a dead replica's record is deleted after this (status shows it as stale until then)
KEEP_INCARNATIONS = 2


class KV(Protocol):
    """The four operations the ledger needs (Ray's GCS KV has exactly these)."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool: ...  # True: written
    def keys(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...


class MemoryKV:
    """A process-local KV with the GCS's semantics (tests, single process)."""

    def __init__(self) -> None:
        self._d: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._d.get(key)

    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        with self._lock:
            if not overwrite and key in self._d:
                return False
            self._d[key] = value
            return True

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._d if k.startswith(prefix)]

    def delete(self, key: str) -> None:
        with self._lock:
            self._d.pop(key, None)


class GcsKV:
    """Ray's GCS key-value store through a `ray._raylet.GcsClient` (no Ray driver needed)."""

    def __init__(self, client: Any, namespace: str = NAMESPACE, timeout_s: float = 5.0) -> None:
        self.client = client
        self.ns = namespace.encode()
        self.timeout_s = timeout_s

    @classmethod
    def connect(cls, address: str, timeout_s: float = 5.0) -> GcsKV:
        """A client for the GCS at `host:port` (the head's Ray port, 6379 by default)."""
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # Ray's compiled module has no stubs
        return cls(GcsClient(address=address), timeout_s=timeout_s)

    def get(self, key: str) -> bytes | None:
        return self.client.internal_kv_get(key.encode(), self.ns, timeout=self.timeout_s)

    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        added = self.client.internal_kv_put(key.encode(), value, overwrite, self.ns, timeout=self.timeout_s)
        return bool(added) or overwrite

    def keys(self, prefix: str) -> list[str]:
        return [k.decode() for k in self.client.internal_kv_keys(prefix.encode(), self.ns, timeout=self.timeout_s)]

    def delete(self, key: str) -> None:
        self.client.internal_kv_del(key.encode(), False, self.ns, timeout=self.timeout_s)


@dataclass(frozen=True)
class Previous:
    """The owner before this one: who, whether it released the camera, when it last saw a frame."""

    incarnation: int
    replica: str
    claimed_ts: float
    released_ts: float | None
    last_frame_ts: float | None
    alive: bool


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _load(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Ledger:
    """Slots, heartbeats and owner incarnations of one Serve application (see the module docstring)."""

    def __init__(self, kv: KV, app: str = "vap", stale_s: float = STALE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.app = app
        self.stale_s = stale_s
        self.clock = clock

    # ------------------------------------------------------------- heartbeats
    def beat(self, replica: str, record: dict[str, Any]) -> None:
        """Publish this replica's record (stamped with `hb_ts`, now)."""
        self.kv.put(f"{self.app}/rep/{_q(replica)}", json.dumps({**record, "replica": replica,
                                                                  "hb_ts": self.clock()}).encode())

    def forget(self, replica: str) -> None:
        self.kv.delete(f"{self.app}/rep/{_q(replica)}")

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every heartbeat record, with `age_s` and `alive` (fresh and not leaving) added."""
        now = self.clock()
        out: dict[str, dict[str, Any]] = {}
        for key in self.kv.keys(f"{self.app}/rep/"):
            rec = _load(self.kv.get(key))
            if rec is None or not isinstance(rec.get("replica"), str):
                continue
            age = now - float(rec.get("hb_ts") or 0.0)
            rec["age_s"] = age
            rec["alive"] = age < self.stale_s
            out[rec["replica"]] = rec
        return out

    def prune(self, max_age_s: float = FORGET_S) -> list[str]:
        """Delete heartbeat records silent for `max_age_s` (replicas that died: a clean stop
        deletes its own). Long enough for a takeover to read the dead one's last frames."""
        gone = [r for r, rec in self.replicas().items() if rec["age_s"] > max_age_s]
        for replica in gone:
            self.forget(replica)
        return gone

    # ------------------------------------------------------------- slots
    def _holders(self) -> dict[int, tuple[int, str]]:
        """slot -> (epoch, replica) of its latest claim."""
        latest: dict[int, tuple[int, str]] = {}
        for key in self.kv.keys(f"{self.app}/slot/"):
            try:
                slot, epoch = (int(p) for p in key.rsplit("/", 2)[-2:])
            except ValueError:
                continue
            if slot in latest and latest[slot][0] >= epoch:
                continue
            rec = _load(self.kv.get(key))
            if rec is not None:
                latest[slot] = (epoch, str(rec.get("replica")))
        return latest

    def members(self, replicas: dict[str, dict[str, Any]] | None = None) -> dict[int, str]:
        """slot -> replica for every slot whose holder is alive and not leaving."""
        reps = self.replicas() if replicas is None else replicas
        return {slot: rep for slot, (_, rep) in self._holders().items()
                if rep in reps and reps[rep]["alive"] and not reps[rep].get("leaving")}

    def claim_slot(self, replica: str, num_shards: int) -> int | None:
        """This replica's slot: the one it holds, else the lowest slot whose holder is gone, else
        (while fewer than `num_shards` replicas are live) the lowest free one; None = wait."""
        for _ in range(8):  # lost races retry
            reps = self.replicas()
            holders = self._holders()
            for slot, (_, rep) in holders.items():
                if rep == replica:
                    return slot
            dead = sorted(s for s, (_, rep) in holders.items() if rep not in reps or not reps[rep]["alive"])
            live = len(holders) - len(dead)
            if dead:
                slot, epoch = dead[0], holders[dead[0]][0] + 1
            elif live < num_shards:
                slot, epoch = next(s for s in range(len(holders) + 1) if s not in holders), 0
            else:
                return None
            key = f"{self.app}/slot/{slot}/{epoch:08d}"
            if self.kv.put(key, json.dumps({"replica": replica, "ts": self.clock()}).encode(), overwrite=False):
                for old in self.kv.keys(f"{self.app}/slot/{slot}/"):
                    if old != key:
                        self.kv.delete(old)
                return slot
        return None

    def release_slot(self, replica: str) -> None:
        """Give the slot up (clean shutdown): the next replica takes it without waiting for staleness."""
        for slot, (epoch, rep) in self._holders().items():
            if rep == replica:
                self.kv.delete(f"{self.app}/slot/{slot}/{epoch:08d}")

    # ------------------------------------------------------------- incarnations
    def claim_incarnation(self, stream: str, replica: str) -> int:
        """The next owner number of `stream` (1, 2, ...), atomically: no two claims get the same one."""
        prefix = f"{self.app}/inc/{_q(stream)}/"
        while True:
            taken = [int(k.rsplit("/", 1)[1]) for k in self.kv.keys(prefix)]
            n = max(taken, default=0) + 1
            record = {"replica": replica, "ts": self.clock()}
            if self.kv.put(f"{prefix}{n:08d}", json.dumps(record).encode(), overwrite=False):
                for old in taken:
                    if old <= n - KEEP_INCARNATIONS:
                        self.kv.delete(f"{prefix}{old:08d}")
                        self.kv.delete(f"{self.app}/rel/{_q(stream)}/{old:08d}")
                return n

    def release(self, stream: str, incarnation: int, last_frame_ts: float | None) -> None:
        """Mark a planned handover: this owner stopped `stream` on purpose."""
        self.kv.put(f"{self.app}/rel/{_q(stream)}/{incarnation:08d}",
                    json.dumps({"ts": self.clock(), "last_frame_ts": last_frame_ts}).encode())

    def previous(self, stream: str, incarnation: int) -> Previous | None:
        """Who owned `stream` before `incarnation`, and how it ended (None: nobody did)."""
        if incarnation <= 1:
            return None
        n = incarnation - 1
        claim = _load(self.kv.get(f"{self.app}/inc/{_q(stream)}/{n:08d}"))
        if claim is None:
            return None
        rel = _load(self.kv.get(f"{self.app}/rel/{_q(stream)}/{n:08d}"))
        replica = str(claim.get("replica"))
        rec = self.replicas().get(replica)
        last = None
        if rel is not None and rel.get("last_frame_ts") is not None:
            last = float(rel["last_frame_ts"])
        elif rec is not None:
            frames = rec.get("last_frame_ts") or {}
            last = float(frames[stream]) if frames.get(stream) is not None else None
        return Previous(n, replica, float(claim.get("ts") or 0.0), float(rel["ts"]) if rel else None, last,
                        bool(rec and rec["alive"]))


def resume(prev: Previous | None, first_frame_ts: float) -> tuple[str, float] | None:
    """How a new owner's first frame continues the camera: ("handover" | "takeover", gap_s).

    None when nobody owned it before. "handover": the old owner released it, or is still alive
    (both ran for a moment); the gap is from its release to this first frame. "takeover": the old
    owner died; the gap runs from the last frame it reported (heartbeat, so up to one heartbeat
    early) or, when it never reported one, from when it took the camera.
    """
    if prev is None:
        return None
    if prev.released_ts is not None:
        return "handover", max(0.0, first_frame_ts - prev.released_ts)
    if prev.alive:
        return "handover", 0.0
    since = prev.last_frame_ts if prev.last_frame_ts is not None else prev.claimed_ts
    return "takeover", max(0.0, first_frame_ts - since)


__all__ = ["KV", "NAMESPACE", "STALE_S", "GcsKV", "Ledger", "MemoryKV", "Previous", "resume"]
