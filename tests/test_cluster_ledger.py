"""The ledger (slots, heartbeats, incarnations) and ledger-mode shard workers, without Ray.

`MemoryKV` has the GCS KV's semantics (atomic put-unless-exists), so the same `Ledger` code runs
here as on a Ray cluster. The end-to-end test runs real pipelines (synthetic cameras, a constant
detector) as three replicas that hand cameras over and take one over after a "crash".
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from vap_video.pipeline.cluster.ledger import Ledger, MemoryKV, Previous, resume
from vap_video.pipeline.cluster.shard import ClusterConfig, ShardWorker
from vap_video.pipeline.events import load_schema
from tests.onnx_models import constant_detector


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_incarnations_are_unique_under_concurrent_claims():
    ledger = Ledger(MemoryKV())
    got: list[int] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        for _ in range(20):
            n = ledger.claim_incarnation("cam/01", f"r{i}")
            with lock:
                got.append(n)
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 81))
    # only the last few claims are kept
    assert len(ledger.kv.keys("vap/inc/")) <= 2


def test_slots_are_sticky_reclaimed_from_the_dead_and_freed_on_leave():
    clock = Clock()
    ledger = Ledger(MemoryKV(), stale_s=5.0, clock=clock)
    for r in ("a", "b"):
        ledger.beat(r, {})
    assert ledger.claim_slot("a", 2) == 0 and ledger.claim_slot("b", 2) == 1
    assert ledger.claim_slot("a", 2) == 0  # held: the same slot again
    ledger.beat("c", {})
    assert ledger.claim_slot("c", 2) is None  # two live replicas for two shards: wait
    assert ledger.claim_slot("c", 3) == 2     # upscale: the next free slot
    assert ledger.members() == {0: "a", 1: "b", 2: "c"}
    # "a" leaves cleanly: slot 0 is free at once; "b" dies: slot 1 is reclaimed after stale_s
    ledger.release_slot("a")
    ledger.forget("a")
    clock.t += 3
    ledger.beat("c", {})
    assert ledger.members() == {1: "b", 2: "c"}
    clock.t += 3   # b's heartbeat is now 6 s old
    ledger.beat("c", {})
    assert ledger.members() == {2: "c"}
    ledger.beat("d", {})
    assert ledger.claim_slot("d", 2) == 1     # the dead slot first, not the free slot 0
    ledger.beat("e", {})
    assert ledger.claim_slot("e", 3) == 0
    # b's record stays (status shows it stale) until it is FORGET_S old
    assert "b" in ledger.replicas() and ledger.prune(max_age_s=60) == []
    clock.t += 60
    assert "b" in ledger.prune(max_age_s=60) and "b" not in ledger.replicas()


def test_resume_tells_handover_from_takeover_and_measures_the_gap():
    assert resume(None, 10.0) is None
    released = Previous(1, "a", 0.0, released_ts=9.5, last_frame_ts=9.4, alive=True)
    assert resume(released, 10.0) == ("handover", pytest.approx(0.5))
    overlap = Previous(1, "a", 0.0, released_ts=None, last_frame_ts=9.9, alive=True)
    assert resume(overlap, 10.0) == ("handover", 0.0)
    dead = Previous(1, "a", 0.0, released_ts=None, last_frame_ts=3.0, alive=False)
    assert resume(dead, 10.0) == ("takeover", pytest.approx(7.0))
    never = Previous(1, "a", 2.0, released_ts=None, last_frame_ts=None, alive=False)
    assert resume(never, 10.0) == ("takeover", pytest.approx(8.0))


# ---------------------------------------------------------------- real pipelines, three replicas
def _registry(path: Path, n: int, version: str) -> list[str]:
    names = [f"cam-{i:02d}" for i in range(n)]
    cams = [{"name": c, "url": f"synthetic://?seed={i}&fps=8&width=96&height=64&objects=2"}
            for i, c in enumerate(names)]
    path.write_text(yaml.safe_dump({"version": version, "cameras": cams}))
    return names


def _events(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def _wait(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_handover_and_takeover_events_and_unique_track_ids(tmp_path):
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    reg = tmp_path / "registry.yaml"
    cams = _registry(reg, 4, "v1")
    events_dir = tmp_path / "events"
    ledger = Ledger(MemoryKV(), stale_s=1.5)
    settings = {"model": {"path": str(model), "onnxruntime": {"intra_op_threads": 1}},
                "batch": {"max_batch": 4, "max_delay_ms": 20},
                "analytics": {"min_start_score": 0.1},
                "sinks": [{"type": "jsonl", "path": str(events_dir / "events-{replica}.jsonl"), "fsync": "never"}]}

    def config(shards: int) -> dict:
        return {"num_shards": shards, "registry": str(reg), "metrics_port": 0, "settings": settings}

    def worker(name: str) -> ShardWorker:
        return ShardWorker(serve_http=False, replica_id=name, ledger=ledger, heartbeat_s=0.2)

    def coverage(ws: list[ShardWorker]) -> bool:
        owned = [c for w in ws for c in w.owned]
        return sorted(owned) == cams and all(set(w._streams) == w.owned for w in ws)

    def started(stream: str | None = None) -> list[dict]:
        return [e for e in _events(events_dir) if e["type"] == "track.start" and stream in (None, e["stream"])]

    a, b = worker("a"), worker("b")
    try:
        a.reconfigure(config(1), 0)
        _wait(lambda: coverage([a]), what="a owns every camera")
        _wait(lambda: {e["stream"] for e in started()} == set(cams), what="tracks on every camera")
        # planned handover: b joins, num_shards 1 -> 2
        b.reconfigure(config(2), 1)
        a.reconfigure(config(2), 0)
        _wait(lambda: coverage([a, b]) and a.owned and b.owned, what="two shards cover")
        moved = sorted(b.owned)
        _wait(lambda: all(started(c) and any(e["track_id"].startswith(f"{c}:2.") for e in started(c))
                          for c in moved), what="tracks of the new owner")
        # crash: b stops without a word (no release, no heartbeat any more)
        b._stop.set()
        b.pipeline.stop()
        c = worker("c")
        c.reconfigure(config(2), 1)   # Serve's replacement; waits for b's slot to go stale
        _wait(lambda: coverage([a, c]), what="c took b's slot")
        assert c.shard == 1 and c.owned == set(moved) and a.owned == set(cams) - set(moved)
        _wait(lambda: all(any(e["track_id"].startswith(f"{cam}:3.") for e in started(cam)) for cam in moved),
              what="tracks of the replacement")
    finally:
        for w in (a, b, c) if "c" in locals() else (a, b):
            w.close()
    events = _events(events_dir)
    schema = load_schema()
    for e in events:
        jsonschema.validate(e, schema)
    starts = [(e["stream"], e["track_id"]) for e in events if e["type"] == "track.start"]
    assert len(starts) == len(set(starts)), "a (stream, track_id) started twice"
    for cam in moved:
        mine = [e for e in events if e["stream"] == cam]
        ends = [e for e in mine if e["type"] == "track.end" and e["track_id"].startswith(f"{cam}:1.")]
        assert ends and all(e.get("reason") == "handover" for e in ends)
        ups = [e for e in mine if e["type"] == "stream.up"]
        assert [u.get("reason") for u in ups][1:] == ["handover", "takeover"], ups
        assert all(u["gap_s"] >= 0 for u in ups[1:])
        downs = [e for e in mine if e["type"] == "stream.down"]
        assert downs and downs[0]["reason"] == "handover"   # the old owner's stop, said as such
        gap = next(e for e in mine if e["type"] == "stream.gap")
        assert gap["reason"] == "takeover" and gap["gap_s"] >= 1.0   # b was dead for at least stale_s
    # cameras that never moved have one owner incarnation and one stream.up
    for cam in set(cams) - set(moved):
        assert {e["track_id"].split(":")[1].split(".")[0] for e in events
                if e["stream"] == cam and "track_id" in e} == {"1"}


# ---------------------------------------------------------------- vap cluster status
def test_status_table_exact_then_not(tmp_path, monkeypatch, capsys):
    from vap_video.pipeline.cluster import status
    from tests.test_cluster_worker import FakePipeline

    reg = tmp_path / "registry.yaml"
    cams = _registry(reg, 6, "v7")
    kv = MemoryKV()
    ledger = Ledger(kv, app="vap")
    cfg = ClusterConfig.parse({"num_shards": 2, "registry": str(reg), "metrics_port": 0})
    ws = [ShardWorker(FakePipeline, serve_http=False, replica_id=r, ledger=ledger, heartbeat_s=0.1) for r in "ab"]
    try:
        for rank, w in enumerate(ws):
            w.reconfigure(cfg, rank)
        _wait(lambda: sorted(c for w in ws for c in w.owned) == cams, what="coverage")
        _wait(lambda: status.gather(ledger)["exact"], timeout=5, what="exact in the heartbeats")
        monkeypatch.setattr(status, "connect", lambda address, timeout_s=5.0: kv)
        assert status.cmd_status("127.0.0.1:6379", "vap", False) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].split() == ["shard", "replica", "node", "pid", "cameras", "fps", "drops", "last",
                                               "error", "config", "version"]
        assert "coverage: exact (6 cameras on 2 shards)" in out and "v7/2" in out
        assert status.cmd_status("127.0.0.1:6379", "vap", True) == 0
        report = json.loads(capsys.readouterr().out)
        assert [r["shard"] for r in report["replicas"]] == [0, 1]
        assert sorted(c for r in report["replicas"] for c in r["owned"]) == cams
        # one replica dies: its heartbeat goes stale and coverage is no longer exact (exit 1)
        ws[1]._stop.set()
        ledger.stale_s = 0.5
        _wait(lambda: not status.gather(ledger)["exact"], timeout=5, what="not exact")
        assert status.cmd_status("127.0.0.1:6379", "vap", False, stale_s=0.5) == 1
        out = capsys.readouterr().out
        assert "coverage: NOT exact" in out and "of 6 cameras owned" in out
        assert status.cmd_status("127.0.0.1:6379", "other-app", False) == 1
        assert "no replica of application 'other-app'" in capsys.readouterr().out
    finally:
        for w in ws:
            w.close()


def test_status_without_a_cluster_is_one_clear_line(capsys):
    from vap_video.pipeline.cluster.cli import cli
    assert cli(["status", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no Ray cluster at 127.0.0.1:1") and "\n" not in err


def test_rescale_2_3_2_moves_only_the_leaving_replicas_cameras(tmp_path):
    """Ledger-mode workers (fake pipelines): 2 -> 3 moves only what the new slot wins; 3 -> 2 with
    slot 0's replica stopped (what Serve did) moves only its cameras: the survivors keep theirs."""
    from tests.test_cluster_worker import FakePipeline

    reg = tmp_path / "registry.yaml"
    cams = _registry(reg, 8, "v1")
    ledger = Ledger(MemoryKV())

    def cfg(n: int) -> ClusterConfig:
        return ClusterConfig.parse({"num_shards": n, "registry": str(reg), "metrics_port": 0})

    def settle(ws: list[ShardWorker]) -> dict[str, str]:
        _wait(lambda: sorted(c for w in ws for c in w.owned) == cams and all(w.active for w in ws),
              timeout=10, what="coverage")
        return {c: w.replica_id for w in ws for c in w.owned}

    a, b, c = (ShardWorker(FakePipeline, serve_http=False, replica_id=r, ledger=ledger, heartbeat_s=0.05)
               for r in "abc")
    try:
        a.reconfigure(cfg(2), 0)
        b.reconfigure(cfg(2), 1)
        two = settle([a, b])
        for w in (a, b):
            w.reconfigure(cfg(3), w.rank)
        c.reconfigure(cfg(3), 2)
        three = settle([a, b, c])
        up = {x for x in cams if two[x] != three[x]}
        assert up and all(three[x] == "c" for x in up)
        for w in (a, b, c):
            w.reconfigure(cfg(2), w.rank)
        assert a.shard == 0
        a_cams = {x for x in cams if three[x] == "a"}
        a.close()                       # Serve stops the replica holding slot 0
        back = settle([b, c])
        down = {x for x in cams if three[x] != back[x]}
        assert down == a_cams, (sorted(down), sorted(a_cams))
        assert (b.shard, c.shard) == (1, 2)   # no renumbering
    finally:
        for w in (a, b, c):
            w.close()


# ---------------------------------------------------------------- /cluster and the API token
def test_shard_http_cluster_endpoint_needs_the_api_token(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from tests.test_cluster_worker import FakePipeline

    reg = tmp_path / "registry.yaml"
    _registry(reg, 2, "v1")
    monkeypatch.setenv("VAP_API_TOKEN", "t" * 32)
    w = ShardWorker(FakePipeline)
    try:
        w.reconfigure({"num_shards": 1, "registry": str(reg), "metrics_port": 0, "metrics_host": "127.0.0.1"}, 0)
        base = f"http://127.0.0.1:{w.metrics_port}"

        def get(path: str, token: str | None = None) -> int:
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        assert get("/cluster") == 401 and get("/cluster", "wrong-token-wrong-token") == 401
        assert get("/cluster", "t" * 32) == 200
        assert get("/metrics") == 200 and get("/healthz") in (200, 503)   # public, as on the main API
        monkeypatch.delenv("VAP_API_TOKEN")
        assert get("/cluster") == 200   # no token set: open, as on the main API (loopback)
    finally:
        w.close()
