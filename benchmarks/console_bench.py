"""What the console and hostile HTTP clients cost the pipeline's throughput.

    PYTHONPATH=. python benchmarks/console_bench.py [--seconds 8] [--rounds 3] [--phases idle,viewer,hostile,probe]
        [--probe-hold 30] [--probe-slow 300] [--probe-rapid 1000] [--out benchmarks/console.json]

One pipeline (the shipped model, synthetic scenes with backpressure, so throughput is what the
pipeline can do, not what the cameras send) runs throughout; phases alternate in rotating order
within each round, so drift on a shared machine hits every phase alike:
- `idle`: nobody connected;
- `viewer`: one client reads `/streams/cam1/live.mjpg` (the console's live view) and the page's
  event feed (`/events`);
- `hostile`: 300 half-sent POSTs held open (reopened when cut) plus a continuous flood of rapid
  POSTs from 4 threads, all *in this process* (they share the pipeline's GIL), against the
  default connection cap;
- `probe`: the console issue's probe itself, from a separate process (`benchmarks/http_clients.py`):
  300 half-sent POSTs held, 1000 rapid POST /streams with and without the token, then idle until
  `--probe-hold` seconds; this process samples its frames, threads and memory every 50 ms.
The API token is set (a random one), so unauthorised requests get 401; the in-process clients send it.
Reported: processed frames per second per phase (median over rounds) and the ratio to idle; for
`probe` also the frames/s during the 1000 requests (`probe_burst`), how long they took, their status
codes, how the slow connections ended, and the peak thread count and memory of this process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
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


TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
        conn.request("GET", path, headers=AUTH)
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
                              b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 999\r\n\r\n{")
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
                conn.request("POST", "/streams", body=body, headers={"Content-Type": "application/json", **AUTH})
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


def proc_status() -> tuple[int, float]:
    """This process's thread count (every thread: Python's, ONNX Runtime's, FFmpeg's) and RSS in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def rate(samples: list[tuple[float, float]], a: float, b: float) -> float:
    """Frames per second between times a and b, the frame counter interpolated between samples."""
    def at(t: float) -> float:
        for (t0, f0), (t1, f1) in zip(samples, samples[1:]):
            if t0 <= t <= t1:
                return f0 + (f1 - f0) * (t - t0) / (t1 - t0) if t1 > t0 else f0
        return samples[0][1] if t < samples[0][0] else samples[-1][1]
    return (at(b) - at(a)) / (b - a) if b > a else float("nan")


def probe(p: Pipeline, port: int, args: argparse.Namespace) -> dict:
    """Run benchmarks/http_clients.py in its own process; sample this process while it runs."""
    samples: list[tuple[float, float]] = []
    threads: list[int] = []
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            n, mem = proc_status()
            samples.append((time.monotonic(), processed(p)))
            threads.append(n)
            rss.append(mem)
            time.sleep(0.05)

    threads_before, rss_before = proc_status()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "http_clients.py"), "--port", str(port),
           "--slow", str(args.probe_slow), "--rapid", str(args.probe_rapid),
           "--concurrency", str(args.probe_concurrency), "--hold", str(args.probe_hold)]
    done = subprocess.run(cmd, env={**os.environ, "VAP_API_TOKEN": TOKEN}, capture_output=True, text=True,
                          timeout=args.probe_hold + 120)
    time.sleep(0.2)
    stop.set()
    sampler.join(2)
    if done.returncode != 0:
        raise SystemExit(f"console_bench: the probe client failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    c = json.loads(done.stdout)
    c.update(fps_phase=rate(samples, c["t_start"], c["t_end"]),
             fps_burst=rate(samples, c["t_rapid_start"], c["t_rapid_end"]),
             vap_threads_before=threads_before, vap_threads_peak=max(threads), vap_threads_after=proc_status()[0],
             vap_rss_mib_before=round(rss_before, 1), vap_rss_mib_peak=round(max(rss), 1),
             handler_threads_left=sum(1 for t in threading.enumerate() if "process_request_thread" in t.name))
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the idle, viewer and hostile phases")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--phases", default="idle,viewer,hostile,probe",
                    help="comma-separated, from idle, viewer, hostile, probe (idle is always run)")
    ap.add_argument("--probe-hold", type=float, default=30.0, help="length of the probe phase (seconds)")
    ap.add_argument("--probe-slow", type=int, default=300)
    ap.add_argument("--probe-rapid", type=int, default=1000)
    ap.add_argument("--probe-concurrency", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "console.json")
    args = ap.parse_args()
    known = {"idle": None, "viewer": Viewer, "hostile": Hostile, "probe": None}
    wanted = ["idle"] + [n.strip() for n in args.phases.split(",") if n.strip() and n.strip() != "idle"]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        ap.error(f"--phases: unknown phase {', '.join(unknown)}; choose from {', '.join(known)}")
    phases = {k: known[k] for k in wanted}
    os.environ["VAP_API_TOKEN"] = TOKEN
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
    fps: dict[str, list[float]] = {k: [] for k in phases}
    if "probe" in phases:
        fps["probe_burst"] = []
    extra: dict[str, object] = {"viewer_bytes": 0, "hostile_requests": 0}
    probes: list[dict] = []
    try:
        time.sleep(args.seconds)   # warm-up: engine, decoders, first batches
        names = list(phases)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                if name == "probe":
                    probes.append(probe(p, api.port, args))
                    fps["probe"].append(probes[-1]["fps_phase"])
                    fps["probe_burst"].append(probes[-1]["fps_burst"])
                    print(f"round {r + 1} probe    {fps['probe'][-1]:7.2f} frames/s over {args.probe_hold:g} s, "
                          f"{fps['probe_burst'][-1]:7.2f} during the {args.probe_rapid} requests "
                          f"({probes[-1]['rapid_seconds']} s), vap threads peak {probes[-1]['vap_threads_peak']}",
                          flush=True)
                    time.sleep(1.0)
                    continue
                ctx = phases[name](api.port) if phases[name] else None
                if ctx:
                    ctx.__enter__()
                    time.sleep(1.0)   # connections established
                n0, t0 = processed(p), time.monotonic()
                time.sleep(args.seconds)
                n1, t1 = processed(p), time.monotonic()
                if ctx:
                    ctx.__exit__(None, None, None)
                    key = "viewer_bytes" if name == "viewer" else "hostile_requests"
                    extra[key] = int(extra[key]) + (getattr(ctx, "bytes", 0) or getattr(ctx, "requests", 0))
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
              "load_average_at_end": os.getloadavg(),
              "python": platform.python_version(), "seconds_per_phase": args.seconds, "rounds": args.rounds,
              "streams": args.streams, "phases": list(phases), "fps": fps, "median_fps": med,
              "ratio_to_idle": {k: round(v / med["idle"], 4) for k, v in med.items()},
              "jpegs_encoded": api.feed.encoded, **extra}
    if probes:
        cfg = settings.server
        result["probe"] = {
            "command": f"http_clients.py --slow {args.probe_slow} --rapid {args.probe_rapid} "
                       f"--concurrency {args.probe_concurrency} --hold {args.probe_hold:g}",
            "server_limits": {"max_connections": cfg.max_connections, "read_timeout_s": cfg.read_timeout_s,
                              "max_streams": cfg.max_streams},
            "rapid_seconds_median": statistics.median(c["rapid_seconds"] for c in probes),
            "vap_threads_peak_max": max(c["vap_threads_peak"] for c in probes),
            "unauthorised_not_401_total": sum(c["unauthorised_not_401"] for c in probes),
            "rounds": probes}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratio_to_idle"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
