"""JSONL sink under disk trouble: a failed write leaves no half batch, so its retry duplicates nothing."""

from __future__ import annotations

import errno
import json
import os
import time

import vap_video.pipeline.sinks.jsonl as sinks_mod
from vap_video.pipeline.events import make_event
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.sinks import EventFilter, JsonlSink, JsonlSinkConfig, SinkRunner


def _events(n: int, tag: str) -> list[dict]:
    return [make_event("stream.up", "cam", time.time(), state="streaming", reason=f"{tag}{i}") for i in range(n)]


def test_disk_full_mid_batch_is_cut_back_and_the_retry_writes_each_event_once(tmp_path, monkeypatch):
    """Review finding 14: a failed buffered write left part of the batch behind, the retry duplicated it."""
    path = tmp_path / "events.jsonl"
    runner = SinkRunner(JsonlSink(JsonlSinkConfig(path=path, fsync="never")), EventFilter(), Metrics(), retry_s=0.05)
    first = _events(3, "a")
    runner.offer(first, 1.0)
    deadline = time.time() + 5
    while len(path.read_bytes().splitlines()) < 3:
        assert time.time() < deadline
        time.sleep(0.01)
    real_write = os.write
    calls = {"n": 0}

    def full_once(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:                           # part of the batch lands, then the disk is full
            real_write(fd, bytes(data[: len(data) // 3]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(sinks_mod.os, "write", full_once)
    second = _events(40, "b")
    runner.offer(second, 1.0)
    assert runner.close(5.0)
    lines = path.read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]        # every line parses: no torn fragment
    assert ids == [e["id"] for e in first + second]   # each event exactly once, in order
    assert calls["n"] >= 2


def test_a_torn_last_line_from_a_crash_is_ended_before_appending(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":"x"}\n{"id":"tor')
    sink = JsonlSink(JsonlSinkConfig(path=path, fsync="never"))
    ev = _events(1, "c")
    sink.write(ev)
    sink.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["id"] == ev[0]["id"]  # the new event is on a line of its own
