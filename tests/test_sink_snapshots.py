"""Snapshots: JPEG of the frame and the crop for track.start/zone events, path in the event."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np

from vap_video.pipeline.events import load_schema, make_event
from vap_video.pipeline.frames import Detections, Frame
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.snapshots import SnapshotConfig, Snapshotter


def _frame(stream: str = "cam", index: int = 0) -> Frame:
    img = np.zeros((120, 160, 3), np.uint8)
    img[20:60, 30:90] = (255, 0, 0)  # a red (RGB) object
    return Frame(stream, index, None, time.time(), img)


def _start(stream: str = "cam", n: int = 1) -> dict:
    return make_event("track.start", stream, time.time(), track_id=f"{stream}:{n}", class_id=0, score=0.9,
                      box=[30.0, 20.0, 90.0, 60.0], **{"class": "person"})


def test_frame_and_crop_written_and_paths_in_valid_events(tmp_path):
    m = Metrics()
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=tmp_path, crop_margin=0.0), m)
    ev = [_start(), make_event("stream.up", "cam", time.time(), state="streaming")]
    snap(_frame(), Detections(), None, ev)
    snap.close()
    assert "snapshot" not in ev[1]                       # not a snapshot type
    jsonschema.validate(ev[0], load_schema())
    full = cv2.imread(str(tmp_path / ev[0]["snapshot"]))
    crop = cv2.imread(str(tmp_path / ev[0]["snapshot_crop"]))
    assert full.shape == (120, 160, 3) and crop.shape == (40, 60, 3)
    b, g, r = crop[20, 30]
    assert r > 200 and b < 60                            # colours survived RGB -> BGR -> JPEG
    assert Path(ev[0]["snapshot"]).parts[0] == "cam" and ev[0]["snapshot"].endswith(ev[0]["id"] + ".jpg")
    assert m.registry.get_sample_value("vap_snapshots_total", {"result": "written"}) == 2


def test_rate_limit_skips_without_dangling_paths(tmp_path):
    m = Metrics()
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=tmp_path, max_per_stream_s=2, crop=False), m)
    events = [_start(n=i + 1) for i in range(5)]
    snap(_frame(), Detections(), None, events)
    snap.close()
    with_path = [e for e in events if "snapshot" in e]
    assert len(with_path) == 2                           # burst of 2, the rest skipped
    assert all((tmp_path / e["snapshot"]).is_file() for e in with_path)
    assert m.registry.get_sample_value("vap_snapshots_total", {"result": "skipped"}) == 3


def test_a_rate_below_one_per_second_still_allows_one_snapshot(tmp_path):
    """Review finding 12: with max_per_stream_s < 1 the bucket never held a whole token."""
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=tmp_path, max_per_stream_s=0.2, crop=False), Metrics())
    events = [_start(n=1), _start(n=2)]
    snap(_frame(), Detections(), None, events)
    snap.close()
    assert "snapshot" in events[0] and "snapshot" not in events[1]     # one now, the next in 5 s
    assert (tmp_path / events[0]["snapshot"]).is_file()


def test_an_opencv_error_is_counted_and_the_writer_keeps_going(tmp_path):
    """Review finding 13: a cv2.error killed the writer thread; later snapshots were never written."""
    m = Metrics()
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=tmp_path, crop=False), m)
    bad = Frame("cam", 0, None, time.time(), np.zeros((120, 160, 5), np.uint8))  # 5 channels: cvtColor fails
    first, second = [_start(n=1)], [_start(n=2)]
    snap(bad, Detections(), None, first)
    snap(_frame(), Detections(), None, second)
    snap.close()
    assert snap._thread.is_alive() is False
    assert (tmp_path / second[0]["snapshot"]).is_file()
    assert m.registry.get_sample_value("vap_snapshots_total", {"result": "failed"}) == 1
    assert m.registry.get_sample_value("vap_snapshots_total", {"result": "written"}) == 1


def test_a_degenerate_box_on_the_border_still_gets_its_crop(tmp_path):
    """An empty crop used to fail in imencode after its path was already in the event."""
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=tmp_path), Metrics())
    e = make_event("track.start", "cam", time.time(), track_id="cam:1", class_id=0, score=0.9,
                   box=[160.0, 2.0, 160.0, 40.0], **{"class": "person"})   # x1 == x2 == width
    snap(_frame(), Detections(), None, [e])
    snap.close()
    assert cv2.imread(str(tmp_path / e["snapshot_crop"])) is not None


def test_pipeline_puts_snapshot_paths_into_published_events(tmp_path):
    from vap_video.pipeline.runtime import Pipeline
    from vap_video.pipeline.settings import parse_settings
    from tests.onnx_models import constant_detector
    from tests.videos import write_video

    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    video = write_video(tmp_path / "a.mp4", frames=10)
    settings = parse_settings({"streams": [{"name": "a", "url": str(video)}], "model": {"path": str(model)},
                               "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"}],
                               "snapshots": {"enabled": True, "dir": str(tmp_path / "snaps")},
                               "server": {"port": 0}})
    p = Pipeline(settings)
    p.start()
    assert p.wait(60)
    assert p.stop()
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["type"] == "track.start"]
    assert len(starts) == 1
    assert (tmp_path / "snaps" / starts[0]["snapshot"]).is_file()
    assert (tmp_path / "snaps" / starts[0]["snapshot_crop"]).is_file()
    for e in events:
        jsonschema.validate(e, load_schema())


def test_close_keeps_its_deadline_and_names_unwritten_snapshots(tmp_path, monkeypatch, caplog):
    """A stalled disk must not hold shutdown past the deadline, and the loss must be said."""
    import threading

    stall = threading.Event()
    real = cv2.imencode
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: (stall.wait(5), real(*a, **k))[1])
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=tmp_path, crop=False, queue_size=2,
                                      max_per_stream_s=100), Metrics())
    for n in range(3):
        snap(_frame(index=n), Detections(), None, [_start(n=n + 1)])
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="vap.snapshots"):
        snap.close(timeout=0.5)
    assert time.monotonic() - t0 < 1.0
    assert "were not written" in caplog.text
    stall.set()


def test_a_stream_name_that_climbs_out_gets_no_snapshot_outside_dir(tmp_path):
    """The config refuses such names; a frame built by other code must still not write outside `dir`."""
    root = tmp_path / "snaps" / "inner"
    m = Metrics()
    snap = Snapshotter(SnapshotConfig(enabled=True, dir=root, crop=True), m)
    events = {name: [_start(name)] for name in ("..", ".", ".hidden", "../../x", "a/b")}
    for name, ev in events.items():
        snap(_frame(name), Detections(), None, ev)
    ok = [_start("cam")]
    snap(_frame("cam"), Detections(), None, ok)
    snap.close()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert written and all(p.startswith("snaps/inner/cam/") for p in written), written
    assert all("snapshot" not in ev[0] and "snapshot_crop" not in ev[0] for ev in events.values())
    assert ok[0]["snapshot"].startswith("cam/")
    assert m.registry.get_sample_value("vap_snapshots_total", {"result": "failed"}) == len(events)
