"""StreamAnalytics: zones, lines, stationary objects, lifecycle gating, schema validity, config errors."""

from __future__ import annotations

from collections.abc import Iterable

import jsonschema
import numpy as np
import pytest
from pydantic import ValidationError

from vap_video.pipeline.analytics import AnalyticsConfig, LineConfig, StreamAnalytics, ZoneConfig
from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.events import load_schema
from vap_video.pipeline.frames import Detections
from vap_video.pipeline.tracking import ByteTracker, TrackerConfig, Tracks

CLASSES = ["person", "car", "bicycle"]
FRAME = (720, 1280)  # (height, width)
T0 = 1_700_000_000.0
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def tracks(rows: Iterable[tuple[int, list[float], float, int]], ended: Iterable[int] = ()) -> Tracks:
    """Tracks from (id, box, score, class_id) rows."""
    rows = list(rows)
    return Tracks(
        ids=np.array([r[0] for r in rows], np.int64),
        boxes=np.array([r[1] for r in rows], np.float32).reshape(-1, 4),
        scores=np.array([r[2] for r in rows], np.float32),
        class_ids=np.array([r[3] for r in rows], np.int32),
        ended=np.array(list(ended), np.int64),
    )


def feet(x: float, y: float, w: float = 40, h: float = 100) -> list[float]:
    """Box whose bottom-centre is (x, y)."""
    return [x - w / 2, y - h, x + w / 2, y]


def run(an: StreamAnalytics, frames: list[Tracks], fps: float = 10.0, t0: float = 0.0) -> list[dict]:
    events = []
    for k, tr in enumerate(frames):
        t = t0 + k / fps
        evs = an.update(tr, t, T0 + t, FRAME)
        for e in evs:
            VALIDATOR.validate(e)
            e["_t"] = round(t, 3)
        events += evs
    return events


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


SQUARE = [(400, 300), (800, 300), (800, 600), (400, 600)]


def test_zone_enter_exit_dwell_loiter_with_inertia() -> None:
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="door", polygon=SQUARE, inertia_frames=3, loiter_s=2.0)])
    an = StreamAnalytics("cam1", cfg, CLASSES)
    xs = [300, 390, 410, 395, 420, 450, 500]  # wobbles on the edge before settling inside
    xs += [500] * 30  # 3 s inside
    xs += [805, 790, 820, 850, 900]  # wobbles out, then leaves
    frames = [tracks([(7, feet(x, 450), 0.9, 0)]) for x in xs]
    ev = run(an, frames)
    assert types(ev) == ["track.start", "zone.enter", "track.update", "zone.loiter", "zone.exit", "track.update"]
    enter, loiter, exit_ = ev[1], ev[3], ev[4]
    # inside from frame 4 (x=420) onward; 3 consecutive frames -> enter at frame 6
    assert enter["_t"] == pytest.approx(0.6) and enter["zone"] == "door" and enter["occupancy"] == 1
    assert enter["track_id"] == "cam1:7" and enter["class"] == "person" and enter["class_id"] == 0
    assert ev[2]["zones"] == ["door"]
    assert loiter["dwell_s"] == pytest.approx(2.0) and loiter["_t"] == pytest.approx(2.6)
    # outside from frame 39 (x=820); exit confirmed at frame 41
    assert exit_["_t"] == pytest.approx(4.1) and exit_["dwell_s"] == pytest.approx(3.5)
    assert exit_["occupancy"] == 0 and ev[5]["zones"] == []
    end = an.update(tracks([], ended=[7]), 5.0, T0 + 5, FRAME)
    assert types(end) == ["track.end"] and end[0]["zones"] == ["door"]
    assert end[0]["duration_s"] == pytest.approx(4.1)  # first seen 0.0, last seen 4.1
    assert an.open_tracks() == 0


def test_zone_occupancy_counts_tracks_and_class_filter() -> None:
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="lot", polygon=SQUARE, inertia_frames=1, classes=["car"])])
    an = StreamAnalytics("c", cfg, CLASSES)
    inside = [(1, feet(500, 400), 0.9, 1), (2, feet(600, 400), 0.9, 1), (3, feet(700, 400), 0.9, 0)]
    ev = run(an, [tracks(inside)])
    enters = [e for e in ev if e["type"] == "zone.enter"]
    assert [e["track_id"] for e in enters] == ["c:1", "c:2"]  # the person (3) is not watched
    assert [e["occupancy"] for e in enters] == [1, 2]
    assert an.occupancy() == {"lot": 2}
    ev = an.update(tracks(inside[1:], ended=[1]), 0.1, T0, FRAME)
    exits = [e for e in ev if e["type"] == "zone.exit"]
    assert [(e["track_id"], e["occupancy"]) for e in exits] == [("c:1", 1)]
    assert types(ev)[-1] == "track.end"


