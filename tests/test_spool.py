"""The disk spool: order, restart, torn writes, the size bound and both drop policies."""

from __future__ import annotations

import json
import time

import pytest

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.events import make_event
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.sinks import EventBus, EventFilter, SinkRunner
from vap_video.pipeline.sinks.spool import Spool


def _events(n: int, stream: str = "cam") -> list[dict]:
    return [make_event("stream.up", stream, time.time(), state="streaming", reason=f"n{i}") for i in range(n)]


def test_fifo_across_segments_and_restart(tmp_path):
    sp = Spool(tmp_path / "sp", max_bytes=1_000_000, segment_bytes=2000)
    ev = _events(60)
    for i in range(0, 60, 7):
        sp.append(ev[i:i + 7])
    assert len(sp) == 60 and len(list((tmp_path / "sp").glob("seg-*.jsonl"))) > 3
    got, pos = sp.peek(25)
    assert [e["id"] for e in got] == [e["id"] for e in ev[:25]]
    sp.ack(pos)
    got2, _ = sp.peek(10)            # peeked but not acknowledged: must come back after a restart
    assert got2[0]["id"] == ev[25]["id"]
    sp.close()
    sp = Spool(tmp_path / "sp", max_bytes=1_000_000, segment_bytes=2000)
    assert len(sp) == 35
    rest, pos = sp.peek(1000)
    assert [e["id"] for e in rest] == [e["id"] for e in ev[25:]]
    sp.ack(pos)
    assert len(sp) == 0 and sp.size_bytes == 0
    assert list((tmp_path / "sp").glob("seg-*.jsonl")) == []   # drained spool leaves no files behind
    sp.append(ev[:2])                                          # and keeps working afterwards
    assert [e["id"] for e in sp.peek(5)[0]] == [e["id"] for e in ev[:2]]


def test_torn_last_line_is_cut_at_open(tmp_path):
    sp = Spool(tmp_path, max_bytes=100_000)
    ev = _events(5)
    sp.append(ev)
    sp.close()
    seg = sorted(tmp_path.glob("seg-*.jsonl"))[-1]
    with open(seg, "ab") as fh:
        fh.write(b'{"t": 1, "e": {"id": "half')     # crash in the middle of a write
    sp = Spool(tmp_path, max_bytes=100_000)
    assert len(sp) == 5
    assert [e["id"] for e in sp.peek(10)[0]] == [e["id"] for e in ev]
    sp.append(_events(1))
    assert len(sp.peek(10)[0]) == 6


def test_drop_oldest_keeps_the_newest_within_the_bound(tmp_path):
    sp = Spool(tmp_path, max_bytes=8000, policy="drop_oldest", segment_bytes=1000)
    ev = _events(200)
    dropped = sum(sp.append(ev[i:i + 5]) for i in range(0, 200, 5))
    assert sp.size_bytes <= 8000
    assert dropped > 0 and dropped + len(sp) == 200 and sp.dropped == dropped
    kept, _ = sp.peek(1000)
    assert [e["id"] for e in kept] == [e["id"] for e in ev[200 - len(kept):]]   # a contiguous newest tail


def test_drop_newest_refuses_new_events(tmp_path):
    sp = Spool(tmp_path, max_bytes=3000, policy="drop_newest")
    ev = _events(100)
    dropped = sum(sp.append(ev[i:i + 10]) for i in range(0, 100, 10))
    assert dropped > 0 and dropped + len(sp) == 100 and sp.size_bytes <= 3000
    kept, _ = sp.peek(1000)
    assert [e["id"] for e in kept] == [e["id"] for e in ev[:len(kept)]]         # the oldest are kept


def test_age_and_unwritable_dir(tmp_path):
    sp = Spool(tmp_path / "a", max_bytes=10_000)
    assert sp.oldest_age() == 0.0
    sp.append(_events(1))
    assert 0 <= sp.oldest_age() < 5
    assert sp.oldest_age(now=time.time() + 100) > 99
    with pytest.raises(ConfigError, match="already in use"):
        Spool(tmp_path / "a", max_bytes=10_000)               # a second owner of the same directory
    sp.close()
    assert len(Spool(tmp_path / "a", max_bytes=10_000)) == 1  # free again once closed
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        Spool(tmp_path / "file" / "sub", max_bytes=10_000)


class _Switchable:
    """A sink that fails while `down` is set and records what it delivered."""

    name = "switch"

    def __init__(self):
        self.down = True
        self.got: list[dict] = []

    def write(self, events):
        if self.down:
            raise ConnectionError("broker down")
        self.got.extend(events)

    def close(self):
        pass


def test_runner_spools_while_down_and_replays_in_order_then_survives_restart(tmp_path):
    m = Metrics()
    sink = _Switchable()
    runner = SinkRunner(sink, EventFilter(), m, retry_s=0.05, retry_max_s=0.2,
                        spool=Spool(tmp_path / "sp", max_bytes=1_000_000))
    bus = EventBus([runner])
    ev = _events(30, "a") + _events(30, "b")
    for i in range(0, 60, 6):
        bus.publish(ev[i:i + 6])
    deadline = time.time() + 5
    while (m.registry.get_sample_value("vap_spool_events", {"sink": "switch"}) or 0) < 60 or \
            not m.registry.get_sample_value("vap_sink_errors_total", {"sink": "switch"}):
        assert time.time() < deadline, "events did not reach the spool or no delivery was tried"
        time.sleep(0.02)
    assert m.registry.get_sample_value("vap_sink_up", {"sink": "switch"}) == 0
    assert m.registry.get_sample_value("vap_spool_bytes", {"sink": "switch"}) > 0
    sink.down = False
    bus.publish(_events(3, "c"))                  # arrives while the spool drains: must come after it
    assert bus.close(5.0)
    assert [e["id"] for e in sink.got] == [e["id"] for e in ev] + [e["id"] for e in sink.got[60:]]
    assert len(sink.got) == 63 and sink.got[-1]["stream"] == "c"
    assert m.registry.get_sample_value("vap_spool_events", {"sink": "switch"}) == 0

    # A restart with events left in the spool replays them before anything new.
    sink2 = _Switchable()
    r2 = SinkRunner(sink2, EventFilter(), Metrics(), retry_s=0.05, spool=Spool(tmp_path / "sp2", 1_000_000))
    r2.offer(ev[:10], 1.0)
    assert r2.close(0.5) is True                  # down, but everything is safe in the spool
    left = [json.loads(line)["e"]["id"] for f in sorted((tmp_path / "sp2").glob("seg-*"))
            for line in f.read_text().splitlines()]
    assert left == [e["id"] for e in ev[:10]]
    sink3 = _Switchable()
    sink3.down = False
    r3 = SinkRunner(sink3, EventFilter(), Metrics(), retry_s=0.05, spool=Spool(tmp_path / "sp2", 1_000_000))
    r3.offer(ev[10:12], 1.0)
    assert r3.close(5.0)
    assert [e["id"] for e in sink3.got] == [e["id"] for e in ev[:12]]


def test_full_spool_counts_drops(tmp_path):
    m = Metrics()
    sink = _Switchable()
    runner = SinkRunner(sink, EventFilter(), m, retry_s=10,
                        spool=Spool(tmp_path, max_bytes=4000, policy="drop_newest"))
    runner.offer(_events(100), 1.0)
    deadline = time.time() + 5
    while not m.registry.get_sample_value("vap_spool_dropped_total", {"sink": "switch"}):
        assert time.time() < deadline
        time.sleep(0.02)
    runner.close(0.3)
    spooled = m.registry.get_sample_value("vap_spool_events", {"sink": "switch"})
    assert spooled + m.registry.get_sample_value("vap_spool_dropped_total", {"sink": "switch"}) == 100


def test_partial_delivery_spools_only_the_undelivered_suffix(tmp_path):
    from vap_video.pipeline.sinks.base import PartialDelivery

    class HalfWay:
        name = "half"

        def __init__(self):
            self.calls, self.got = 0, []

        def write(self, events):
            self.calls += 1
            if self.calls <= 2:      # first delivery and first replay: only the first event gets through
                self.got.append(events[0])
                raise PartialDelivery("receiver failing", events[1:])
            self.got.extend(events)

        def close(self):
            pass

    sink = HalfWay()
    runner = SinkRunner(sink, EventFilter(), Metrics(), retry_s=0.05, spool=Spool(tmp_path, 1_000_000))
    ev = _events(5)
    runner.offer(ev, 1.0)
    assert runner.close(5.0)
    assert [e["id"] for e in sink.got] == [e["id"] for e in ev]     # each exactly once, in order
    assert sink.calls == 3


def test_a_dead_and_a_hung_sink_do_not_hold_up_the_pipeline_or_a_healthy_sink(tmp_path):
    import threading

    release = threading.Event()

    class Hung(_Switchable):
        name = "hung"

        def write(self, events):
            release.wait(10)           # a broker that accepted the connection and never answers
            raise TimeoutError("no acknowledgement")

    healthy, dead, hung = _Switchable(), _Switchable(), Hung()
    healthy.down = False
    healthy.name, dead.name = "healthy", "dead"
    m = Metrics()
    bus = EventBus([SinkRunner(healthy, EventFilter(), m),
                    SinkRunner(dead, EventFilter(), m, spool=Spool(tmp_path / "dead", 1_000_000)),
                    SinkRunner(hung, EventFilter(), m, spool=Spool(tmp_path / "hung", 1_000_000))])
    ev = _events(500)
    t0 = time.perf_counter()
    for i in range(0, 500, 5):
        bus.publish(ev[i:i + 5])
    publish_s = time.perf_counter() - t0
    assert publish_s < 1.0                            # never waited on the dead or the hung sink
    deadline = time.time() + 5
    while len(healthy.got) < 500:
        assert time.time() < deadline, "the healthy sink was held up"
        time.sleep(0.02)
    assert [e["id"] for e in healthy.got] == [e["id"] for e in ev]
    release.set()
    bus.close(2.0)
    assert m.registry.get_sample_value("vap_sink_dropped_total", {"sink": "dead"}) == 0


def test_a_slow_but_succeeding_sink_never_blocks_publish_or_drops_with_a_spool(tmp_path):
    """Review finding 1: a full queue used to block publish block_s per batch and drop events."""

    class Slow(_Switchable):
        name = "slow"

        def write(self, events):
            time.sleep(0.3)            # answers, just slowly
            self.got.extend(events)

    m = Metrics()
    slow, fast = Slow(), _Switchable()
    fast.down, fast.name = False, "fast"
    bus = EventBus([SinkRunner(slow, EventFilter(), m, maxsize=4, spool=Spool(tmp_path / "slow", 1_000_000)),
                    SinkRunner(fast, EventFilter(), m)], block_s=0.1)
    ev = _events(30)
    worst = 0.0
    for e in ev:
        t0 = time.perf_counter()
        bus.publish([e])
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05, f"publish waited {worst:.2f}s for the slow sink"
    assert m.registry.get_sample_value("vap_sink_dropped_total", {"sink": "slow"}) == 0
    assert bus.close(5.0)
    assert [e["id"] for e in slow.got] == [e["id"] for e in ev]
    assert [e["id"] for e in fast.got] == [e["id"] for e in ev]


def test_disk_full_during_append_truncates_back_counts_the_loss_and_keeps_going(tmp_path, monkeypatch):
    """Review finding 2: a half-written batch must not stay in the segment or skew the counts."""
    import errno
    import os

    import vap_video.pipeline.sinks.spool as spool_mod

    m = Metrics()
    sink = _Switchable()
    sp = Spool(tmp_path, 1_000_000)
    runner = SinkRunner(sink, EventFilter(), m, retry_s=0.05, retry_max_s=0.1, spool=sp)
    first = _events(5, "a")
    assert runner.offer(first, 1.0)
    seg = next(tmp_path.glob("seg-*.jsonl"))
    size_before = seg.stat().st_size
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data[: len(data) // 2]))  # part of the batch reaches the file
            return len(data) // 2
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod.os, "write", half_then_full)
    lost = _events(30, "b")
    assert runner.offer(lost, 1.0) is False
    monkeypatch.setattr(spool_mod.os, "write", real_write)
    assert seg.stat().st_size == size_before                 # cut back to the last whole batch
    assert m.registry.get_sample_value("vap_spool_dropped_total", {"sink": "switch"}) == 30
    later = _events(3, "c")
    assert runner.offer(later, 1.0)
    sink.down = False
    assert runner.close(5.0)
    assert [e["id"] for e in sink.got] == [e["id"] for e in first + later]
    assert runner._thread.is_alive() is False
    assert m.registry.get_sample_value("vap_spool_events", {"sink": "switch"}) == 0


def test_a_spool_read_error_is_retried_and_spooled_events_still_replay(tmp_path, monkeypatch):
    """Review finding 2: one disk error used to switch the spool off for the rest of the process."""
    m = Metrics()
    sink = _Switchable()
    sp = Spool(tmp_path, 1_000_000)
    real_peek = sp.peek_each
    calls = {"n": 0}

    def flaky_peek(n):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        return real_peek(n)

    monkeypatch.setattr(sp, "peek_each", flaky_peek)
    runner = SinkRunner(sink, EventFilter(), m, retry_s=0.05, retry_max_s=0.1, spool=sp)
    ev = _events(8)
    runner.offer(ev[:4], 1.0)
    deadline = time.time() + 5
    while calls["n"] < 3:
        assert time.time() < deadline
        time.sleep(0.02)
    sink.down = False
    runner.offer(ev[4:], 1.0)
    assert runner.close(5.0)
    assert [e["id"] for e in sink.got] == [e["id"] for e in ev]
    assert m.registry.get_sample_value("vap_sink_errors_total", {"sink": "switch"}) >= 1


def test_cursor_past_the_repaired_end_rereads_the_segment(tmp_path):
    """Review finding 7: after a power loss the cursor can point beyond the data that reached the disk."""
    sp = Spool(tmp_path, 1_000_000)
    ev = _events(10)
    sp.append(ev)
    _, pos = sp.peek(6)
    sp.ack(pos)
    sp.close()
    seg = next(tmp_path.glob("seg-*.jsonl"))
    data = seg.read_bytes()
    seg.write_bytes(data[: data.index(b"\n") + 1 + 40])   # one whole entry and a torn one survived
    sp = Spool(tmp_path, 1_000_000)
    assert len(sp) == 1 and sp.dropped == 1                 # the torn entry is counted, not silent
    got, _ = sp.peek(10)
    assert [e["id"] for e in got] == [ev[0]["id"]]          # re-read from the start: a duplicate, not a loss
    more = _events(3, "x")
    sp.append(more)
    got, _ = sp.peek(10)
    assert [e["id"] for e in got] == [ev[0]["id"]] + [e["id"] for e in more]


def test_a_bad_line_is_skipped_and_counted_not_fatal(tmp_path):
    sp = Spool(tmp_path, 1_000_000)
    ev = _events(4)
    sp.append(ev[:2])
    sp.close()
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as fh:
        fh.write(b"{not json\n")
    sp = Spool(tmp_path, 1_000_000)
    sp.append(ev[2:])
    assert len(sp) == 4 and sp.dropped == 1
    got, pos = sp.peek(10)
    assert [e["id"] for e in got] == [e["id"] for e in ev]
    sp.ack(pos)
    assert len(sp) == 0


def test_ack_after_drop_oldest_removed_the_peeked_segment_keeps_counts_right(tmp_path):
    sp = Spool(tmp_path, max_bytes=8000, segment_bytes=2000)
    sp.append(_events(8, "a"))
    entries = sp.peek_each(3)
    for i in range(20):                                   # meanwhile the bound drops the oldest segments
        sp.append(_events(4, f"b{i}"))
    before = len(sp)
    sp.ack(entries[-1][1])                                # must not subtract from surviving segments
    assert len(sp) == before
    got, _ = sp.peek(1000)
    assert len(got) == before >= 0


def test_runner_counts_what_repair_cut_and_creates_its_series_at_zero(tmp_path):
    sp = Spool(tmp_path, 1_000_000)
    sp.append(_events(2))
    sp.close()
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as fh:
        fh.write(b'{"t": 1, "e": {"torn')
    m = Metrics()
    runner = SinkRunner(_Switchable(), EventFilter(), m, retry_s=0.05, spool=Spool(tmp_path, 1_000_000))
    get = m.registry.get_sample_value
    assert get("vap_spool_dropped_total", {"sink": "switch"}) == 1
    for name in ("vap_sink_dropped_total", "vap_sink_dead_letter_total", "vap_sink_errors_total"):
        assert get(name, {"sink": "switch"}) is not None, name   # present at 0 so increase() sees a first burst
    runner.close(0.2)


def test_a_failing_spool_disk_loses_events_visibly_but_keeps_the_sink_alive(tmp_path, monkeypatch):
    m = Metrics()
    sink = _Switchable()
    sp = Spool(tmp_path, 1_000_000)
    real_append = sp.append
    full = {"on": True}

    def disk_full(events):
        if full["on"]:
            raise OSError(28, "No space left on device")
        return real_append(events)

    monkeypatch.setattr(sp, "append", disk_full)
    runner = SinkRunner(sink, EventFilter(), m, retry_s=0.05, spool=sp)
    assert runner.offer(_events(4), 1.0) is False
    assert m.registry.get_sample_value("vap_spool_dropped_total", {"sink": "switch"}) == 4
    full["on"] = False                               # space is back
    sink.down = False
    later = _events(2)
    assert runner.offer(later, 1.0)                  # the thread is still alive and delivering
    assert runner.close(5.0)
    assert [e["id"] for e in sink.got] == [e["id"] for e in later]


def test_sinks_are_closed_together_against_one_deadline(tmp_path):
    """Review finding 11: sinks were closed one after another, so slow closes added up."""

    class SlowClose(_Switchable):
        def close(self):
            time.sleep(0.6)            # e.g. an MQTT disconnect or a Kafka purge taking its time

    sinks = [SlowClose() for _ in range(3)]
    for i, s in enumerate(sinks):
        s.down, s.name = False, f"slow{i}"
    runners = [SinkRunner(s, EventFilter(), Metrics(), spool=Spool(tmp_path / s.name, 1_000_000)) for s in sinks]
    bus = EventBus(runners)
    bus.publish(_events(3))
    t0 = time.monotonic()
    assert bus.close(0.5)
    assert time.monotonic() - t0 < 1.4                # 3 x 0.6 s one after another would be 1.8 s
    assert all(len(s.got) == 3 for s in sinks)
