"""The synthetic source: URL parameters, pacing, finite scenes and looping (vap_video.engines.synth)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vap_video.pipeline.config import StreamConfig
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.sources import SourceError, SyntheticSource, open_source
from vap_video.pipeline.supervisor import Supervisor

synth = pytest.importorskip("vap_video.engines.synth", reason="the scene generator is not in this checkout")


def test_parameters_and_frames_match_the_scene() -> None:
    url = "synthetic://?seed=3&fps=50&width=96&height=64&objects=2&frames=6&haze=0.2"
    src = open_source(StreamConfig(name="syn", url=url, live=False))
    assert isinstance(src, SyntheticSource)
    src.open()
    frames = list(src.frames())
    src.close()
    assert len(frames) == 6
    scene = synth.SceneVideo(3, 96, 64, 50.0, 2, 0.2)
    for i, f in enumerate(frames):
        assert f.index == i and f.pts == pytest.approx(i / 50) and f.stream == "syn"
        assert f.image.shape == (64, 96, 3) and f.image.dtype == np.uint8
        assert np.array_equal(f.image, scene.frame(i)[0])


def test_live_synthetic_is_paced_and_non_live_is_not() -> None:
    url = "synthetic://?fps=25&width=64&height=48&objects=1&frames=11"
    t0 = time.monotonic()
    src = open_source(StreamConfig(name="syn", url=url))  # live by default
    n = sum(1 for _ in src.frames())
    paced = time.monotonic() - t0
    assert n == 11 and paced >= 0.38
    t0 = time.monotonic()
    n = sum(1 for _ in open_source(StreamConfig(name="syn", url=url, live=False)).frames())
    assert n == 11 and time.monotonic() - t0 < paced


def test_loop_continues_indices() -> None:
    src = open_source(StreamConfig(name="syn", url="synthetic://?width=64&height=48&frames=4", live=False, loop=True))
    got = []
    for f in src.frames():
        got.append(f)
        if len(got) == 10:
            break
    assert [f.index for f in got] == list(range(10))
    assert np.array_equal(got[0].image, got[4].image)


@pytest.mark.parametrize("query,needle", [("colour=red", "unknown synthetic parameter 'colour'"),
                                          ("fps=fast", "is not a number"), ("fps=0", "fps > 0")])
def test_bad_parameters_are_clear(query: str, needle: str) -> None:
    with pytest.raises(SourceError) as ei:
        open_source(StreamConfig(name="syn", url=f"synthetic://?{query}"))
    assert ei.value.kind == "unsupported" and needle in str(ei.value)


@pytest.mark.parametrize("query,needle", [("objects=999", "objects 0..250"), ("width=8", "width 32..7680"),
                                          ("haze=1.5", "haze in [0, 1)"), ("fps=1e9", "fps > 0 and <= 1000"),
                                          ("frames=-1", "frames >= 0"),
                                          ("fsp=10", "unknown synthetic parameter 'fsp'")])
def test_impossible_scenes_are_refused_at_config_load(query: str, needle: str) -> None:
    """Caught when the config is read (`vap validate`, `vap run`), not by a stream that retries for ever."""
    from vap_video.pipeline.config import ConfigError
    from vap_video.pipeline.settings import parse_settings

    with pytest.raises(ConfigError) as ce:
        parse_settings({"streams": [{"name": "syn", "url": f"synthetic://?{query}"}]})
    assert "streams[0].url" in str(ce.value) and needle in str(ce.value)
    with pytest.raises(SourceError) as ei:
        open_source(StreamConfig(name="syn", url=f"synthetic://?{query}"))
    assert ei.value.kind == "unsupported" and needle in str(ei.value)


def test_finite_synthetic_finishes_under_the_supervisor() -> None:
    got = []
    sup = Supervisor(lambda f: got.append(f.index) or True, Metrics())
    try:
        sup.add(StreamConfig(name="syn", url="synthetic://?width=64&height=48&fps=100&frames=8"))
        end = time.monotonic() + 5
        while not sup.all_finished() and time.monotonic() < end:
            time.sleep(0.02)
        assert sup.all_finished() and got == list(range(8))
    finally:
        sup.stop_all()
