"""`vap run SOURCE ... --save DIR`: videos, folders and globs without a YAML, and `annotate:` in a YAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from vap_video.engines.synth import write_video as write_scene
from tests.videos import count_frames

ROOT = Path(__file__).resolve().parent.parent


def vap(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode, proc.stdout


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _duration(path: Path) -> float:
    with av.open(str(path)) as c:
        times = [f.time for f in c.decode(video=0)]
    return times[-1] - times[0]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Two short synthetic-scene clips the shipped model detects objects in."""
    d = tmp_path_factory.mktemp("scenes")
    write_scene(d / "clip.mp4", seed=5, frames=40, width=320, height=192, fps=10, num_objects=3)
    write_scene(d / "gate.mkv", seed=6, frames=30, width=320, height=192, fps=10, num_objects=3)
    return d


def test_run_a_clip_saves_events_and_an_annotated_video(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, log = vap("run", str(scenes / "clip.mp4"), "--save", str(out))
    assert code == 0, log
    assert "Traceback" not in log
    events = _events(out / "events.jsonl")
    assert {e["stream"] for e in events} == {"clip"}
    assert any(e["type"] == "track.start" for e in events), [e["type"] for e in events]
    video = out / "clip.mp4"
    assert count_frames(video) == 40          # every frame of the file, drawn
    assert abs(_duration(video) - 3.9) < 0.05  # the source's own timing (10 fps), not a default rate
    # tracks are drawn: some frame differs from its source far beyond re-encoding noise
    with av.open(str(scenes / "clip.mp4")) as a, av.open(str(video)) as b:
        diffs = [np.abs(fa.to_ndarray(format="rgb24").astype(int) - fb.to_ndarray(format="rgb24").astype(int))
                 .max(axis=2).__gt__(80).mean() for fa, fb in zip(a.decode(video=0), b.decode(video=0))]
    assert max(diffs) > 0.002, max(diffs)


def test_folder_and_glob_sources_with_model_options(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = ROOT / "vap_video" / "engines" / "models" / "vap-synth-n.onnx"
    names = json.loads(model.with_suffix(".json").read_text())["names"]
    first = json.loads(names)["0"] if isinstance(names, str) else names["0"]
    code, log = vap("run", str(scenes), str(scenes / "*.mp4"), "--model", str(model), "--save", str(out),
                    "--conf", "0.3", "--classes", first, "--quiet")
    assert code == 0, log
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip.mp4", "gate.mp4"]  # the glob repeat is dropped
    events = _events(out / "events.jsonl")
    starts = [e for e in events if e["type"] == "track.start"]
    assert starts and all(e["class"] == first for e in starts)
    assert all(e["score"] >= 0.3 for e in starts)


@pytest.mark.parametrize("args,code,needle", [
    (["nope.mp4"], 2, "nope.mp4: no such file or folder"),
    (["clips/*.mp4"], 2, "the pattern matches no file"),
    (["ftp://host/x.mp4"], 2, "URL scheme 'ftp' is not supported"),
    (["{clip}", "--classes", "unicorn"], 2, "unknown classes ['unicorn']"),
    (["{clip}", "--conf", "7"], 2, "model.conf"),
    (["{clip}", "--model", "{scenes}"], 3, "is a directory, not a model file"),
])
def test_bad_source_arguments_are_named(scenes: Path, tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    args = [a.format(clip=scenes / "clip.mp4", scenes=scenes) for a in args]
    got, log = vap("run", *args, "--quiet", cwd=tmp_path)
    assert got == code, log
    assert needle in log and "Traceback" not in log


def test_a_video_given_where_a_yaml_is_expected_is_named(scenes: Path) -> None:
    code, log = vap("validate", str(scenes / "clip.mp4"))
    assert code == 2 and "not a text file" in log and "vap run" in log and "Traceback" not in log


def test_annotate_section_in_a_yaml(scenes: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "vap.yaml"
    cfg.write_text(json.dumps({
        "streams": [{"name": "a", "url": str(scenes / "clip.mp4")}, {"name": "b", "url": str(scenes / "gate.mkv")}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}], "server": {"enabled": False},
        "annotate": {"enabled": True, "dir": str(tmp_path / "videos"), "streams": ["b"]}}))
    code, log = vap("run", str(cfg), "--quiet")
    assert code == 0, log
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["b.mp4"]
    assert count_frames(tmp_path / "videos" / "b.mp4") == 30
    cfg.write_text(cfg.read_text().replace('["b"]', '["c"]'))
    code, log = vap("validate", str(cfg))
    assert code == 2 and "annotate.streams names streams that are not configured: ['c']" in log


def test_input_inside_the_save_folder_is_never_overwritten(scenes: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((scenes / "clip.mp4").read_bytes())
    before = clip.read_bytes()
    code, log = vap("run", str(clip), "--save", str(tmp_path), "--quiet")
    assert code == 0, log
    assert clip.read_bytes() == before
    assert count_frames(tmp_path / "clip.annotated.mp4") == 40


def test_source_names_and_kinds(tmp_path: Path) -> None:
    """URLs, devices and same-named files become distinct, valid stream names; credentials never in a name."""
    from vap_video.pipeline.quickrun import source_settings

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "gate.mp4").write_bytes(b"")
    s = source_settings([str(tmp_path / "a" / "gate.mp4"), str(tmp_path / "b" / "gate.mp4"),
                         "rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101", "/dev/video0",
                         "synthetic://?seed=2&frames=5"])
    assert [x.name for x in s.streams] == ["gate", "gate_2", "10.0.0.5_Streaming_Channels_101", "video0",
                                           "synthetic"]
    assert [x.kind for x in s.streams] == ["file", "file", "rtsp", "v4l2", "synthetic"]
    assert not s.server.enabled and not s.annotate.enabled
    assert source_settings(["synthetic://"], port=0).server.enabled
