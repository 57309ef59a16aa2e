"""The pipeline end to end on generated files, with a tiny contract-honouring engine.

These tests exercise the real data path (PyAV decode, batcher, ONNX Runtime, tracker, analytics,
JSONL sink, HTTP API); the engine is a constant detector so the expected events are exact.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vap_video.engines.backends import load_backend
from vap_video.engines.backends.base import Backend
from vap_video.pipeline.api import ApiServer
from vap_video.pipeline.events import load_schema
from vap_video.pipeline.runtime import Pipeline
from vap_video.pipeline.settings import parse_settings
from tests.onnx_models import constant_detector
from tests.videos import corrupted_copy, write_video

ROWS = np.array([[10, 10, 30, 40, 0.9, 0], [40, 40, 60, 60, 0.8, 1]], np.float32)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return constant_detector(tmp_path / "m.onnx", ROWS, ["person", "car"])


def _settings(tmp_path: Path, model: Path, streams: list[dict], **extra) -> object:
    return parse_settings({"streams": streams, "model": {"path": str(model)},
                           "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"}],
                           "server": {"port": 0}, **extra})


def _events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _request(url: str, method: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_processed(p: Pipeline, streams: list[str], n: int, timeout: float = 60) -> None:
    """Wait until every stream has `n` processed frames (robust on a loaded machine)."""
    deadline = time.time() + timeout
    while any((p.metrics.registry.get_sample_value("vap_frames_processed_total", {"stream": s}) or 0) < n
              for s in streams):
        assert time.time() < deadline, f"streams {streams} did not reach {n} processed frames"
        time.sleep(0.1)


def test_files_every_frame_events_schema_and_metrics(tmp_path, model):
    a = write_video(tmp_path / "a.mp4", frames=40)
    b = write_video(tmp_path / "b.mkv", frames=30)
    p = Pipeline(_settings(tmp_path, model, [{"name": "a", "url": str(a)}, {"name": "b", "url": str(b)}]))
    api = ApiServer(p, "127.0.0.1", 0)
    api.start()
    try:
        p.start()
        assert p.wait(60)
        status, body = _get(f"{api.url}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        processed = {s.labels["stream"]: s.value for s in families["vap_frames_processed"].samples
                     if s.name == "vap_frames_processed_total"}
        assert processed == {"a": 40, "b": 30}
        batch_count = [s.value for s in families["vap_batch_size"].samples if s.name == "vap_batch_size_count"][0]
        assert batch_count >= 70 / 8
        assert _get(f"{api.url}/healthz")[0] == 200 and _get(f"{api.url}/readyz")[0] == 200
    finally:
        assert p.stop()
        api.close()
    events = _events(tmp_path)
    schema = load_schema()
    for e in events:
        jsonschema.validate(e, schema)
    starts = sorted((e["stream"], e["class"]) for e in events if e["type"] == "track.start")
    ends = sorted((e["stream"], e["class"]) for e in events if e["type"] == "track.end")
    # two constant boxes per stream -> exactly two tracks per stream, each started and ended once
    assert starts == ends == [("a", "car"), ("a", "person"), ("b", "car"), ("b", "person")]
    assert len({e["id"] for e in events}) == len(events)


def test_control_api_add_remove_and_release(tmp_path, model):
    live = write_video(tmp_path / "live.ts", frames=50)
    settings = _settings(tmp_path, model, [])
    settings.server.media_roots = [tmp_path]   # files over the API only from under a media root
    p = Pipeline(settings)
    api = ApiServer(p, "127.0.0.1", 0)
    api.start()
    p.start()
    try:
        spec = {"name": "cam9", "url": str(live), "live": True, "realtime": True, "loop": True}
        status, body = _request(f"{api.url}/streams", "POST", spec)
        assert status == 201 and body["name"] == "cam9"
        assert _request(f"{api.url}/streams", "POST", spec)[0] == 409
        status, body = _request(f"{api.url}/streams", "POST", {"name": "x", "url": str(tmp_path / "a.mp4"), "fps": 3})
        assert status == 400 and "unknown key 'fps'" in body["error"]
        assert "allowed here: analytics" in body["error"] and "shutdown_timeout_s" not in body["error"]
        for bad in ("..", ".cam", "a/b"):  # the settings model's name rule holds for the API too
            status, body = _request(f"{api.url}/streams", "POST", {"name": bad, "url": str(live), "live": True})
            assert status == 400 and "name" in body["error"] and "not starting with '.'" in body["error"], body
        _wait_processed(p, ["cam9"], 10)
        worker = p.supervisor.worker("cam9")
        status, body = _request(f"{api.url}/streams/cam9", "DELETE")
        assert status == 200 and body == {"removed": "cam9"}
        assert not worker.alive and worker.state == "stopped"   # decoder thread gone
        assert json.loads(_get(f"{api.url}/streams")[1]) == []
        deadline = time.time() + 10  # removal finishes on the post thread: then no series of cam9 remain
        while 'stream="cam9"' in _get(f"{api.url}/metrics")[1].decode():
            assert time.time() < deadline, "removed stream's metric series were never removed"
            time.sleep(0.1)
        assert _request(f"{api.url}/streams/cam9", "DELETE")[0] == 404
        deadline = time.time() + 10  # the sink thread writes asynchronously
        while len(ends := [e for e in _events(tmp_path) if e["type"] == "track.end"]) < 2:
            assert time.time() < deadline, "removal did not close the stream's tracks"
            time.sleep(0.1)
        assert len(ends) == 2 and all(e["stream"] == "cam9" for e in ends)  # removal closed its tracks
        status, _ = _request(f"{api.url}/streams", "POST", spec)  # the name can be used again
        assert status == 201
        _wait_processed(p, ["cam9"], 5)
    finally:
        assert p.stop()
        api.close()
    starts = [e["track_id"] for e in _events(tmp_path) if e["type"] == "track.start"]
    assert len(starts) == 4 and len(set(starts)) == 2  # the new incarnation's tracks start again at cam9:1..2


class SlowBackend(Backend):
    """Wraps a real backend and adds a fixed cost per batch: an engine slower than the camera."""

    name = "slow"

    def __init__(self, inner: Backend, seconds: float) -> None:
        self.inner, self.seconds, self.info = inner, seconds, inner.info

    def _run(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return self.inner.infer(images)


def test_overload_live_latency_bounded_file_complete(tmp_path, model):
    """Live at 25 fps into an engine that manages ~10 batches/s of 1: drops counted, latency bounded.

    Bound: queue of 2 frames + one batch in each of the three stages -> under 6 engine periods
    (0.6 s) plus the batch deadline; we assert p99 < 1.0 s. The file under the same engine loses nothing.
    """
    live = write_video(tmp_path / "live.ts", frames=100)
    clip = write_video(tmp_path / "clip.mp4", frames=30)
    settings = _settings(tmp_path, model, [
        {"name": "cam", "url": str(live), "live": True, "realtime": True, "loop": True},
        {"name": "clip", "url": str(clip)}], batch={"max_batch": 1, "max_delay_ms": 5})
    p = Pipeline(settings, backend=SlowBackend(load_backend(model), 0.1))
    p.start()
    try:
        time.sleep(6)
    finally:
        assert p.stop()
    reg = p.metrics.registry
    assert reg.get_sample_value("vap_frames_processed_total", {"stream": "clip"}) == 30
    assert reg.get_sample_value("vap_frames_dropped_total", {"stream": "clip", "reason": "stale"}) is None
    stale = reg.get_sample_value("vap_frames_dropped_total", {"stream": "cam", "reason": "stale"})
    assert stale and stale > 20
    # p99 from the histogram: the smallest bucket holding 99% of observations
    count = reg.get_sample_value("vap_frame_latency_seconds_count", {"stream": "cam"})
    for le in ("0.5", "0.75", "1.0"):
        if reg.get_sample_value("vap_frame_latency_seconds_bucket", {"stream": "cam", "le": le}) >= 0.99 * count:
            break
    else:
        pytest.fail("live p99 latency above 1 s under overload")


def test_graceful_stop_flushes_every_accepted_event(tmp_path, model):
    live = write_video(tmp_path / "live.ts", frames=50)
    p = Pipeline(_settings(tmp_path, model, [
        {"name": f"c{i}", "url": str(live), "live": True, "realtime": True, "loop": True} for i in range(3)]))
    p.start()
    _wait_processed(p, ["c0", "c1", "c2"], 10)
    assert p.stop(timeout=10)
    events = _events(tmp_path)
    counted = sum(v for m in p.metrics.registry.collect() if m.name == "vap_events"
                  for s in m.samples if s.name == "vap_events_total" for v in [s.value])
    assert len(events) == counted > 0
    starts = {e["track_id"] for e in events if e["type"] == "track.start"}
    ends = {e["track_id"] for e in events if e["type"] == "track.end"}
    assert starts == ends and len(starts) == 6


def test_corrupt_file_is_processed_up_to_and_past_the_damage(tmp_path, model):
    good = write_video(tmp_path / "good.ts", frames=60)
    bad = corrupted_copy(good, tmp_path / "bad.ts", at=0.5, nbytes=3000)
    p = Pipeline(_settings(tmp_path, model, [{"name": "bad", "url": str(bad)}, {"name": "good", "url": str(good)}]))
    p.start()
    try:
        assert p.wait(60)
    finally:
        p.stop()
    reg = p.metrics.registry
    assert reg.get_sample_value("vap_frames_processed_total", {"stream": "good"}) == 60
    done_bad = reg.get_sample_value("vap_frames_processed_total", {"stream": "bad"})
    assert 25 <= done_bad < 60  # everything before the damage, and decoding resumed after it


class FailingBackend(SlowBackend):
    """A real engine that raises on its Nth batch (driver error, OOM, ...)."""

    def __init__(self, inner: Backend, fail_at: int) -> None:
        super().__init__(inner, 0.0)
        self.calls, self.fail_at = 0, fail_at

    def _run(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("engine exploded")
        return self.inner.infer(images)


def test_engine_failure_mid_run_stops_fast_and_closes_tracks(tmp_path, model):
    live = write_video(tmp_path / "live.ts", frames=50)
    p = Pipeline(_settings(tmp_path, model, [{"name": "cam", "url": str(live), "live": True, "realtime": True,
                                               "loop": True}], shutdown_timeout_s=20),
                 backend=FailingBackend(load_backend(model), fail_at=8))
    p.start()
    assert p.wait(timeout=20) is False          # the failure ends the wait instead of hanging
    assert isinstance(p.error, RuntimeError)
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 5            # not the 20 s shutdown timeout
    events = _events(tmp_path)
    starts = {e["track_id"] for e in events if e["type"] == "track.start"}
    assert starts and starts == {e["track_id"] for e in events if e["type"] == "track.end"}


def test_api_bad_content_length_is_400(tmp_path, model):
    import http.client
    p = Pipeline(_settings(tmp_path, model, []))
    api = ApiServer(p, "127.0.0.1", 0)
    api.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
        conn.putrequest("POST", "/streams")
        conn.putheader("Content-Length", "abc")
        conn.endheaders()
        assert conn.getresponse().status == 400
    finally:
        api.close()
        p.stop(timeout=2)


class _MultiContextBackend(Backend):
    """Several batches in flight, finishing out of order (like TensorRT's context pool under load)."""

    name = "fake-multicontext"

    def __init__(self, inner: Backend, contexts: int = 3) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.inner, self.info, self.contexts = inner, inner.info, contexts
        self.pool = ThreadPoolExecutor(contexts)
        self.rng = np.random.default_rng(0)
        self.in_flight = self.max_in_flight = 0

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.inner.infer(images)

    def submit(self, images: np.ndarray):
        """Each batch finishes only once the next one was submitted (or after 0.3 s), in random order."""
        import threading

        delay = float(self.rng.uniform(0.0, 0.05))
        nxt = threading.Event()
        if getattr(self, "_next", None) is not None:
            self._next.set()
        self._next = nxt
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def work() -> np.ndarray:
            nxt.wait(0.3)
            time.sleep(delay)
            out = self.infer(images)
            self.in_flight -= 1
            return out
        return self.pool.submit(work)


def test_batches_in_flight_on_several_contexts_keep_frame_order(tmp_path, model):
    video = write_video(tmp_path / "a.mp4", frames=40)
    backend = _MultiContextBackend(load_backend(model))
    settings = _settings(tmp_path, model, [{"name": "a", "url": str(video)}], batch={"max_batch": 2})
    p = Pipeline(settings, backend=backend)
    seen: list[int] = []
    p.hooks.append(lambda frame, dets, tracks, new: seen.append(frame.index))
    p.start()
    try:
        assert p.wait(60)
    finally:
        p.stop()
    assert seen == sorted(seen) and len(seen) == 40       # every frame, in decode order
    assert backend.max_in_flight >= 2                      # batches really overlapped


def test_a_finished_batch_moves_on_without_waiting_for_the_next(tmp_path, model):
    """With batches in flight, one that finishes is delivered at once (not when the next batch
    comes), and the inference histogram measures the engine, not the wait."""
    backend = _MultiContextBackend(load_backend(model))
    settings = _settings(tmp_path, model, [], batch={"max_batch": 1})
    p = Pipeline(settings, backend=backend)
    delivered: list[float] = []
    p.hooks.append(lambda frame, dets, tracks, new: delivered.append(time.monotonic()))
    p.start()
    try:
        video = write_video(tmp_path / "one.mp4", frames=1)
        t0 = time.monotonic()
        p.add_stream(parse_settings({"streams": [{"name": "one", "url": str(video)}]}).streams[0])
        deadline = time.monotonic() + 10
        while not delivered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivered and delivered[0] - t0 < 3.0
        total = p.metrics.registry.get_sample_value("vap_inference_seconds_sum")
        assert total is not None and total < 0.5
    finally:
        p.stop()


def test_a_stream_removed_while_down_still_reports_why_it_was_released(tmp_path, model):
    """A camera handed over while it is down gets a second stream.down with the handover reason:
    the outage's own stream.down does not say this owner let it go."""
    settings = _settings(tmp_path, model, [])
    p = Pipeline(settings)
    p.start()
    try:
        p.add_stream(parse_settings({"streams": [{"name": "gone", "url": "rtsp://127.0.0.1:9/none"}],
                                     "model": {"path": str(model)}}).streams[0])
        deadline = time.monotonic() + 20
        while not any(e["type"] == "stream.down" for e in _events_now(tmp_path)):
            assert time.monotonic() < deadline, "the unreachable camera never reported stream.down"
            time.sleep(0.1)
        p.remove_stream("gone", reason="handover")
    finally:
        assert p.stop(10)
    downs = [e for e in _events(tmp_path) if e["type"] == "stream.down" and e["stream"] == "gone"]
    assert downs[0].get("reason") != "handover"
    assert [e.get("reason") for e in downs].count("handover") == 1, downs


def _events_now(tmp_path: Path) -> list[dict]:
    f = tmp_path / "events.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []
