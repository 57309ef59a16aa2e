"""What can be known at load is caught at load: each bad value gets its exit code and a message
naming the key and what to do (`vap validate` and `vap run`, in process; no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.cli import main
from tests.onnx_models import constant_detector
from tests.videos import write_video


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person", "car"])


def _cfg(tmp_path: Path, model_path: Path, **top: object) -> Path:
    clip = write_video(tmp_path / "clip.mkv", frames=3)
    data = {"streams": [{"name": "a", "url": str(clip)}], "model": {"path": str(model_path)},
            "server": {"enabled": False}, "sinks": [{"type": "jsonl", "path": str(tmp_path / "ev.jsonl")}]}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # type: ignore[dict-item]
        else:
            data[key] = value
    p = tmp_path / "vap.yaml"
    p.write_text(json.dumps(data))
    return p


def _validate(capsys, path: Path) -> tuple[int, str]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


def test_valid_config_names_the_model_and_its_classes(tmp_path, model, capsys):
    code, out = _validate(capsys, _cfg(tmp_path, model))
    assert code == 0, out
    assert "valid (1 streams)" in out and "2 classes: person, car" in out


@pytest.mark.parametrize("top,needle", [
    ({"shutdown_timeout_s": 1e10}, "shutdown_timeout_s: Input should be less than or equal to 3600"),
    ({"batch": {"max_delay_ms": 1e12}}, "batch.max_delay_ms: Input should be less than or equal to 10000"),
    ({"streams": [{"name": "a", "url": "rtsp://cam/x", "open_timeout_s": 1e9}]},
     "streams[0].open_timeout_s: Input should be less than or equal to 3600"),
    ({"streams": [{"name": "a", "url": "rtsp://cam/x", "backoff_initial_s": 60}]},
     "backoff_initial_s (60) must not exceed backoff_max_s (30)"),
    ({"streams": [{"name": "a", "url": "synthetic://?fps=0"}]}, "streams[0].url: synthetic scene needs fps > 0"),
    ({"streams": [{"name": "a", "url": "synthetic://?seed=1&fsp=5"}]},
     "streams[0].url: unknown synthetic parameter 'fsp'"),
    ({"model": {"classes": ["bus"]}}, "unknown classes ['bus']; the model's classes are: person, car"),
    ({"model": {"class_conf": {"Person": 0.5}}}, "unknown classes ['Person']"),
    ({"analytics": {"zones": [{"name": "z", "polygon": [[0, 0], [1, 0], [1, 1]], "classes": ["truck"]}]}},
     "zone 'z' lists unknown classes ['truck']"),
])
def test_bad_values_are_config_errors(tmp_path, model, capsys, top, needle):
    code, out = _validate(capsys, _cfg(tmp_path, model, **top))
    assert code == 2, out
    assert needle in out, out


def test_missing_input_file_is_named_by_validate(tmp_path, model, capsys):
    cfg = _cfg(tmp_path, model, streams=[{"name": "typo", "url": str(tmp_path / "cilp.mp4")},
                                         {"name": "stand_in", "url": str(tmp_path / "later.mp4"), "live": True}])
    code, out = _validate(capsys, cfg)
    assert code == 4  # valid config, but a run here would end with this input failed
    warnings = out.split("cannot be used here (exit 4):", 1)[1]
    assert "streams[0] (typo)" in warnings and "not found" in warnings and "stand_in" not in warnings


@pytest.mark.parametrize("content", ["", "# nothing here\n", "{}\n"])
def test_empty_config_is_refused_by_validate_and_run(tmp_path, capsys, content):
    p = tmp_path / "empty.yaml"
    p.write_text(content)
    for cmd in (["validate", str(p)], ["run", str(p), "--quiet"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "the file is empty" in err and "streams:" in err


def test_no_streams_and_no_api_is_refused(tmp_path, model, capsys):
    p = _cfg(tmp_path, model, streams=[])
    assert main(["run", str(p), "--quiet"]) == 2
    assert "no streams" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "directory", "empty"])
def test_unusable_model_file_exits_3(tmp_path, model, capsys, kind):
    bad = tmp_path / "bad.onnx"
    if kind == "directory":
        bad.mkdir()
    elif kind == "empty":
        bad.write_bytes(b"")
    p = _cfg(tmp_path, bad)
    needle = {"missing": "does not exist", "directory": "is a directory, not a model file", "empty": "is empty"}[kind]
    for cmd in (["validate", str(p)], ["run", str(p), "--quiet"]):
        assert main(cmd) == 3
        err = capsys.readouterr().err
        assert needle in err and "Protobuf" not in err and "Traceback" not in err
