"""`vap dehaze`: image, folder and video input, settings from a deployment YAML, bad input -> exit 2."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vap_video.engines.haze import add_haze
from vap_video.engines.synth import render_image, write_video
from vap_video.pipeline.cli import main as vap_main
from vap_video.pipeline.dehaze import DehazeConfig, Dehazer
from vap_video.pipeline.tools.dehaze_preview import cli


def _hazy_jpg(path: Path, i: int = 0, w: int = 320, h: int = 180) -> np.ndarray:
    img = add_haze(render_image((51, i), w, h)[0], 0.25, 0.85)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return img


def test_image(tmp_path, capsys):
    src = tmp_path / "fog.jpg"
    hazy = _hazy_jpg(src)
    out = tmp_path / "clear.png"
    assert vap_main(["dehaze", str(src), "--out", str(out), "--gate-on", "0.3", "--gate-off", "0.2"]) == 0
    text = capsys.readouterr().out
    assert "haze score" in text and "gate on" in text and "ms" in text
    res = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    read_back = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)  # what the CLI saw (JPEG-decoded)
    expected = Dehazer(DehazeConfig(enabled=True, gate_on=0.3, gate_off=0.2)).process(read_back)
    assert res.shape == hazy.shape
    assert np.array_equal(res, expected) and not np.array_equal(res, read_back)


def test_grey_image_and_side_by_side(tmp_path):
    src = tmp_path / "grey.png"
    cv2.imwrite(str(src), cv2.cvtColor(_hazy_jpg(tmp_path / "c.jpg"), cv2.COLOR_RGB2GRAY))
    out = tmp_path / "o.png"
    assert cli([str(src), "--out", str(out), "--side-by-side", "--no-gate"]) == 0
    res = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert res.ndim == 2 and res.shape == (180, 640)


def test_folder_with_yaml_stream_settings(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _hazy_jpg(folder / f"{i}.jpg", i)
    (folder / "notes.txt").write_text("not an image")
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text("streams:\n  - name: cam1\n    url: synthetic://?seed=1\n"
                   "    dehaze: {mode: clahe, gate_on: 0.9, gate_off: 0.8}\n")
    out = tmp_path / "out"
    assert cli([str(folder), "--out", str(out), "--config", str(cfg), "--stream", "cam1"]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    assert "gate off" in text and "3 frame(s)" in text  # the stream's gate_on 0.9 is taken from the YAML
    assert "enabled: false" in text                     # the preview says the YAML has the stage off
    assert cli([str(folder), "--out", str(out), "--config", str(cfg), "--stream", "cam1", "--gate-on", "0.1",
                "--gate-off", "0.05"]) == 0
    assert "gate on" in capsys.readouterr().out      # a flag overrides one key


def test_video(tmp_path, capsys):
    src = write_video(tmp_path / "fog.mp4", seed=2, frames=12, width=320, height=192, fps=25.0,
                      num_objects=3, haze=0.6)
    out = tmp_path / "clear.mp4"
    assert cli([str(src), "--out", str(out), "--gate-on", "0.3", "--gate-off", "0.2"]) == 0
    text = capsys.readouterr().out
    assert "12 frame(s)" in text and "gate on for 100%" in text
    import av

    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (192, 320, 3)


@pytest.mark.parametrize("case", ["missing", "suffix", "corrupt_video", "bad_value", "stream_no_config",
                                  "unknown_stream", "bad_yaml", "out_suffix", "no_images"])
def test_bad_input_exit_2_with_a_message(tmp_path, capsys, case):
    img = tmp_path / "a.jpg"
    _hazy_jpg(img)
    args = {
        "missing": [str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o.jpg")],
        "suffix": [str(tmp_path / "a.jpg"), "--out", str(tmp_path / "o.jpg")],
        "corrupt_video": [str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "o.mp4")],
        "bad_value": [str(img), "--out", str(tmp_path / "o.jpg"), "--omega", "3"],
        "stream_no_config": [str(img), "--out", str(tmp_path / "o.jpg"), "--stream", "cam1"],
        "unknown_stream": [str(img), "--out", str(tmp_path / "o.jpg"), "--config", str(tmp_path / "d.yaml"),
                           "--stream", "cam9"],
        "bad_yaml": [str(img), "--out", str(tmp_path / "o.jpg"), "--config", str(tmp_path / "e.yaml")],
        "out_suffix": [str(img), "--out", str(tmp_path / "o.mp4")],
        "no_images": [str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
    }[case]
    if case == "suffix":
        args[0] = str(tmp_path / "a.xyz")
        (tmp_path / "a.xyz").write_text("?")
    (tmp_path / "bad.mp4").write_text("not a video")
    (tmp_path / "d.yaml").write_text("streams:\n  - {name: cam1, url: 'synthetic://?seed=1'}\n")
    (tmp_path / "e.yaml").write_text("dehaze: {omgea: 1}\n")
    (tmp_path / "empty").mkdir()
    assert cli(args) == 2
    err = capsys.readouterr().err
    expected = {"missing": "no such file", "suffix": "unsupported input", "corrupt_video": "cannot open as a video",
                "bad_value": "omega", "stream_no_config": "needs --config", "unknown_stream": "cam9",
                "bad_yaml": "omgea", "out_suffix": "image file name", "no_images": "no images"}[case]
    assert expected in err and "Traceback" not in err


# ---------------------------------------------------------------------------- review findings

@pytest.mark.parametrize("suffix", [".webm", ".flv", ".mpg", ".avi"])
def test_video_output_containers_each_get_a_codec_they_accept(tmp_path, capsys, suffix):
    src = write_video(tmp_path / "fog.mp4", seed=3, frames=4, width=160, height=96, fps=25.0, haze=0.6)
    out = tmp_path / f"o{suffix}"
    assert cli([str(src), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    import av

    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4


def test_negative_max_frames_is_a_usage_error(tmp_path, capsys):
    src = write_video(tmp_path / "fog.mp4", seed=3, frames=3, width=160, height=96, fps=25.0)
    assert cli([str(src), "--out", str(tmp_path / "o.mp4"), "--max-frames", "-1"]) == 2
    assert "-1 is negative" in capsys.readouterr().err  # (the tmp path itself contains "negative")
    assert not (tmp_path / "o.mp4").exists()


def test_16_bit_image_is_scaled_by_full_scale_not_its_maximum(tmp_path):
    dim = (np.indices((60, 80)).sum(axis=0) * 100 + 1000).astype(np.uint16)  # max about 14700 of 65535
    src = tmp_path / "dim16.png"
    cv2.imwrite(str(src), dim)
    out = tmp_path / "o.png"
    assert cli([str(src), "--out", str(out)]) == 0
    res = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    expected = np.round(dim / 257.0)
    assert res.dtype == np.uint8 and np.abs(res.astype(float) - expected).max() <= 1  # dim stays dim


def test_folder_with_an_unreadable_image_skips_and_counts_it(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _hazy_jpg(folder / "a.jpg", 0)
    (folder / "b.png").write_bytes(b"nope")
    _hazy_jpg(folder / "c.jpg", 1)
    out = tmp_path / "out"
    assert cli([str(folder), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "c.jpg"]
    assert "1 unreadable image(s) skipped: b.png" in cap.out and "b.png" in cap.err
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "c.jpg").write_bytes(b"y")
    assert cli([str(folder), "--out", str(tmp_path / "out2")]) == 2  # nothing readable at all
    assert "none of the 3 image(s)" in capsys.readouterr().err
