"""Letterbox geometry, batch layout and the inverse mapping of boxes."""

import numpy as np

from vap_video.pipeline.frames import Detections
from vap_video.pipeline.postprocess import Postprocessor
from vap_video.pipeline.preprocess import BatchPreprocessor, plan_shape, unletterbox


def test_letterbox_layout_pad_and_roundtrip():
    img = np.zeros((360, 640, 3), np.uint8)
    img[100:200, 300:400] = (255, 0, 0)  # a red square, RGB
    batch, (lb,) = BatchPreprocessor((320, 320))([img])
    assert batch.shape == (1, 3, 320, 320) and batch.dtype == np.float32
    assert lb.scale == 0.5 and lb.pad_x == 0 and lb.pad_y == 70
    assert np.allclose(batch[0, :, 0, 0], 114 / 255)          # padding
    assert np.allclose(batch[0, :, 125:165, 155:195].mean(axis=(1, 2)), [1, 0, 0], atol=0.02)  # R channel first
    back = unletterbox(np.array([[150, 120, 200, 170]], np.float32), lb)
    np.testing.assert_allclose(back, [[300, 100, 400, 200]])


def test_rect_shape_saves_padding():
    assert plan_shape([(720, 1280)], (640, 640), 32, rect=True) == (384, 640)
    assert plan_shape([(720, 1280), (1280, 720)], (640, 640), 32, rect=True) == (640, 640)
    assert plan_shape([(720, 1280)], (640, 640), 32, rect=False) == (640, 640)
    batch, (lb,) = BatchPreprocessor((640, 640), rect=True)([np.zeros((720, 1280, 3), np.uint8)])
    assert batch.shape == (1, 3, 384, 640) and lb.pad_y == 12


def test_mixed_sizes_in_one_batch():
    imgs = [np.full((100, 200, 3), 10, np.uint8), np.full((300, 100, 3), 200, np.uint8)]
    batch, lbs = BatchPreprocessor((64, 64))(imgs)
    assert batch.shape == (2, 3, 64, 64)
    assert (lbs[0].src_h, lbs[0].src_w, lbs[1].src_h, lbs[1].src_w) == (100, 200, 300, 100)
    assert abs(batch[1, 0, 32, 32] - 200 / 255) < 1e-6


def test_postprocess_thresholds_filter_and_clip():
    names = ["person", "car", "dog"]
    # 64x128 source in a 64x64 input: scale 0.5, pad_y 16 (rows 16..48 hold the image)
    box = [0, 16, 10, 26]
    out = np.array([[[*box, 0.9, 0], [*box, 0.3, 1], [*box, 0.6, 2],
                     [-20, -20, 300, 300, 0.95, 1], [*box, 0.99, 7], [0, 0, 10, 10, 0.9, 0]]], np.float32)
    _, (lb,) = BatchPreprocessor((64, 64))([np.zeros((64, 128, 3), np.uint8)])
    post = Postprocessor(names, conf=0.5, class_conf={"car": 0.2}, classes=["person", "car"])
    (d,) = post(out, [lb])
    assert isinstance(d, Detections)
    # dog filtered by class, class 7 unknown, the last box lies wholly in the padding
    assert d.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(d.boxes[0], [0, 0, 20, 20])
    assert d.boxes[2].tolist() == [0, 0, 128, 64]      # clipped to the source frame


def test_postprocess_rejects_unknown_class_names():
    import pytest

    from vap_video.pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="unknown classes"):
        Postprocessor(["a"], classes=["b"])