def test_relative_zone_scales_with_frame_size() -> None:
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="right", relative=True, inertia_frames=1,
                                            polygon=[(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)])])
    an = StreamAnalytics("c", cfg, CLASSES)
    assert "zone.enter" not in types(run(an, [tracks([(1, feet(600, 400), 0.9, 0)])]))  # 600 < 640
    an = StreamAnalytics("c", cfg, CLASSES)
    assert "zone.enter" in types(run(an, [tracks([(1, feet(700, 400), 0.9, 0)])]))


def test_line_crossing_counts_direction_and_ignores_jitter() -> None:
    # horizontal line drawn left to right at y=400: moving down = left->right side = "in"
    cfg = AnalyticsConfig(lines=[LineConfig(name="gate", points=((200, 400), (1000, 400)), hysteresis_px=10)])
    an = StreamAnalytics("c", cfg, CLASSES)
    ys = [300, 350, 380]
    ys += [395, 405, 398, 402, 396, 404] * 5  # box jitters on the line: never 10 px clear
    ys += [420, 450]  # clear below: one "in"
    ys += [405, 395, 412, 392, 409]  # jitter back on the line: nothing
    ys += [370, 330]  # back up: one "out"
    ev = run(an, [tracks([(3, feet(600, y), 0.9, 0)]) for y in ys])
    crosses = [e for e in ev if e["type"] == "line.cross"]
    assert [(e["direction"], e["line"]) for e in crosses] == [("in", "gate"), ("out", "gate")]
    assert crosses[0]["_t"] == pytest.approx(3.3)
    assert an.counts() == {"gate": {"in": 1, "out": 1}}
    assert an.counts_by_class() == {("gate", "in", "person"): 1, ("gate", "out", "person"): 1}


def test_line_ignores_paths_outside_the_segment_and_filters_classes() -> None:
    cfg = AnalyticsConfig(lines=[LineConfig(name="door", points=((500, 400), (700, 400)), classes=["bicycle"])])
    an = StreamAnalytics("c", cfg, CLASSES)
    frames = []
    for y in range(300, 520, 20):
        frames.append(tracks([(1, feet(600, y), 0.9, 2),  # bicycle through the door: counts
                              (2, feet(900, y), 0.9, 2),  # bicycle past the end of the segment: no
                              (3, feet(620, y), 0.9, 0)]))  # person through the door: filtered
    ev = run(an, frames)
    crosses = [e for e in ev if e["type"] == "line.cross"]
    assert [(e["track_id"], e["direction"], e["class"]) for e in crosses] == [("c:1", "in", "bicycle")]
    # reversed drawing order swaps the direction
    cfg2 = AnalyticsConfig(lines=[LineConfig(name="door", points=((700, 400), (500, 400)))])
    an2 = StreamAnalytics("c", cfg2, CLASSES)
    run(an2, [tracks([(1, feet(600, y), 0.9, 2)]) for y in range(300, 520, 20)])
    assert an2.counts() == {"door": {"in": 0, "out": 1}}


def test_stationary_object_emits_once_and_is_silenced() -> None:
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="lot", polygon=SQUARE, inertia_frames=2, loiter_s=3.0)],
                          stationary_s=2.0, update_interval_s=1.0)
    an = StreamAnalytics("c", cfg, CLASSES)
    rng = np.random.default_rng(0)
    frames = [tracks([(5, feet(300 + 20 * k, 450, 120, 80), 0.9, 1)]) for k in range(12)]  # drives in
    parked = [tracks([(5, list(np.array(feet(520, 450, 120, 80)) + rng.normal(0, 1.5, 4)), 0.9, 1)])
              for _ in range(100)]  # parks for 10 s with detector jitter
    leaving = [tracks([(5, feet(520 + 40 * k, 450, 120, 80), 0.9, 1)]) for k in range(1, 12)]
    ev = run(an, frames + parked + leaving)
    ty = types(ev)
    assert ty.count("object.stationary") == 1
    i = ty.index("object.stationary")
    t_stat = ev[i]["_t"]
    assert 3.0 <= t_stat <= 3.4  # parked from ~1.1 s plus 2 s
    # while parked: no loiter, no periodic updates (update_interval_s=1 would give ~8)
    parked_events = [e for e in ev[i + 1:] if e["_t"] < 11.0]
    assert parked_events == []
    assert "zone.loiter" not in ty[:i]  # loiter_s=3 never reached before it was parked
    # moving again: zone exit and updates resume
    after = types([e for e in ev if e["_t"] >= 11.0])
    assert "zone.exit" in after and "track.update" in after


