"""Deadline batcher: full batches, deadlines, per-stream caps, live drops and file backpressure."""

import threading
import time

import numpy as np

from vap_video.pipeline.batcher import DeadlineBatcher
from vap_video.pipeline.frames import Frame
from vap_video.pipeline.metrics import Metrics


def _frame(stream: str, i: int) -> Frame:
    return Frame(stream, i, i / 25, time.time(), np.zeros((2, 2, 3), np.uint8))


def _dropped(m: Metrics, stream: str, reason: str) -> float:
    return m.registry.get_sample_value("vap_frames_dropped_total", {"stream": stream, "reason": reason}) or 0.0


def test_full_batch_closes_immediately():
    b = DeadlineBatcher(max_batch=4, max_delay_s=10.0, per_stream_cap=4, metrics=Metrics())
    b.add_stream("a", live=False, maxsize=8)
    for i in range(4):
        b.put(_frame("a", i))
    t0 = time.monotonic()
    batch = b.next_batch()
    assert [f.index for f in batch] == [0, 1, 2, 3]
    assert time.monotonic() - t0 < 0.5  # did not wait for the 10 s deadline


def test_partial_batch_closes_at_deadline():
    b = DeadlineBatcher(max_batch=8, max_delay_s=0.1, per_stream_cap=8, metrics=Metrics())
    b.add_stream("a", live=True, maxsize=4)
    b.put(_frame("a", 0))
    t0 = time.monotonic()
    batch = b.next_batch()
    waited = time.monotonic() - t0
    assert len(batch) == 1 and 0.05 <= waited < 1.0


def test_per_stream_cap_and_oldest_first():
    b = DeadlineBatcher(max_batch=4, max_delay_s=0.0, per_stream_cap=2, metrics=Metrics())
    for s in ("a", "b", "c"):
        b.add_stream(s, live=False, maxsize=4)
    for i in range(3):
        b.put(_frame("a", i))
    b.put(_frame("b", 0))
    b.put(_frame("c", 0))
    batch = b.next_batch()
    assert [(f.stream, f.index) for f in batch] == [("a", 0), ("a", 1), ("b", 0), ("c", 0)]


def test_live_queue_drops_oldest_and_counts():
    m = Metrics()
    b = DeadlineBatcher(max_batch=8, max_delay_s=0.0, per_stream_cap=8, metrics=m)
    b.add_stream("cam", live=True, maxsize=2)
    for i in range(5):
        assert b.put(_frame("cam", i))
    assert [f.index for f in b.next_batch()] == [3, 4]
    assert _dropped(m, "cam", "stale") == 3


def test_file_queue_backpressure_loses_nothing():
    b = DeadlineBatcher(max_batch=2, max_delay_s=0.0, per_stream_cap=2, metrics=Metrics())
    b.add_stream("f", live=False, maxsize=2)
    n = 50
    producer = threading.Thread(target=lambda: [b.put(_frame("f", i)) for i in range(n)])
    producer.start()
    seen = []
    while len(seen) < n:
        batch = b.next_batch(timeout=2.0)
        assert batch, "producer stalled"
        seen.extend(f.index for f in batch)
        assert b.depth() <= 2
    producer.join(2)
    assert seen == list(range(n))


def test_close_drains_then_ends_and_unblocks_producers():
    b = DeadlineBatcher(max_batch=4, max_delay_s=5.0, per_stream_cap=4, metrics=Metrics())
    b.add_stream("f", live=False, maxsize=1)
    b.put(_frame("f", 0))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("ok", b.put(_frame("f", 1))))
    t.start()
    time.sleep(0.1)
    b.close()
    t.join(1)
    assert result["ok"] is False                   # blocked producer released, told to stop
    assert [f.index for f in b.next_batch()] == [0]  # queued frame still delivered
    assert b.next_batch() is None


def test_remove_stream_counts_dropped_frames():
    m = Metrics()
    b = DeadlineBatcher(max_batch=8, max_delay_s=1.0, per_stream_cap=8, metrics=m)
    b.add_stream("x", live=True, maxsize=4)
    b.put(_frame("x", 0))
    b.put(_frame("x", 1))
    assert b.remove_stream("x") == 2 and _dropped(m, "x", "removed") == 2
    assert b.put(_frame("x", 2)) is False
