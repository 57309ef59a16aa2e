"""What the console and hostile HTTP clients cost the pipeline's throughput.

    PYTHONPATH=. python benchmarks/console_bench.py [--seconds 8] [--rounds 3] [--out benchmarks/console.json]

One pipeline (the shipped model, synthetic scenes with backpressure, so throughput is what the
pipeline can do, not what the cameras send) runs throughout; phases alternate in rotating order
within each round, so drift on a shared machine hits every phase alike:
- `idle`: nobody connected;
- `viewer`: one client reads `/streams/cam1/live.mjpg` (the console's live view) and the page's
  event feed (`/events`);
- `hostile`: 300 half-sent POSTs held open plus a stream of rapid POSTs (the probes of the
  console issue), against the default connection cap.
Reported: processed frames per second per phase (median over rounds) and the ratio to idle.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vap_video.pipeline.api import ApiServer  # noqa: E402
from vap_video.pipeline.model_config import SHIPPED_MODEL  # noqa: E402
from vap_video.pipeline.runtime import Pipeline  # noqa: E402
from vap_video.pipeline.settings import parse_settings  # noqa: E402


def processed(p: Pipeline) -> float:
    reg = p.metrics.registry
    return sum(reg.get_sample_value("vap_frames_processed_total", {"stream": s["name"]}) or 0 for s in p.streams())


class Viewer:
    """One console viewer: the live view of one stream and the event feed, read as fast as sent."""

    def __init__(self, port: int) -> None:
        self.port, self.stop, self.bytes = port, threading.Event(), 0
        self.threads = [threading.Thread(target=self._read, args=(path,), daemon=True)
                        for path in ("/streams/cam1/live.mjpg?w=960", "/events")]

    def _read(self, path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        r = conn.getresponse()
        while not self.stop.is_set():
            chunk = r.read1(65536)
            if not chunk:
                break
            self.bytes += len(chunk)
        conn.close()

    def __enter__(self) -> Viewer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


class Hostile:
    """300 half-sent requests kept open (reopened when cut) and rapid POSTs from 4 threads."""

    def __init__(self, port: int) -> None:
        self.port, self.stop, self.requests = port, threading.Event(), 0
        self.threads = [threading.Thread(target=self._slow, daemon=True)] + \
            [threading.Thread(target=self._rapid, daemon=True) for _ in range(4)]

    def _slow(self) -> None:
        socks: list[socket.socket] = []
        while not self.stop.is_set():
            socks = [s for s in socks if s.fileno() >= 0]
            while len(socks) < 300 and not self.stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                    s.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 999\r\n\r\n{")
                    socks.append(s)
                except OSError:
                    break
            time.sleep(0.5)
            for s in list(socks):   # drop the ones the server has answered (408 or 503)
                s.setblocking(False)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        s.close()
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
        for s in socks:
            s.close()

    def _rapid(self) -> None:
        body = json.dumps({"name": "cam1", "url": "synthetic://?seed=1"})
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("POST", "/streams", body=body, headers={"Content-Type": "application/json"})
                conn.getresponse().read()
                conn.close()
                self.requests += 1
            except OSError:
                time.sleep(0.01)

    def __enter__(self) -> Hostile:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "console.json")
    args = ap.parse_args()
    os.environ.pop("VAP_API_TOKEN", None)
    streams = [{"name": f"cam{i + 1}", "live": False,
                "url": f"synthetic://?seed={i + 1}&fps=25&width=1280&height=720&objects=6"}
               for i in range(args.streams)]
    settings = parse_settings({"streams": streams, "model": {"path": str(SHIPPED_MODEL)},
                               "batch": {"max_batch": 4, "max_delay_ms": 10},
                               "sinks": [{"path": "/dev/null", "fsync": "never"}], "server": {"port": 0}})
    p = Pipeline(settings)
    api = ApiServer(p)
    api.start()
    p.start()
    phases = {"idle": None, "viewer": Viewer, "hostile": Hostile}
    fps: dict[str, list[float]] = {k: [] for k in phases}
    extra: dict[str, float] = {"viewer_bytes": 0, "hostile_requests": 0}
    try:
        time.sleep(args.seconds)   # warm-up: engine, decoders, first batches
        names = list(phases)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                ctx = phases[name](api.port) if phases[name] else None
                if ctx:
                    ctx.__enter__()
                    time.sleep(1.0)   # connections established
                n0, t0 = processed(p), time.monotonic()
                time.sleep(args.seconds)
                n1, t1 = processed(p), time.monotonic()
                if ctx:
                    ctx.__exit__(None, None, None)
                    extra["viewer_bytes" if name == "viewer" else "hostile_requests"] += \
                        getattr(ctx, "bytes", 0) or getattr(ctx, "requests", 0)
                fps[name].append((n1 - n0) / (t1 - t0))
                print(f"round {r + 1} {name:8s} {fps[name][-1]:7.2f} frames/s", flush=True)
                time.sleep(1.0)
        # The viewer's direct cost, less noisy than throughput on a shared machine: CPU time of one
        # live-view JPEG (draw boxes/zones, resize to 960 wide, encode) on the calling thread.
        cpu_ms = []
        for _ in range(60):
            t0 = time.thread_time()
            api.feed.jpeg("cam1", 960)
            cpu_ms.append((time.thread_time() - t0) * 1e3)
        extra["jpeg_cpu_ms_median"] = round(statistics.median(cpu_ms), 2)
        extra["viewer_cpu_share_of_one_core"] = round(statistics.median(cpu_ms) * settings.server.live_fps / 1e3, 4)
    finally:
        p.stop(timeout=10)
        api.close()
    med = {k: statistics.median(v) for k, v in fps.items()}
    result = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared)",
              "python": platform.python_version(), "seconds_per_phase": args.seconds, "rounds": args.rounds,
              "streams": args.streams, "fps": fps, "median_fps": med,
              "ratio_to_idle": {k: round(v / med["idle"], 4) for k, v in med.items()},
              "jpegs_encoded": api.feed.encoded, **extra}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratio_to_idle"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
