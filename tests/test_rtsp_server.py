"""Integration with a real RTSP server (GStreamer gst-rtsp-server, run by the system Python).

Covers what a camera fleet does to the supervisor: frames over RTSP, a server that dies and comes
back on the same port, and wrong path / port / password next to a healthy stream.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.config import StreamConfig

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")


def _gst_rtsp_available() -> str | None:
    """None if the GStreamer RTSP server can run here, else the reason it cannot."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (the GStreamer RTSP server runs under the system Python)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer','1.0'); "
                              "from gi.repository import GstRtspServer"],
        capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return ("GStreamer RTSP server unavailable (install gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 "
                f"python3-gi): {probe.stderr.strip().splitlines()[-1:]}")
    return None


_REASON = _gst_rtsp_available()
pytestmark = [pytest.mark.rtsp, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """The launcher as a subprocess: start() waits for READY, kill() is a camera losing power."""

    def __init__(self, port: int, path: str = "/cam", width: int = 320, height: int = 240,
                 user: str | None = None, password: str | None = None) -> None:
        self.port, self.path, self.width, self.height = port, path, width, height
        self.args = [SYSTEM_PYTHON, str(SERVER), "--port", str(port), "--path", path,
                     "--width", str(width), "--height", str(height)]
        if user is not None:
            self.args += ["--user", user, "--password", password or ""]
        self.proc: subprocess.Popen | None = None

    def url(self, path: str | None = None, auth: str = "") -> str:
        return f"rtsp://{auth}127.0.0.1:{self.port}{path or self.path}"

    def start(self, timeout: float = 15.0) -> RtspServer:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            lines.append(self.proc.stdout.readline().strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not lines or lines[0] != "READY":
            err = ""
            self.kill()
            if self.proc.stderr is not None:
                err = self.proc.stderr.read()[-500:]
            raise RuntimeError(f"RTSP server did not start: {lines} {err}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def servers():
    started: list[RtspServer] = []

    def make(**kw) -> RtspServer:
        srv = RtspServer(free_port(), **kw).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.kill()


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


FAST = dict(open_timeout_s=3.0, read_timeout_s=1.5, backoff_initial_s=0.2, backoff_max_s=0.5, stall_min_s=0.5)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_frames_arrive_with_size_and_increasing_pts(servers, rig, transport: str) -> None:
    col, metrics, sup = rig
    srv = servers(width=320, height=240)
    sup.add(StreamConfig(name="cam", url=srv.url(), transport=transport, **FAST))
    assert wait_for(lambda: len(col.of("cam")) >= 25, timeout=15)
    frames = col.of("cam")
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    # FFmpeg's RTP demuxer gives the very first packet no timestamp (it has no RTCP sync yet),
    # so that frame honestly carries pts=None; every later frame has one, strictly increasing.
    pts = [f.pts for f in frames[1:]]
    assert all(p is not None for p in pts) and all(b > a for a, b in zip(pts, pts[1:]))
    assert np.median(np.diff(pts)) == pytest.approx(0.04, abs=1e-3)  # 25 fps
    assert [f.index for f in frames] == list(range(len(frames)))
    # the ball pattern is not a flat picture
    assert frames[-1].image.std() > 10
    snap = sup.snapshot()[0]
    assert snap["state"] == "streaming" and snap["live"] is True and snap["resolution"] == [320, 240]
    assert metrics.registry.get_sample_value("vap_stream_up", {"stream": "cam"}) == 1
    # the watchdog measures the decode rate once a second: the server sends 25 fps
    assert wait_for(lambda: 18 <= sup.snapshot()[0]["fps"] <= 32, timeout=4), sup.snapshot()[0]["fps"]
    assert 18 <= metrics.registry.get_sample_value("vap_stream_fps", {"stream": "cam"}) <= 32


def test_server_restart_recovers_by_itself(servers, rig) -> None:
    col, metrics, sup = rig
    srv = servers()
    sup.add(StreamConfig(name="cam", url=srv.url(), **FAST))
    assert wait_for(lambda: len(col.of("cam")) >= 10, timeout=15)
    srv.kill()
    assert wait_for(lambda: sup.worker("cam").state in ("stalled", "backoff"), timeout=5)
    assert wait_for(lambda: "backoff" in col.seq("cam"), timeout=6)
    down_at = len(col.of("cam"))
    srv.start()  # same port
    assert wait_for(lambda: sup.worker("cam").state == "streaming", timeout=15)
    assert wait_for(lambda: len(col.of("cam")) >= down_at + 10, timeout=10)
    seq = col.seq("cam")
    assert seq[:2] == ["starting", "streaming"]
    assert "backoff" in seq and seq[-1] == "streaming"
    snap = sup.snapshot()[0]
    assert snap["reconnects"] >= 1 and snap["last_error"]
    assert metrics.registry.get_sample_value("vap_stream_reconnects_total", {"stream": "cam"}) >= 1
    idx = [f.index for f in col.of("cam")]
    assert idx == list(range(len(idx)))


def test_frozen_server_stalls_then_times_out_and_recovers(servers, rig) -> None:
    """A camera that keeps the TCP connection open but sends nothing (SIGSTOP): the watchdog marks
    it stalled from the frame interval, the read timeout turns it into a reconnect, and it comes
    back once the camera does."""
    col, _, sup = rig
    srv = servers()
    sup.add(StreamConfig(name="cam", url=srv.url(), **FAST))
    assert wait_for(lambda: len(col.of("cam")) >= 10, timeout=15)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        assert wait_for(lambda: "stalled" in col.seq("cam"), timeout=3)
        assert wait_for(lambda: "backoff" in col.seq("cam"), timeout=6)
        assert "timeout" in (sup.worker("cam").last_error or "")
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    n = len(col.of("cam"))
    assert wait_for(lambda: sup.worker("cam").state == "streaming" and len(col.of("cam")) > n + 5, timeout=15)
    seq = col.seq("cam")
    assert seq.index("stalled") < seq.index("backoff")


def test_remove_during_a_blocked_read_returns_in_time_and_releases(servers, rig) -> None:
    """stop()/remove() cannot interrupt FFmpeg mid-read, but they return within their timeout and
    the reader closes its decoder as soon as the read times out (read_timeout_s)."""
    col, _, sup = rig
    srv = servers()
    sup.add(StreamConfig(name="cam", url=srv.url(), **FAST))
    assert wait_for(lambda: len(col.of("cam")) >= 5, timeout=15)
    w = sup.worker("cam")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.3)  # the reader is now blocked inside av_read_frame
        t0 = time.monotonic()
        sup.remove("cam", timeout=0.5)
        assert time.monotonic() - t0 < 0.8
        assert w.state == "stopped" and sup.names() == []
        assert wait_for(lambda: not w.alive, timeout=FAST["read_timeout_s"] + 1.0)
        assert w._source is None  # the session's finally closed the container
        assert col.seq("cam")[-1] == "stopped"  # nothing written after the stop
    finally:
        srv.proc.send_signal(signal.SIGCONT)


def test_bad_streams_report_clearly_while_a_good_one_flows(servers, rig) -> None:
    col, _, sup = rig
    good = servers()
    locked = servers(user="admin", password="secret")
    dead_port = free_port()
    sup.add(StreamConfig(name="wrong_path", url=good.url("/nope"), **FAST))
    sup.add(StreamConfig(name="wrong_port", url=f"rtsp://127.0.0.1:{dead_port}/cam", **FAST))
    sup.add(StreamConfig(name="wrong_pass", url=locked.url(auth="admin:guess@"), **FAST))
    sup.add(StreamConfig(name="right_pass", url=locked.url(auth="admin:secret@"), **FAST))
    sup.add(StreamConfig(name="good", url=good.url(), **FAST))

    def errors_reported() -> bool:
        snaps = {s["name"]: s for s in sup.snapshot()}
        return all(snaps[n]["last_error"] for n in ("wrong_path", "wrong_port", "wrong_pass"))

    assert wait_for(errors_reported, timeout=10)
    assert wait_for(lambda: len(col.of("good")) >= 25 and len(col.of("right_pass")) >= 10, timeout=15)
    snaps = {s["name"]: s for s in sup.snapshot()}
    for name in ("wrong_path", "wrong_port", "wrong_pass"):
        assert snaps[name]["state"] in ("backoff", "starting"), snaps[name]
        assert snaps[name]["frames"] == 0
        assert "backoff" in col.seq(name)
    assert snaps["wrong_path"]["last_error"] == f"{good.url('/nope')}: not found (404): check the path of the stream"
    assert snaps["wrong_port"]["last_error"].startswith(
        f"rtsp://127.0.0.1:{dead_port}/cam: unreachable: connection refused")
    assert snaps["wrong_pass"]["last_error"] == (
        f"rtsp://***@127.0.0.1:{locked.port}/cam: unauthorized (401): check the user and password")
    assert snaps["wrong_pass"]["url"] == f"rtsp://***@127.0.0.1:{locked.port}/cam"
    assert "guess" not in str(snaps) and "secret" not in str(snaps)
    assert all("guess" not in r and "secret" not in r for _, _, r in col.states)
    assert snaps["good"]["state"] == "streaming" and snaps["right_pass"]["state"] == "streaming"
    # the good stream kept flowing the whole time: no gap of more than a second between frames
    gaps = np.diff([f.capture_ts for f in col.of("good")])
    assert gaps.max() < 1.0


def test_long_outage_recovers_in_seconds_through_cheap_probes(servers, rig, monkeypatch) -> None:
    """A camera down long enough for the backoff to reach 15 s: the supervisor still sees it come
    back within seconds, because it knocks on the RTSP port (a bare TCP connect) every
    probe_interval_s while it waits, and opens the stream as soon as the port answers again. The
    full opens stay spaced by the backoff (counted below). Jitter is taken out so that the old
    behaviour (no probe: wait the full 15 s) fails for certain."""
    from vap_video.pipeline import stream_reader as sup_mod

    def ceiling(attempt: int, initial: float, cap: float, rng=None) -> float:
        return min(cap, initial * 2.0 ** attempt)

    monkeypatch.setattr(sup_mod, "backoff_delay", ceiling)
    col, metrics, sup = rig
    srv = servers()
    sup.add(StreamConfig(name="cam", url=srv.url(), open_timeout_s=3.0, read_timeout_s=1.5,
                         backoff_initial_s=15.0, backoff_max_s=15.0, probe_interval_s=0.5))
    assert wait_for(lambda: len(col.of("cam")) >= 10, timeout=15)
    srv.kill()
    assert wait_for(lambda: sup.worker("cam").state == "backoff", timeout=6)
    reconnects = sup.worker("cam").reconnects
    time.sleep(3.0)                              # down well past a few probes, far inside the 15 s backoff
    assert sup.worker("cam").reconnects == reconnects, "a probe must not be a full open"
    n = len(col.of("cam"))
    srv.start()                                  # same port; start() returns once it listens
    back = time.monotonic()
    assert wait_for(lambda: len(col.of("cam")) > n, timeout=20)
    took = time.monotonic() - back
    assert took < 5.0, f"first frame {took:.1f}s after the camera was back (backoff was 15 s)"
    assert sup.worker("cam").state == "streaming"
    assert sup.worker("cam").reconnects == reconnects + 1    # one full open did it


def test_probes_do_not_hammer_a_camera_that_answers_but_fails(rig, monkeypatch) -> None:
    """A port that accepts connections but never gives a stream (here: a bare TCP listener, so the
    open times out) answers every probe: it must keep its backoff, not get a full open per probe."""
    import socket as socket_mod

    from vap_video.pipeline import stream_reader as sup_mod

    monkeypatch.setattr(sup_mod, "backoff_delay",
                        lambda attempt, initial, cap, rng=None: min(cap, initial * 2.0 ** attempt))
    col, _, sup = rig
    listener = socket_mod.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    try:
        sup.add(StreamConfig(name="mute", url=f"rtsp://127.0.0.1:{port}/cam", open_timeout_s=0.5,
                             backoff_initial_s=3.0, backoff_max_s=3.0, probe_interval_s=0.2))
        time.sleep(5.0)
        # opens at ~0, ~3.5 (each 0.5 s timeout + 3 s backoff): two or three, never one per 0.2 s probe
        assert 1 <= sup.worker("mute").reconnects <= 2, sup.worker("mute").reconnects
    finally:
        listener.close()
