"""The engine thread tuner: tries one more intra-op thread once the engine is the limit, keeps the faster."""

from __future__ import annotations

from pathlib import Path

import pytest

from vap_video.pipeline.engine_tuner import MARGIN, ThreadTuner


class FakeBackend:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drive(tuner: ThreadTuner, clock: Clock, seconds_per_frame: dict[int, float], busy: float = 1.0,
          batch: int = 8, until_s: float = 60.0) -> None:
    """Run batches on whatever session the tuner says, each taking the time its thread count
    takes in this made-up machine; `busy` is the engine's share of the wall time."""
    while not tuner.done and clock.t < until_s:
        b = tuner.backend
        run = batch * seconds_per_frame[b.threads]
        clock.t += run / busy
        tuner.observe(batch, run)
        if tuner._loader is not None:
            tuner._loader.join()


def make_tuner(clock: Clock, made: list[FakeBackend]) -> ThreadTuner:
    def make(threads: int) -> FakeBackend:
        made.append(FakeBackend(threads))
        return made[-1]

    return ThreadTuner(FakeBackend(1), 1, 2, make, clock=clock, warmup_s=1.0, window_s=3.0)  # type: ignore[arg-type]


def test_keeps_the_trial_when_it_is_faster_and_closes_the_base():
    clock, made = Clock(), []
    tuner = make_tuner(clock, made)
    base = tuner.backend
    chosen: list[int] = []
    tuner.on_choice = chosen.append
    drive(tuner, clock, {1: 0.045, 2: 0.023})           # an n-scale model at 640: 2 threads ~2x
    assert tuner.done and tuner.threads == 2 and tuner.backend is made[0]
    assert base.closed and not made[0].closed
    assert chosen == [2]
    assert "keeping 2" in tuner.decision


def test_goes_back_when_the_trial_is_not_faster_by_the_margin():
    clock, made = Clock(), []
    tuner = make_tuner(clock, made)
    base = tuner.backend
    drive(tuner, clock, {1: 0.007, 2: 0.007 / (MARGIN - 0.02)})   # faster, but within the margin
    assert tuner.done and tuner.threads == 1 and tuner.backend is base
    assert made[0].closed and not base.closed


def test_no_trial_when_the_engine_is_not_the_limit():
    clock, made = Clock(), []
    tuner = make_tuner(clock, made)
    drive(tuner, clock, {1: 0.007, 2: 0.003}, busy=0.5)   # live cameras at their own rate
    assert tuner.done and tuner.threads == 1 and made == []
    assert "not the limit" in tuner.decision


def test_a_stream_added_after_no_trial_starts_the_watch_again():
    clock, made = Clock(), []
    tuner = make_tuner(clock, made)
    drive(tuner, clock, {1: 0.045, 2: 0.023}, busy=0.5)   # one camera at its own rate
    assert tuner.done and made == []
    tuner.rearm()                                          # more cameras: now the engine is the limit
    drive(tuner, clock, {1: 0.045, 2: 0.023}, until_s=120.0)
    assert tuner.done and tuner.threads == 2 and len(made) == 1
    tuner.rearm()                                          # after a trial, one is enough
    assert tuner.done


def test_a_trial_that_cannot_open_leaves_the_base_running():
    clock = Clock()

    def make(threads: int) -> FakeBackend:
        raise MemoryError("no room for a second session")

    base = FakeBackend(1)
    tuner = ThreadTuner(base, 1, 2, make, clock=clock, warmup_s=1.0, window_s=3.0)  # type: ignore[arg-type]
    drive(tuner, clock, {1: 0.045})
    assert tuner.done and tuner.backend is base and not base.closed and tuner.threads == 1


def test_abandon_closes_the_session_not_in_use():
    clock, made = Clock(), []
    tuner = make_tuner(clock, made)
    base = tuner.backend
    # through the base window into the trial, then stop mid-trial
    while not made or tuner.backend is base:
        clock.t += 0.5
        tuner.observe(8, 0.5)
        if tuner._loader is not None:
            tuner._loader.join()
    tuner.abandon()
    assert base.closed and not made[0].closed and tuner.done


def test_pipeline_processes_every_frame_across_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The shipped model in the real pipeline, with short windows: whatever the tuner keeps, no
    frame is lost or processed twice while the sessions change, and the gauge says what it kept."""
    import vap_video.pipeline.engine_tuner as et
    from tests.videos import write_video
    from vap_video.pipeline.settings import parse_settings
    from vap_video.pipeline.runtime import Pipeline

    if et.usable_cores() < 2:
        pytest.skip("needs 2 cores: with one there is no thread count to try")
    monkeypatch.setattr(et, "SATURATED", 0.0)        # always try: a busy CI machine must not skip it
    frames = 600
    clip = write_video(tmp_path / "clip.mp4", width=640, height=360, frames=frames, gop=25)
    settings = parse_settings({"streams": [{"name": "cam", "url": str(clip)}],
                               "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"}],
                               "server": {"port": 0}})
    p = Pipeline(settings)
    tuner = p._tuner
    assert tuner is not None, "intra_op_threads 0 on 2+ cores: the pipeline should tune"
    tuner._warmup_s, tuner._window_s = 0.2, 0.6
    seen: list[int] = []
    sessions: set[int] = set()
    p.hooks.append(lambda frame, dets, tracks, new: (seen.append(frame.index), sessions.add(id(p.backend))))
    p.start()
    assert p.wait(120)
    p.stop()
    assert tuner.done, "the clip ended before the trial finished: make it longer"
    assert "keeping" in tuner.decision, tuner.decision
    assert len(sessions) >= 2, "the trial session never ran a batch"
    assert sorted(seen) == list(range(frames))
    assert p.metrics.engine_threads._value.get() == tuner.threads


def test_the_trial_session_does_not_announce_the_nms_fallback_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture):
    """A legacy one-to-many model is announced once, when the pipeline opens it; the tuner's second
    session of the same file says nothing (it did, once per session, before)."""
    import logging

    import vap_video.pipeline.engine_tuner as et
    from tests.onnx_models import one_to_many_variant
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.settings import parse_settings

    legacy = one_to_many_variant(Path("vap_video/engines/models/vap-synth-n.onnx"), tmp_path / "legacy.onnx")
    monkeypatch.setattr(et, "usable_cores", lambda: 8)
    settings = parse_settings({"model": {"path": str(legacy)}})
    with caplog.at_level(logging.WARNING, logger="vap.engine"):
        base = load_backend(legacy, "onnxruntime")
        tuner = et.thread_tuner_for(settings, base, "onnxruntime")
        assert tuner is not None
        trial = tuner._make(tuner._trial_threads)
    assert caplog.text.count("NMS FALLBACK") == 1
    assert trial.info.layout == base.info.layout
    trial.close()
    base.close()
