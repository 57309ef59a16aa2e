"""How fast vap resumes after an outage of the MQTT broker or an RTSP camera (real servers).

    python benchmarks/recovery.py mqtt --outages 5 --outage-s 15 --out benchmarks/recovery-mqtt.json
    python benchmarks/recovery.py rtsp --outages 5 --outage-s 45 --out benchmarks/recovery-rtsp.json

mqtt: a SinkRunner with the production retry settings delivers to a real mosquitto; the broker is
stopped, events are offered (they spool), and after `--outage-s` the broker starts again on the
same port. Measured: seconds from the broker accepting connections to the first spooled event
acknowledged (`vap_sink_events_total` going up).

rtsp: a Supervisor reads a real GStreamer RTSP server (tests/rtsp_server.py, system Python) with
every stream setting at its default; the server is killed and, after `--outage-s`, started again
on the same port. Measured: seconds from the server printing READY (listening) to the first frame
handed on by the stream's worker.

Every outage is one sample; the median is what benchmarks/recovery.md quotes. Run it with the
code to measure first on PYTHONPATH (e.g. PYTHONPATH=$PWD).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def mqtt_outages(outages: int, outage_s: float) -> list[float]:
    from vap_video.pipeline.events import make_event
    from vap_video.pipeline.metrics import Metrics
    from vap_video.pipeline.settings import parse_settings
    from vap_video.pipeline.sinks import SinkRunner, build_sink
    from tests.real_servers import mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="vap-recovery-mqtt-"))
    broker = mosquitto(tmp / "broker").start()
    cfg = parse_settings({"sinks": [{"type": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                     "client_id": "vap-recovery", "spool": {"dir": str(tmp / "spool")}}]}).sinks[0]
    m = Metrics()
    runner = SinkRunner(build_sink(cfg), cfg.filter, m)  # production retry: 1 s doubling to 30 s
    delivered = lambda: m.registry.get_sample_value("vap_sink_events_total", {"sink": "mqtt"}) or 0
    event = lambda: make_event("stream.up", "cam", time.time(), state="streaming")
    samples = []
    try:
        runner.offer([event()], 1.0)
        _wait(lambda: delivered() >= 1, 20, "the first delivery")
        for i in range(outages):
            before = delivered()
            broker.stop()
            runner.offer([event()], 1.0)
            time.sleep(outage_s)
            broker.start()  # returns once the broker accepts connections
            back = time.monotonic()
            _wait(lambda before=before: delivered() > before, 120, "the spooled event")
            samples.append(time.monotonic() - back)
            print(f"mqtt outage {i + 1}: first spooled event {samples[-1]:.2f}s after the broker was back", flush=True)
    finally:
        runner.close(2.0)
        broker.stop()
    return samples


class _Rtsp:
    def __init__(self, port: int) -> None:
        self.args = ["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), "--port", str(port)]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        """Start the server; the monotonic time it said READY (listening)."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        ready = time.monotonic()
        if line != "READY":
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        return ready

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def rtsp_outages(outages: int, outage_s: float) -> list[float]:
    from vap_video.pipeline.config import StreamConfig
    from vap_video.pipeline.metrics import Metrics
    from vap_video.pipeline.supervisor import Supervisor
    from tests.real_servers import free_port

    port = free_port()
    server = _Rtsp(port)
    lock = threading.Lock()
    frames: list[float] = []

    def emit(frame) -> bool:  # type: ignore[no-untyped-def]
        with lock:
            frames.append(time.monotonic())
        return True

    sup = Supervisor(emit, Metrics())
    samples = []
    try:
        server.start()
        sup.add(StreamConfig(name="cam", url=f"rtsp://127.0.0.1:{port}/cam"))  # every setting at its default
        _wait(lambda: len(frames) >= 10, 60, "the first frames")
        for i in range(outages):
            server.kill()
            killed = time.monotonic()
            time.sleep(outage_s)
            back = server.start()
            _wait(lambda back=back: frames[-1] > back, 120, "a frame after the restart")
            with lock:
                first = next(t for t in frames if t > back)
            samples.append(first - back)
            print(f"rtsp outage {i + 1} ({back - killed:.0f}s): first frame {samples[-1]:.2f}s after the server "
                  "was back", flush=True)
            time.sleep(3.0)
    finally:
        sup.stop_all(5.0)
        server.kill()
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["mqtt", "rtsp"])
    ap.add_argument("--outages", type=int, default=5)
    ap.add_argument("--outage-s", type=float, default=None, help="seconds each outage lasts (mqtt 15, rtsp 45)")
    ap.add_argument("--label", default="", help="what is measured, e.g. the commit")
    ap.add_argument("--out", type=Path, default=None, help="append the result as one JSON line here "
                    "(benchmarks/recovery.jsonl holds the runs quoted in recovery.md)")
    args = ap.parse_args(argv)
    outage_s = args.outage_s if args.outage_s is not None else (15.0 if args.what == "mqtt" else 45.0)
    run = mqtt_outages if args.what == "mqtt" else rtsp_outages
    samples = run(args.outages, outage_s)
    result = {"what": args.what, "label": args.label, "outage_s": outage_s, "samples_s": [round(s, 3) for s in samples],
              "median_s": round(statistics.median(samples), 3), "max_s": round(max(samples), 3),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(result))
    if args.out is not None:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    if not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, str(ROOT))  # else PYTHONPATH names the code to measure (another checkout)
    sys.exit(main())
