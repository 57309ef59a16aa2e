"""The console's endpoints in-process (frame, live view, event feed, zone editor API), and the
console itself driven by a real headless browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.api import ApiServer
from vap_video.pipeline.runtime import Pipeline
from vap_video.pipeline.settings import parse_settings
from tests.onnx_models import constant_detector

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SYNTH = "synthetic://?seed=3&fps=15&width=320&height=192&objects=3"


@pytest.fixture()
def served(tmp_path, monkeypatch):
    monkeypatch.delenv("VAP_API_TOKEN", raising=False)
    # one box that never moves (engine input 64x64): inside any zone drawn over the whole frame
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 20, 30, 40, 0.9, 0]], np.float32), ["person"])
    p = Pipeline(parse_settings({"streams": [{"name": "cam", "url": SYNTH}], "model": {"path": str(model)},
                                 "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"}],
                                 "server": {"port": 0}}))
    api = ApiServer(p)
    api.start()
    p.start()
    yield p, api
    p.stop(timeout=5)
    api.close()


def _get(api: ApiServer, path: str, method: str = "GET", body: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={} if body is None else {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_frames_encoded_only_when_asked_and_change(served):
    p, api = served
    _wait(lambda: (p.metrics.registry.get_sample_value("vap_frames_processed_total", {"stream": "cam"}) or 0) > 20,
          30, "no frames processed")
    assert api.feed.encoded == 0          # nobody watched: not one JPEG encoded
    status, headers, first = _get(api, "/streams/cam/frame.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and first[:2] == b"\xff\xd8"
    time.sleep(0.5)
    status, headers2, second = _get(api, "/streams/cam/frame.jpg?w=160")
    assert status == 200 and int(headers2["X-Frame-Seq"]) > int(headers["X-Frame-Seq"]) and second != first
    assert api.feed.encoded == 2


def test_live_view_streams_jpegs_and_viewer_cap(served):
    p, api = served
    api.viewers = type(api.viewers)(1)
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.request("GET", "/streams/cam/live.mjpg")
    r = conn.getresponse()
    assert r.status == 200 and "multipart/x-mixed-replace" in r.getheader("Content-Type")
    data = b""
    while data.count(b"--vapframe") < 3:
        data += r.read1(65536)
    assert data.count(b"\xff\xd8") >= 2   # JPEGs, one per part
    assert _get(api, "/streams/cam/live.mjpg")[0] == 503    # over the viewer cap: refused, not queued
    conn.close()
    _wait(lambda: _get(api, "/streams/cam/frame.jpg")[0] == 200, 5, "frame endpoint")


def test_event_feed_and_zone_applied_at_runtime_produces_zone_enter(served, tmp_path):
    p, api = served
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=15)
    conn.request("GET", "/events?type=zone.enter,track.start")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    status, _, body = _get(api, "/streams/cam/analytics")
    view = json.loads(body)
    assert status == 200 and view["analytics"]["zones"] == [] and "analytics:" in view["yaml"]
    bad = {**view["analytics"], "zones": [{"name": "z", "polygon": [[0, 0], [1, 1]], "relative": True}]}
    status, _, body = _get(api, "/streams/cam/analytics", "PUT", bad)
    assert status == 400 and "at least 3 points" in json.loads(body)["error"]
    zone = {"name": "whole", "relative": True, "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}
    status, _, body = _get(api, "/streams/cam/analytics", "PUT", {**view["analytics"], "zones": [zone]})
    assert status == 200 and "whole" in json.loads(body)["yaml"]
    buf, deadline = b"", time.monotonic() + 20
    while b'"zone": "whole"' not in buf:
        assert time.monotonic() < deadline, buf[-500:]
        buf += r.read1(65536)
    conn.close()
    events = [json.loads(line[6:]) for line in buf.decode().splitlines() if line.startswith("data: ")]
    assert {e["type"] for e in events} <= {"zone.enter", "track.start"}   # the type filter holds
    enter = [e for e in events if e["type"] == "zone.enter"][0]
    assert enter["stream"] == "cam" and enter["zone"] == "whole"
    # the track was not restarted by the change
    starts = [e for e in events if e["type"] == "track.start" and e["track_id"] == enter["track_id"]]
    assert len(starts) <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_console_in_a_real_browser(tmp_path):
    """The demo's console in headless chromium: streams listed, frame changes, an event in the
    timeline, and a zone drawn in the editor applied so that it produces zone.enter events."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (tests/run.sh installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VAP_API_TOKEN", None)
    demo = subprocess.Popen([sys.executable, "-m", "vap_video.pipeline.cli", "demo", "--out", str(tmp_path / "demo"),
                             "--duration", "90", "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    shot = os.environ.get("VAP_CONSOLE_SCREENSHOT")
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                if "cam1" in http_get(f"{url}streams"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and demo.poll() is None, "the demo never served its streams"
            time.sleep(0.5)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            # the page's CSP forbids eval; Playwright's wait_for_function needs it, so only the test bypasses it
            page = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True).new_page()
            page.goto(url)
            # the streams table lists the demo's streams
            page.wait_for_selector('#streams tbody tr[data-name="cam1"]', timeout=20000)
            names = page.eval_on_selector_all("#streams tbody tr", "rows => rows.map(r => r.dataset.name)")
            assert {"cam1", "cam2", "clip"} <= set(names)
            page.click('#streams tbody tr[data-name="cam1"]')
            # the frame image changes over time
            page.wait_for_function("document.getElementById('frame').dataset.seq > 0", timeout=20000)
            seq1 = int(page.eval_on_selector("#frame", "img => img.dataset.seq"))
            page.wait_for_function(f"Number(document.getElementById('frame').dataset.seq) > {seq1}", timeout=20000)
            # an event appears in the timeline
            page.wait_for_selector("#timeline li", timeout=30000)
            # draw a zone over the left half in the editor and apply it
            page.wait_for_function("document.getElementById('frame').naturalWidth > 0")
            box = page.locator("#overlay").bounding_box()
            page.click("#mode-zone")
            page.fill("#shape-name", "drawn")
            for fx, fy in ((0.02, 0.02), (0.55, 0.02), (0.55, 0.98), (0.02, 0.98)):
                page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            page.click("#finish")
            assert "drawn" in page.input_value("#yaml")
            page.click("#apply")
            page.wait_for_function("document.getElementById('apply-status').textContent.startsWith('applied')",
                                   timeout=10000)
            assert "drawn" in page.input_value("#yaml")
            page.wait_for_selector('#timeline li[data-type="zone.enter"][data-stream="cam1"] >> text=drawn',
                                   timeout=40000)
            # the filter narrows the timeline to one type
            page.select_option("#filter-type", "zone.enter")
            types = page.eval_on_selector_all("#timeline li", "items => items.map(i => i.dataset.type)")
            assert types and set(types) == {"zone.enter"}
            page.select_option("#filter-type", "")
            if shot:
                page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        demo.terminate()
        try:
            demo.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()


def http_get(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.read().decode()


def test_snapshot_thumbnails_served_and_no_path_escape(tmp_path, monkeypatch):
    monkeypatch.delenv("VAP_API_TOKEN", raising=False)
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 20, 30, 40, 0.9, 0]], np.float32), ["person"])
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8not a snapshot")
    p = Pipeline(parse_settings({"streams": [{"name": "cam", "url": SYNTH}], "model": {"path": str(model)},
                                 "sinks": [{"path": str(tmp_path / "events.jsonl"), "fsync": "never"}],
                                 "snapshots": {"enabled": True, "dir": str(tmp_path / "snaps")},
                                 "server": {"port": 0}}))
    api = ApiServer(p)
    api.start()
    p.start()
    try:
        ev = _wait(lambda: next((e for _, e in api.feed.events_after(0) if e.get("snapshot")), None), 30,
                   "no event with a snapshot")
        path = f"/snapshots/{ev['snapshot']}"
        status, headers, body = _wait(lambda: (r := _get(api, path))[0] == 200 and r, 10, "snapshot never served")
        assert headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
        for bad in ("/snapshots/../secret.jpg", "/snapshots/%2e%2e/secret.jpg", "/snapshots//etc/passwd",
                    "/snapshots/../m.onnx"):
            assert _get(api, bad)[0] == 404, bad
    finally:
        p.stop(timeout=5)
        api.close()
