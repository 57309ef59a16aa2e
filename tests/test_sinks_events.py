"""Event envelope, ids, schema, and the JSONL sink (rotation, filters, flush at close)."""

import json
import time

import jsonschema
import pytest

from vap_video.pipeline.events import iso_utc, load_schema, make_event, new_event_id
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.sinks import EventBus, EventFilter, JsonlSink, JsonlSinkConfig, SinkRunner


def test_ids_are_uuid7_unique_and_sorted():
    ids = [new_event_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i[14] == "7" for i in ids[:10])


def test_events_validate_and_unknown_types_are_refused():
    schema = load_schema()
    e = make_event("line.cross", "cam1", time.time(), track_id="cam1:3", **{"class": "car"}, class_id=1,
                   score=0.8, box=[1.0, 2.0, 3.0, 4.0], line="gate", direction="in")
    jsonschema.validate(e, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**e, "track_id": "cam1:0"}, schema)   # track ids start at 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in e.items() if k != "direction"}, schema)
    with pytest.raises(ValueError, match="unknown event type"):
        make_event("track.begin", "cam1", time.time())
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500Z"


def test_jsonl_rotation_keeps_every_event(tmp_path):
    cfg = JsonlSinkConfig(path=tmp_path / "ev" / "events.jsonl", rotate_mb=0.002, fsync="always")
    sink = JsonlSink(cfg)
    events = [make_event("stream.up", f"s{i}", time.time(), state="streaming") for i in range(100)]
    for i in range(0, 100, 10):
        sink.write(events[i:i + 10])
    sink.close()
    files = sorted((tmp_path / "ev").glob("*.jsonl"))
    assert len(files) > 2
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted(e["id"] for e in lines) == sorted(e["id"] for e in events)


def test_runner_filters_retries_and_flushes_on_close(tmp_path):
    class Flaky:
        name = "flaky"
        def __init__(self):
            self.calls, self.got = 0, []
        def write(self, events):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("broker down")
            self.got.extend(events)
        def close(self):
            pass

    m = Metrics()
    flaky = Flaky()
    runner = SinkRunner(flaky, EventFilter(types=["stream.up"]), m, retry_s=0.05)
    bus = EventBus([runner])
    bus.publish([make_event("stream.up", "a", time.time(), state="streaming"),
                 make_event("stream.down", "a", time.time(), state="backoff")])
    assert bus.close(5.0)
    assert [e["type"] for e in flaky.got] == ["stream.up"]
    assert m.registry.get_sample_value("vap_sink_errors_total", {"sink": "flaky"}) == 1
    assert m.registry.get_sample_value("vap_sink_events_total", {"sink": "flaky"}) == 1


def test_event_derived_metrics_and_their_removal():
    m = Metrics()
    box = dict(track_id="c:1", class_id=0, score=0.9, box=[0.0, 0.0, 1.0, 1.0], **{"class": "person"})
    m.count_events([make_event("line.cross", "c", time.time(), line="gate", direction="in", **box),
                    make_event("line.cross", "c", time.time(), line="gate", direction="in", **box),
                    make_event("zone.enter", "c", time.time(), zone="bay", occupancy=3, **box)])
    get = m.registry.get_sample_value
    assert get("vap_line_crossings_total", {"stream": "c", "line": "gate", "direction": "in", "class": "person"}) == 2
    assert get("vap_zone_occupancy", {"stream": "c", "zone": "bay"}) == 3
    assert get("vap_events_total", {"type": "line.cross"}) == 2
    m.forget_stream("c")
    assert get("vap_zone_occupancy", {"stream": "c", "zone": "bay"}) is None
    assert get("vap_line_crossings_total",
               {"stream": "c", "line": "gate", "direction": "in", "class": "person"}) is None


def test_close_with_a_full_queue_gives_up_at_the_deadline_and_ends_the_thread():
    import threading

    release = threading.Event()

    class Stuck:
        name = "stuck"
        def write(self, events):
            release.wait(2.0)
        def close(self):
            pass

    runner = SinkRunner(Stuck(), EventFilter(), Metrics(), maxsize=1)
    for _ in range(2):  # one batch being written, one filling the queue
        assert runner.offer([make_event("stream.up", "a", time.time(), state="streaming")], block_s=1.0)
    t0 = time.monotonic()
    assert runner.close(timeout=0.3) is False     # could not deliver within the deadline: says so
    assert time.monotonic() - t0 < 1.5
    release.set()
    runner._thread.join(2.0)
    assert not runner._thread.is_alive()          # the sink thread ended instead of blocking forever


def test_failed_rotation_keeps_writing(tmp_path, monkeypatch):
    from pathlib import Path

    sink = JsonlSink(JsonlSinkConfig(path=tmp_path / "events.jsonl", rotate_mb=0.0005, fsync="never"))
    real_rename = Path.rename
    calls = {"n": 0}

    def flaky_rename(self, target):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", flaky_rename)
    events = [make_event("stream.up", f"s{i}", time.time(), state="streaming") for i in range(30)]
    for i in range(0, 30, 5):
        sink.write(events[i:i + 5])
    sink.close()
    written = [json.loads(line)["id"] for f in tmp_path.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(written) == sorted(e["id"] for e in events) and calls["n"] > 1
