"""Annotated output draws tracks and geometry and produces a decodable MP4 of every frame."""

import time

import av
import numpy as np

from vap_video.pipeline.analytics import AnalyticsConfig
from vap_video.pipeline.annotate import AnnotatedWriter, draw_tracks
from vap_video.pipeline.frames import Detections, Frame
from vap_video.pipeline.tracking import Tracks


def _tracks() -> Tracks:
    return Tracks(ids=np.array([3]), boxes=np.array([[10, 10, 50, 60]], np.float32),
                  scores=np.array([0.9], np.float32), class_ids=np.array([1], np.int32),
                  ended=np.zeros(0, np.int64))


def test_draws_box_zone_and_line_arrow_on_the_in_side():
    img = np.zeros((100, 200, 3), np.uint8)
    cfg = AnalyticsConfig(zones=[{"name": "z", "polygon": [[120, 10], [190, 10], [190, 90]]}],
                          lines=[{"name": "l", "relative": True, "points": [[0.5, 1.0], [0.5, 0.0]]}])
    out = draw_tracks(img, _tracks(), ["a", "b"], cfg)
    assert img.sum() == 0                          # the source frame is not modified
    assert out[10:60, 10].any() and out[35, 10:50].any()  # box edges
    # the line runs bottom->top at x=100; 'in' is moving right, so the arrow is drawn right of it
    assert out[50, 103:118].any() and not out[50, 82:97].any()


def test_writer_encodes_every_frame(tmp_path):
    w = AnnotatedWriter(tmp_path / "a.mp4", "s", ["a", "b"], fps=10)
    for i in range(12):
        img = np.full((90, 161, 3), i * 10, np.uint8)   # odd width: the writer makes it even
        w(Frame("s", i, i / 10, time.time(), img), Detections(), _tracks(), [])
        w(Frame("other", i, i / 10, time.time(), img), Detections(), _tracks(), [])  # ignored stream
    w.close()
    with av.open(str(tmp_path / "a.mp4")) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 12 and frames[0].width == 160
