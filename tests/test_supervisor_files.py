"""Supervisor and StreamReader: state machine, backpressure, stride, damage, stop, isolation, watchdog."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline import stream_reader as sup_mod
from vap_video.pipeline.config import StreamConfig
from vap_video.pipeline.frames import Frame
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.sources import Source, SourceError
from vap_video.pipeline.reconnect import backoff_delay
from vap_video.pipeline.stream_reader import StreamReader
from vap_video.pipeline.supervisor import Supervisor
from tests.videos import corrupted_copy, resolution_change_ts, truncated_copy, write_video


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_file_runs_to_finished_with_every_frame_once(tmp_path: Path, rig) -> None:
    col, metrics, sup = rig
    path = write_video(tmp_path / "a.mp4", frames=40)
    sup.add(StreamConfig(name="a", url=str(path)))
    assert wait_for(sup.all_finished)
    frames = col.of("a")
    assert [f.index for f in frames] == list(range(40))
    assert col.state_seq("a") == ["starting", "streaming", "finished"]
    assert sample(metrics, "vap_frames_decoded_total", stream="a") == 40
    assert sample(metrics, "vap_stream_state", stream="a", state="finished") == 1
    assert sample(metrics, "vap_stream_up", stream="a") == 0
    snap = sup.snapshot()[0]
    assert snap["state"] == "finished" and snap["frames"] == 40 and snap["resolution"] == [160, 120]
    assert snap["reconnects"] == 0 and snap["last_error"] is None and snap["live"] is False


def test_damaged_files_finish_and_count_damage(tmp_path: Path, rig) -> None:
    col, metrics, sup = rig
    full = write_video(tmp_path / "full.mkv", frames=50)
    truncated_copy(full, tmp_path / "cut.mkv", keep=0.5)
    full_mp4 = write_video(tmp_path / "full.mp4", frames=50)
    corrupted_copy(full_mp4, tmp_path / "bad.mp4", at=0.5, nbytes=2000)
    sup.add(StreamConfig(name="cut", url=str(tmp_path / "cut.mkv")))
    sup.add(StreamConfig(name="bad", url=str(tmp_path / "bad.mp4")))
    assert wait_for(sup.all_finished)
    for name in ("cut", "bad"):
        frames = col.of(name)
        assert 10 <= len(frames) < 50
        assert [f.index for f in frames] == list(range(len(frames)))
        assert sample(metrics, "vap_decode_errors_total", stream=name) >= 1
        snap = next(s for s in sup.snapshot() if s["name"] == name)
        assert snap["state"] == "finished" and snap["decode_errors"] >= 1
        assert "damaged" in snap["last_error"]
        assert col.state_seq(name)[-1] == "finished"


def test_resolution_change_keeps_streaming(tmp_path: Path, rig) -> None:
    col, _, sup = rig
    path = resolution_change_ts(tmp_path / "rc.ts", frames_each=15)
    sup.add(StreamConfig(name="rc", url=str(path)))
    assert wait_for(sup.all_finished)
    shapes = [f.shape for f in col.of("rc")]
    assert shapes == [(120, 160)] * 15 + [(176, 240)] * 15
    assert sup.snapshot()[0]["resolution"] == [240, 176]
    assert sup.snapshot()[0]["reconnects"] == 0


def test_max_fps_stride_drops_are_counted(tmp_path: Path, rig) -> None:
    col, metrics, sup = rig
    path = write_video(tmp_path / "a.mkv", frames=50, fps=25)  # 2 s of video
    sup.add(StreamConfig(name="a", url=str(path), max_fps=10))
    assert wait_for(sup.all_finished)
    frames = col.of("a")
    assert 19 <= len(frames) <= 21  # 10 fps over 2 s
    gaps = np.diff([f.pts for f in frames])
    assert gaps.min() >= 0.08 - 1e-6 and gaps.max() <= 0.12 + 1e-6
    drops = sample(metrics, "vap_frames_dropped_total", stream="a", reason="stride")
    assert drops == 50 - len(frames)
    assert sup.snapshot()[0]["drops"] == drops
    assert [f.index for f in frames] == list(range(len(frames)))  # index counts emitted frames


def test_backpressure_waits_and_loses_nothing(tmp_path: Path) -> None:
    """A slow consumer makes the file wait; the worker never reads ahead of the frame it emits."""
    path = write_video(tmp_path / "a.mkv", frames=30)
    gate = threading.Event()
    got: list[int] = []

    def emit(frame: Frame) -> bool:
        if frame.index == 5:
            gate.wait(10)
        got.append(frame.index)
        return True

    w = StreamReader(StreamConfig(name="a", url=str(path)), emit, Metrics())
    w.start()
    try:
        assert wait_for(lambda: w.frames == 6)
        time.sleep(0.3)  # plenty of time to read ahead, if it did
        assert w.decoded == 6 and got == list(range(5))
        gate.set()
        assert wait_for(lambda: w.state == "finished")
        assert got == list(range(30))
    finally:
        gate.set()
        w.stop()


def test_emit_false_stops_reading(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mkv", frames=30)
    got: list[int] = []

    def emit(frame: Frame) -> bool:
        got.append(frame.index)
        return frame.index < 9

    w = StreamReader(StreamConfig(name="a", url=str(path)), emit, Metrics())
    w.start()
    assert wait_for(lambda: w.state == "stopped")
    assert wait_for(lambda: not w.alive)
    assert got == list(range(10))


def test_stop_releases_promptly(tmp_path: Path, rig) -> None:
    col, metrics, sup = rig
    path = write_video(tmp_path / "a.mkv", frames=20)
    sup.add(StreamConfig(name="a", url=str(path), loop=True, realtime=True))
    assert wait_for(lambda: len(col.of("a")) >= 3)
    w = sup.worker("a")
    t0 = time.monotonic()
    sup.remove("a", timeout=2.0)
    assert time.monotonic() - t0 < 1.0
    assert not w.alive and w._source is None
    assert w.state == "stopped" and col.state_seq("a")[-1] == "stopped"
    assert sup.names() == []
    assert metrics.registry.get_sample_value("vap_stream_up", {"stream": "a"}) is None  # series forgotten
    n = len(col.of("a"))
    time.sleep(0.2)
    assert len(col.of("a")) == n


def test_add_remove_errors(tmp_path: Path, rig) -> None:
    _, _, sup = rig
    path = write_video(tmp_path / "a.mkv", frames=5)
    sup.add(StreamConfig(name="a", url=str(path)))
    with pytest.raises(ValueError, match="already exists"):
        sup.add(StreamConfig(name="a", url=str(path)))
    with pytest.raises(KeyError, match="no stream named 'b'"):
        sup.remove("b")
    with pytest.raises(ValueError, match="unsupported source"):
        sup.add(StreamConfig(name="c", url="gopher://x/y"))


def test_dead_stream_does_not_delay_another(tmp_path: Path, rig) -> None:
    col, _, sup = rig
    # A server that accepts TCP but never answers: the RTSP open hangs until open_timeout_s.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        port = silent.getsockname()[1]
        sup.add(StreamConfig(name="dead", url=f"rtsp://127.0.0.1:{port}/cam", open_timeout_s=2.0,
                             backoff_initial_s=0.1, backoff_max_s=0.2))
        path = write_video(tmp_path / "a.mkv", frames=10)
        t0 = time.monotonic()
        sup.add(StreamConfig(name="ok", url=str(path)))
        assert wait_for(lambda: len(col.of("ok")) >= 1, timeout=5)
        assert time.monotonic() - t0 < 1.5
        assert sup.worker("dead").state == "starting"  # still inside its open
        assert wait_for(lambda: sup.worker("dead").last_error is not None, timeout=6)
        snap = next(s for s in sup.snapshot() if s["name"] == "dead")
        assert "timeout" in snap["last_error"] and snap["state"] in ("backoff", "starting")
        assert len(col.of("ok")) == 10
    finally:
        silent.close()


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "moovless", "directory"])
def test_unopenable_file_fails_at_once_without_retry(tmp_path: Path, rig, case: str) -> None:
    col, metrics, sup = rig
    good = write_video(tmp_path / "good.mp4", frames=30)
    target = tmp_path / f"{case}.mp4"
    if case == "empty":
        target.write_bytes(b"")
    elif case == "garbage":
        target.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(20000)))
    elif case == "moovless":  # an mp4 cut before its index (moov at the end): cannot be opened
        truncated_copy(good, target, keep=0.5)
    elif case == "directory":
        target.mkdir()
    sup.add(StreamConfig(name="a", url=str(target), backoff_initial_s=0.01, backoff_max_s=0.02))
    assert wait_for(sup.all_finished, timeout=5)
    time.sleep(0.2)  # a retry loop would have reconnected by now
    w = sup.worker("a")
    assert w.state == "failed" and w.reconnects == 0, (w.state, w.reconnects)
    assert col.state_seq("a") == ["starting", "failed"]
    assert w.failed and str(target) in w.failed
    expect = {"missing": "not found", "directory": "directory"}.get(case)
    if expect:
        assert expect in w.failed
    snap = sup.snapshot()[0]
    assert snap["state"] == "failed" and snap["failed"] == w.failed
    assert sample(metrics, "vap_inputs_incomplete_total", stream="a", reason="failed") == 1
    assert sample(metrics, "vap_stream_state", stream="a", state="failed") == 1
    assert not col.of("a")


def test_live_file_keeps_the_reconnect_loop(tmp_path: Path, rig) -> None:
    """A file configured live: true stands in for a camera: it is retried, and picked up once it appears."""
    col, metrics, sup = rig
    target = tmp_path / "later.mkv"
    sup.add(StreamConfig(name="a", url=str(target), live=True, backoff_initial_s=0.05, backoff_max_s=0.1))
    assert wait_for(lambda: sup.worker("a").reconnects >= 2)
    snap = sup.snapshot()[0]
    assert snap["state"] in ("backoff", "starting") and "not found" in snap["last_error"]
    assert snap["failed"] is None
    assert sample(metrics, "vap_stream_reconnects_total", stream="a") >= 2
    write_video(target, frames=8)
    assert wait_for(lambda: len(col.of("a")) >= 8, timeout=5)


def test_file_without_a_decodable_frame_fails(tmp_path: Path, rig) -> None:
    """A file that opens but whose video data is all garbage fails: nothing of it was processed."""
    col, metrics, sup = rig
    full = write_video(tmp_path / "full.ts", frames=30)
    data = bytearray(full.read_bytes())
    rng = random.Random(2)
    for off in range(0, len(data), 188):  # keep the TS sync/header bytes, scramble every payload
        data[off + 4:off + 188] = bytes(rng.randrange(256) for _ in range(min(184, len(data) - off - 4)))
    bad = tmp_path / "scrambled.ts"
    bad.write_bytes(bytes(data))
    sup.add(StreamConfig(name="s", url=str(bad)))
    assert wait_for(sup.all_finished, timeout=10)
    w = sup.worker("s")
    assert w.state == "failed" and w.reconnects == 0
    assert sample(metrics, "vap_inputs_incomplete_total", stream="s", reason="failed") == 1


def test_truncated_file_finishes_as_truncated(tmp_path: Path, rig) -> None:
    col, metrics, sup = rig
    full = write_video(tmp_path / "full.mkv", frames=50)
    truncated_copy(full, tmp_path / "cut.mkv", keep=0.5)
    sup.add(StreamConfig(name="cut", url=str(tmp_path / "cut.mkv")))
    sup.add(StreamConfig(name="ok", url=str(full)))
    assert wait_for(sup.all_finished)
    assert col.state_seq("cut")[-1] == "finished"
    reason = col.reasons("cut")[-1]
    assert reason.startswith("truncated: ") and "declares" in reason
    assert sup.worker("cut").truncated and sup.worker("ok").truncated is None
    assert sample(metrics, "vap_inputs_incomplete_total", stream="cut", reason="truncated") == 1
    assert sample(metrics, "vap_inputs_incomplete_total", stream="ok", reason="truncated") == 0
    assert col.reasons("ok")[-1] == "end of file"


def test_backoff_delay_is_capped_full_jitter() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        ceiling = min(4.0, 0.5 * 2 ** attempt)
        draws = [backoff_delay(attempt, 0.5, 4.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling  # spread over the whole range


def test_all_finished_semantics(tmp_path: Path, rig) -> None:
    _, _, sup = rig
    assert not sup.all_finished()  # nothing yet: streams may still be added
    path = write_video(tmp_path / "a.mkv", frames=5)
    sup.add(StreamConfig(name="a", url=str(path)))
    sup.add(StreamConfig(name="cam", url="rtsp://127.0.0.1:1/cam", backoff_initial_s=0.05, backoff_max_s=0.1))
    assert wait_for(lambda: sup.worker("a").state == "finished")
    time.sleep(0.1)
    assert not sup.all_finished()  # a camera never finishes
    sup.remove("cam")
    assert sup.all_finished()


# ------------------------------------------------------------------------------ watchdog (fake sources)


class ScriptedSource(Source):
    """Yields frames at `fps`, then goes quiet inside a 'read' for `pause` seconds, then resumes."""

    def __init__(self, cfg: StreamConfig, first: int, pause: float, then: int, fps: float = 50.0,
                 ignore_interrupt: bool = False) -> None:
        super().__init__(cfg)
        self.first, self.pause, self.then, self.fps = first, pause, then, fps
        self.ignore_interrupt = ignore_interrupt
        self.closed = threading.Event()

    def open(self) -> None:
        pass

    def close(self) -> None:
        self.closed.set()

    def _read(self, seconds: float) -> None:
        self.blocked_since = time.monotonic()
        if self.ignore_interrupt:
            time.sleep(seconds)
        else:
            self._interrupt.wait(seconds)
        self.blocked_since = None

    def frames(self) -> Iterator[Frame]:
        img = np.zeros((8, 8, 3), np.uint8)
        for i in range(self.first + self.then):
            if i == self.first:
                self._read(self.pause)
            else:
                self._read(1.0 / self.fps)
            if self._interrupt.is_set():
                return
            yield Frame(self.cfg.name, i, i / self.fps, time.time(), img)
        raise SourceError("eof", "scripted end")


def test_stall_detected_and_cleared(monkeypatch, rig) -> None:
    col, _, sup = rig
    monkeypatch.setattr(sup_mod, "open_source",
                        lambda cfg: ScriptedSource(cfg, first=20, pause=1.0, then=10**6))
    sup.add(StreamConfig(name="s", url="rtsp://cam/s", stall_min_s=0.3, stall_factor=5))
    assert wait_for(lambda: "stalled" in col.state_seq("s"), timeout=3)
    assert wait_for(lambda: col.state_seq("s")[-1] == "streaming", timeout=3)
    assert col.state_seq("s")[:4] == ["starting", "streaming", "stalled", "streaming"]
    reason = next(r for n, s, r in col.states if s == "stalled")
    assert "no frame for" in reason


class GapSource(Source):
    """Yields one frame after each of the scripted gaps (seconds), then frames at `fps` for ever."""

    def __init__(self, cfg: StreamConfig, gaps: list[float], fps: float = 50.0) -> None:
        super().__init__(cfg)
        self.gaps, self.fps = gaps, fps

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        img = np.zeros((8, 8, 3), np.uint8)
        i = 0
        while True:
            gap = self.gaps[i] if i < len(self.gaps) else 1.0 / self.fps
            self.blocked_since = time.monotonic()
            if self._interrupt.wait(gap):
                return
            self.blocked_since = None
            yield Frame(self.cfg.name, i, i / self.fps, time.time(), img)
            i += 1


def test_stall_recovery_has_hysteresis(monkeypatch) -> None:
    """A stalled stream that gets a late frame now and then (a loaded machine, a trickling camera)
    stays stalled; it is streaming again only after `stall_recover_s` of steady frames. Before, every
    late frame flipped it to streaming, 0.1 s later it was stalled again: stream.up/stalled flapping."""
    from tests.collector import Collector

    col = Collector()
    steady = [0.02] * 20
    trickle = [0.8, 0.02, 0.8, 0.02, 0.02, 0.8, 0.02]   # one or a few late frames between silences
    monkeypatch.setattr(sup_mod, "open_source", lambda cfg: GapSource(cfg, steady + [0.6] + trickle))
    times: list[tuple[float, str]] = []

    def timed(stream: str, state: str, reason: str) -> None:
        times.append((time.monotonic(), state))
        col.on_state(stream, state, reason)

    sup = Supervisor(col.emit, Metrics(), timed)
    try:
        sup.add(StreamConfig(name="s", url="rtsp://cam/s", stall_min_s=0.3, stall_factor=2, stall_recover_s=0.5))
        assert wait_for(lambda: "stalled" in col.state_seq("s"), timeout=10)
        time.sleep(3.5)  # the whole trickle (about 2.3 s), then steady frames for longer than stall_recover_s
        seq = col.state_seq("s")
        assert seq == ["starting", "streaming", "stalled", "streaming"], seq
        stalled_at = next(t for t, st in times if st == "stalled")
        back_at = [t for t, st in times if st == "streaming"][-1]
        assert back_at - stalled_at >= 1.8   # the trickle (about 2.3 s) did not count as recovery
        reason = [r for n, st, r in col.states if st == "streaming"][-1]
        assert reason.startswith("frames again for")
    finally:
        sup.stop_all(timeout=5)


def test_watchdog_abandons_a_hung_read(monkeypatch, rig) -> None:
    col, _, sup = rig
    made: list[ScriptedSource] = []

    def factory(cfg: StreamConfig) -> ScriptedSource:
        # the first connection hangs in a read that ignores every timeout; later ones behave
        s = ScriptedSource(cfg, first=5, pause=4.0 if not made else 0.0, then=10**6, ignore_interrupt=not made)
        made.append(s)
        return s

    monkeypatch.setattr(sup_mod, "open_source", factory)
    monkeypatch.setattr(sup_mod, "HANG_GRACE_S", 0.2)
    sup.add(StreamConfig(name="h", url="rtsp://cam/h", read_timeout_s=0.5, stall_min_s=0.2,
                         backoff_initial_s=0.05, backoff_max_s=0.1))
    assert wait_for(lambda: len(made) >= 2 and sup.worker("h").state == "streaming", timeout=4)
    w = sup.worker("h")
    assert w.reconnects >= 1 and "hung" in (w.last_error or "")
    n = len(col.of("h"))
    assert wait_for(lambda: len(col.of("h")) > n + 5)
    # the abandoned reader eventually returns, closes its decoder and emits nothing more
    assert made[0].closed.wait(5)
    idx = [f.index for f in col.of("h")]
    assert idx == list(range(len(idx)))


from tests.test_sources_files import http_dir  # noqa: E402,F401 - shared fixture (local HTTP server)


def test_live_decoder_breakdown_reconnects_and_counts(http_dir, monkeypatch, rig) -> None:  # noqa: F811
    import vap_video.pipeline.sources as sources

    col, metrics, sup = rig
    monkeypatch.setattr(sources, "MAX_CONSECUTIVE_ERRORS", 5)
    root, base = http_dir
    full = write_video(root / "full.mp4", frames=60, gop=60)
    corrupted_copy(full, root / "bad.mp4", at=0.3, nbytes=3000)
    sup.add(StreamConfig(name="cam", url=f"{base}/bad.mp4", backoff_initial_s=0.05, backoff_max_s=0.1))
    assert wait_for(lambda: sup.worker("cam").reconnects >= 2, timeout=10)
    w = sup.worker("cam")
    assert w.decode_errors >= 10 and sample(metrics, "vap_decode_errors_total", stream="cam") == w.decode_errors
    assert sample(metrics, "vap_stream_reconnects_total", stream="cam") == w.reconnects
    assert "could not be decoded" in (w.last_error or "")
    idx = [f.index for f in col.of("cam")]
    assert len(idx) > 20 and idx == list(range(len(idx)))  # index keeps counting across reconnects


@pytest.mark.parametrize("stream_s,expect_reset", [(0.4, True), (0.0, False)])
def test_backoff_resets_only_after_a_stable_period(monkeypatch, stream_s: float, expect_reset: bool) -> None:
    attempts: list[int] = []

    def recording(attempt: int, initial: float, cap: float, rng=None) -> float:
        attempts.append(attempt)
        return 0.01  # the attempt number is what is under test; keep the waits short

    class Flaky(ScriptedSource):
        def frames(self) -> Iterator[Frame]:
            img = np.zeros((8, 8, 3), np.uint8)
            end = time.monotonic() + stream_s
            i = 0
            while time.monotonic() < end:
                self._read(0.02)
                yield Frame(self.cfg.name, i, None, time.time(), img)
                i += 1
            raise SourceError("eof", "dropped")

    monkeypatch.setattr(sup_mod, "backoff_delay", recording)
    monkeypatch.setattr(sup_mod, "open_source", lambda cfg: Flaky(cfg, 0, 0, 0))
    sup = Supervisor(lambda f: True, Metrics(), stable_reset_s=0.3)
    try:
        sup.add(StreamConfig(name="f", url="rtsp://cam/f"))
        assert wait_for(lambda: len(attempts) >= 4, timeout=5)
    finally:
        sup.stop_all()
    if expect_reset:
        assert attempts[:4] == [0, 0, 0, 0]  # each session streamed longer than stable_reset_s
    else:
        assert attempts[:4] == [0, 1, 2, 3]  # failing straight away: the backoff keeps growing


def test_impossible_synthetic_scene_fails_at_once(rig) -> None:
    """Added without config validation (e.g. a StreamConfig built in code): no retry loop either."""
    _, metrics, sup = rig
    sup.add(StreamConfig(name="s", url="synthetic://?fps=0", backoff_initial_s=0.01, backoff_max_s=0.02))
    assert wait_for(sup.all_finished, timeout=5)
    time.sleep(0.1)
    w = sup.worker("s")
    assert w.state == "failed" and w.reconnects == 0 and "fps > 0" in (w.failed or "")
