"""`vap run` as operators start it: a subprocess, stopped by SIGTERM, must drain and exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.onnx_models import constant_detector
from tests.videos import write_video


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_first_frame(proc: subprocess.Popen, port: int, timeout_s: float, why: Callable[[], str]) -> None:
    """Until vap's /metrics shows cam1 processed a frame; fails with `why()` if the run dies or stalls."""
    deadline = time.time() + timeout_s
    while True:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            if 'vap_frames_processed_total{stream="cam1"}' in body:
                return
        except OSError:
            pass
        assert time.time() < deadline and proc.poll() is None, why()
        time.sleep(0.2)


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
    proc = subprocess.Popen([sys.executable, "-m", "vap_video.pipeline.cli", "run", str(cfg), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        _wait_first_frame(proc, port, 30, lambda: "vap run never processed a frame")
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


def test_second_sigterm_forces_130_while_stderr_is_blocked(tmp_path: Path):
    """A second SIGTERM 50 ms after the first must exit 130 at once, even while the main thread is stuck in
    a write to stderr (a slow log pipe under load). The old handler logged and printed from inside
    the signal handler, so the forced exit waited behind the blocked write (for ever, if the log
    reader hung), and a write re-entering the interrupted stderr buffer fails with "reentrant
    call", which logging swallows: the drain then ends with 0. A full pipe makes that moment certain."""
    import select
    import threading

    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    port = _free_port()
    cfg = tmp_path / "vap.yaml"
    cfg.write_text(f"""
streams:
  - {{name: cam1, url: "synthetic://?seed=1&fps=25&width=320&height=240", realtime: true}}
model: {{path: "{model}"}}
sinks: [{{path: "{tmp_path / 'events.jsonl'}"}}]
server: {{port: {port}}}
""")
    r, w = os.pipe()
    reading = threading.Event()
    reading.set()
    got: list[bytes] = []

    def drain() -> None:
        while True:
            if not reading.is_set():
                time.sleep(0.01)
                continue
            ready, _, _ = select.select([r], [], [], 0.05)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    return
                got.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen([sys.executable, "-m", "vap_video.pipeline.cli", "run", str(cfg), "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    os.close(w)
    try:
        _wait_first_frame(proc, port, 60, lambda: b"".join(got).decode(errors="replace"))
        reading.clear()
        time.sleep(0.1)
        # Fill the child's stderr pipe through a second, non-blocking description of it (the child's
        # own stays blocking), so its next write to stderr blocks.
        filler = os.open(f"/proc/self/fd/{r}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            while True:
                try:
                    os.write(filler, b"x" * 4096)
                except BlockingIOError:
                    try:
                        os.write(filler, b"x")
                        continue
                    except BlockingIOError:
                        break
        finally:
            os.close(filler)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)  # without reading: the forced exit must not wait for stderr
            exited_while_blocked = True
        except subprocess.TimeoutExpired:
            exited_while_blocked = False
        reading.set()
        proc.wait(30)
    finally:
        reading.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        os.close(r)
    assert exited_while_blocked, "the second SIGTERM waited for stderr to drain"
    assert proc.returncode == 130, proc.returncode
