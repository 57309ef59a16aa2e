"""`vap run` as operators start it: a subprocess, stopped by SIGTERM, must drain and exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from tests.onnx_models import constant_detector
from tests.videos import write_video


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_flushes_and_exits_zero(tmp_path: Path):
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    clip = write_video(tmp_path / "live.ts", frames=50)
    port = _free_port()
    cfg = tmp_path / "vap.yaml"
    cfg.write_text(f"""
streams:
  - {{name: cam1, url: "{clip}", live: true, realtime: true, loop: true}}
  - {{name: cam2, url: "rtsp://user:hunter2@127.0.0.1:{_free_port()}/nothing", open_timeout_s: 1}}
model: {{path: "{model}"}}
sinks: [{{path: "{tmp_path / 'events.jsonl'}"}}]
server: {{port: {port}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        deadline = time.time() + 30
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if 'vap_frames_processed_total{stream="cam1"}' in body:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "vap run never processed a frame"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "hunter2" not in out  # the unreachable camera's credentials never reach the log
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    types = [e["type"] for e in events if e["stream"] == "cam1"]
    assert types.count("track.start") == 1 and types.count("track.end") == 1
    down = [e for e in events if e["stream"] == "cam2"]
    assert down and down[0]["type"] == "stream.down" and "hunter2" not in json.dumps(down)