def test_false_positive_gate() -> None:
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="z", polygon=SQUARE, inertia_frames=1)], min_start_score=0.5)
    an = StreamAnalytics("c", cfg, CLASSES)
    # a weak track (median 0.35) walking through the zone and ending: completely silent
    ev = run(an, [tracks([(1, feet(300 + 40 * k, 450), 0.3 + 0.1 * (k % 2), 0)]) for k in range(15)])
    ev += an.update(tracks([], ended=[1]), 2.0, T0 + 2, FRAME)
    assert ev == [] and an.open_tracks() == 0
    # a track whose median climbs past the gate starts late, then behaves normally
    scores = [0.3, 0.35, 0.4, 0.7, 0.8, 0.9, 0.9]
    ev = run(an, [tracks([(2, feet(500, 450), s, 0)]) for s in scores])
    assert types(ev)[:2] == ["track.start", "zone.enter"]
    assert ev[0]["_t"] == pytest.approx(0.5)  # first median >= 0.5: 0.55 over 6 scores
    assert 0 <= ev[0]["score"] <= 1


def test_finish_closes_every_started_track() -> None:
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="z", polygon=SQUARE, inertia_frames=1)])
    an = StreamAnalytics("c", cfg, CLASSES)
    run(an, [tracks([(1, feet(500, 450), 0.9, 0), (2, feet(100, 100), 0.9, 1), (3, feet(50, 50), 0.2, 0)])] * 3)
    ev = an.finish(1.0, T0 + 1)
    for e in ev:
        VALIDATOR.validate(e)
    assert [(e["type"], e["track_id"]) for e in ev] == [("zone.exit", "c:1"), ("track.end", "c:1"),
                                                         ("track.end", "c:2")]
    assert an.open_tracks() == 0 and an.occupancy() == {"z": 0}


def test_periodic_updates() -> None:
    an = StreamAnalytics("c", AnalyticsConfig(update_interval_s=0.5), CLASSES)
    ev = run(an, [tracks([(1, feet(100 + 10 * k, 450), 0.9, 0)]) for k in range(21)])  # 2 s at 10 fps
    assert types(ev) == ["track.start"] + ["track.update"] * 4


def test_stale_tracks_are_ended_without_tracker_notice() -> None:
    an = StreamAnalytics("c", AnalyticsConfig(stale_track_s=5.0), CLASSES)
    run(an, [tracks([(1, feet(100, 450), 0.9, 0)])])
    assert an.update(tracks([]), 4.0, T0 + 4, FRAME) == []
    ev = an.update(tracks([]), 6.0, T0 + 6, FRAME)
    assert types(ev) == ["track.end"] and an.open_tracks() == 0


def test_tracker_and_analytics_end_to_end_events_validate() -> None:
    """A small synthetic scene through the real tracker: every event validates, lifecycle closes."""
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="mid", polygon=[(0.3, 0.3), (0.7, 0.3), (0.7, 0.8), (0.3, 0.8)],
                                            relative=True, loiter_s=1.0)],
                          lines=[LineConfig(name="l", points=((0.5, 0.0), (0.5, 1.0)), relative=True)],
                          update_interval_s=0.5, stationary_s=1.5)
    an = StreamAnalytics("cam-7", cfg, CLASSES)
    tr = ByteTracker(TrackerConfig())
    rng = np.random.default_rng(4)
    all_events: list[dict] = []
    for f in range(150):
        t = f / 25
        rows, scores, cls = [], [], []
        for k in range(4):
            if f < 20 * k or f > 100 + 10 * k:
                continue
            x = 50 + 12 * (f - 20 * k) if k != 3 else 640
            rows.append(feet(x, 300 + 80 * k))
            scores.append(0.85)
            cls.append(k % 3)
        noise = rng.normal(0, 0.5, (len(rows), 4)).astype(np.float32)
        d = Detections(np.array(rows, np.float32).reshape(-1, 4) + noise, np.array(scores, np.float32),
                       np.array(cls, np.int32))
        all_events += an.update(tr.update(d, t), t, T0 + t, FRAME)
    all_events += an.finish(150 / 25, T0 + 6)
    for e in all_events:
        VALIDATOR.validate(e)
    ty = types(all_events)
    assert ty.count("track.start") == ty.count("track.end") == 4
    assert "line.cross" in ty and "zone.enter" in ty and "object.stationary" in ty
    assert len({e["id"] for e in all_events}) == len(all_events)
    assert an.open_tracks() == 0


