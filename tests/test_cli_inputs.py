"""Outside inputs as users bring them: files that cannot be read, truncated files, wrong URL schemes.

Each case runs `vap` as a subprocess (as operators start it) and checks the exit code, the message
and that it ends within seconds; no traceback may reach the user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_models import constant_detector
from tests.videos import truncated_copy, write_video

ROOT = Path(__file__).resolve().parent.parent


def vap(*args: str, timeout: float = 60) -> tuple[int, str, float]:
    """Run `python -m vap_video.pipeline.cli ARGS`; (exit code, stdout+stderr, seconds)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode, proc.stdout, time.monotonic() - t0


def _config(tmp_path: Path, streams: list[dict], **extra: object) -> Path:
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    cfg = {"streams": streams, "model": {"path": str(model)}, "server": {"enabled": False},
           "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}], **extra}
    path = tmp_path / "vap.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def test_files_run_ends_with_exit_4_naming_each_failed_input(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4", frames=20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    moovless = truncated_copy(good, tmp_path / "moovless.mp4", keep=0.5)
    streams = [{"name": "good", "url": str(good)}, {"name": "typo", "url": str(tmp_path / "goood.mp4")},
               {"name": "empty", "url": str(empty)}, {"name": "moovless", "url": str(moovless)}]
    code, out, seconds = vap("run", str(_config(tmp_path, streams)), "--quiet")
    assert code == 4, out
    assert seconds < 30
    assert "Traceback" not in out
    for name in ("typo", "empty", "moovless"):
        assert f"input {name}: failed: " in out, out
    assert "input good" not in out
    assert "not found" in out.split("input typo: failed: ")[1].splitlines()[0]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    down = {e["stream"]: e for e in events if e["type"] == "stream.down" and e["state"] == "failed"}
    assert set(down) == {"typo", "empty", "moovless"}
    assert any(e["type"] == "track.start" and e["stream"] == "good" for e in events)


def test_truncated_file_is_reported_and_exits_4(tmp_path: Path) -> None:
    full = write_video(tmp_path / "full.mkv", frames=50)
    cut = truncated_copy(full, tmp_path / "cut.mkv", keep=0.5)
    code, out, _ = vap("run", str(_config(tmp_path, [{"name": "cut", "url": str(cut)}])), "--quiet")
    assert code == 4, out
    assert "input cut: truncated: " in out and "WARNING" in out and "Traceback" not in out


def test_every_input_processed_exits_0(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mkv", frames=10)
    code, out, _ = vap("run", str(_config(tmp_path, [{"name": "good", "url": str(good)}])), "--quiet")
    assert code == 0, out


@pytest.mark.parametrize("url", ["ftp://host/x.mp4", "smb://nas/share/cam.mkv", "rtmp://host/live/key"])
def test_validate_refuses_unsupported_url_schemes(tmp_path: Path, url: str) -> None:
    code, out, _ = vap("validate", str(_config(tmp_path, [{"name": "a", "url": url}])))
    assert code == 2, out
    scheme = url.split(":")[0]
    assert f"URL scheme {scheme!r} is not supported" in out and "streams[0].url" in out
    assert "Traceback" not in out