# -- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("zone, message", [
    (dict(name="tiny", polygon=[(0, 0), (10, 0)]), "zone 'tiny': polygon needs at least 3 points"),
    (dict(name="bow", polygon=[(0, 0), (10, 10), (10, 0), (0, 10)]), "zone 'bow': polygon edges 0-1 and 2-3 cross"),
    (dict(name="flat", polygon=[(0, 0), (5, 5), (10, 10)]), "zone 'flat': polygon has zero area"),
    (dict(name="rel", relative=True, polygon=[(0, 0), (1.2, 0), (1, 1)]), "zone 'rel': relative=true needs"),
    (dict(name="neg", polygon=[(0, 0), (-5, 0), (1, 1)]), "zone 'neg': pixel coordinates must not be negative"),
])
def test_zone_validation_errors(zone: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ZoneConfig(**zone)


def test_line_and_analytics_validation_errors() -> None:
    with pytest.raises(ValidationError, match="line 'dot': both points are"):
        LineConfig(name="dot", points=((5, 5), (5, 5)))
    with pytest.raises(ValidationError, match="line 'r': relative=true needs"):
        LineConfig(name="r", relative=True, points=((0, 0), (2, 1)))
    z = ZoneConfig(name="a", polygon=SQUARE)
    with pytest.raises(ValidationError, match="zone names must be unique; repeated: a"):
        AnalyticsConfig(zones=[z, z])
    with pytest.raises(ValidationError, match="inertia"):
        AnalyticsConfig.model_validate({"zones": [{"name": "a", "polygon": SQUARE, "inertia": 3}]})
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="a", polygon=SQUARE, classes=["truck"])])
    with pytest.raises(ConfigError, match="stream 'c': zone 'a' lists unknown classes \\['truck'\\]"):
        StreamAnalytics("c", cfg, CLASSES)
    line_cfg = AnalyticsConfig(lines=[LineConfig(name="g", points=((0, 0), (5, 5)), classes=["person", "bus"])])
    with pytest.raises(ConfigError, match="line 'g' lists unknown classes \\['bus'\\]; the engine's classes are"):
        line_cfg.check_classes(CLASSES)
    line_cfg.check_classes(CLASSES + ["bus"])


def test_state_bounded_when_many_tracks_come_and_go() -> None:
    """2000 tracks, each alive 1 s and crossing a zone and a line; per-track state never piles up."""
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="z", polygon=SQUARE, inertia_frames=2)],
                          lines=[LineConfig(name="l", points=((600, 0), (600, 720)))])
    an = StreamAnalytics("c", cfg, CLASSES)
    sizes = []
    starts = ends = 0
    for f in range(2000 + 10):
        alive = [k for k in range(max(0, f - 9), min(f + 1, 2000))]  # track k lives frames k..k+9
        rows = [(k + 1, feet(450 + 40 * (f - k), 450), 0.9, 0) for k in alive]
        ended = [f - 10 + 1] if 0 <= f - 10 < 2000 else []  # the tracker reports the end a frame later
        ev = an.update(tracks(rows, ended=ended), f / 10, T0 + f / 10, FRAME)
        starts += sum(e["type"] == "track.start" for e in ev)
        ends += sum(e["type"] == "track.end" for e in ev)
        sizes.append(an.open_tracks())
    assert max(sizes) <= 11
    assert starts == 2000 and ends == 2000
    assert an.open_tracks() == 0 and an.occupancy() == {"z": 0}
    # the line is drawn top to bottom, so walking left to right goes from its right to its left: "out"
    assert an.counts() == {"l": {"in": 0, "out": 2000}}


def test_reconfigure_keeps_tracks_and_closes_removed_zones() -> None:
    """The console's editor replaces zones at runtime: tracks keep their lifecycle (no second
    track.start), a removed zone closes with zone.exit, a new zone opens with zone.enter."""
    cfg = AnalyticsConfig(zones=[ZoneConfig(name="door", polygon=SQUARE, inertia_frames=2)])
    an = StreamAnalytics("cam1", cfg, CLASSES)
    inside = [tracks([(7, feet(500, 450), 0.9, 0)]) for _ in range(6)]
    ev = run(an, inside)
    assert types(ev) == ["track.start", "zone.enter", "track.update"] and an.occupancy() == {"door": 1}
    new = AnalyticsConfig(zones=[ZoneConfig(name="yard", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)], relative=True,
                                            inertia_frames=2)])
    exits = an.reconfigure(new, T0 + 1)
    assert types(exits) == ["zone.exit"] and exits[0]["zone"] == "door" and exits[0]["track_id"] == "cam1:7"
    for e in exits:
        VALIDATOR.validate(e)
    ev = run(an, inside, t0=1.0)
    assert "track.start" not in types(ev)
    assert [e["zone"] for e in ev if e["type"] == "zone.enter"] == ["yard"] and an.occupancy() == {"yard": 1}
    with pytest.raises(ConfigError):
        an.reconfigure(AnalyticsConfig(zones=[ZoneConfig(name="z", polygon=SQUARE, classes=["unicorn"])]), T0)
