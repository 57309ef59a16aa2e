"""`vap demo`: the shipped model on synthetic cameras and a generated file, with zones and a line.

Everything it needs ships with vap or is generated on the spot (no downloads): the model in
`vap_video/engines/models/`, live synthetic cameras (`synthetic://`), and a clip written by the scene
generator. It serves metrics, writes events (JSONL) and an annotated MP4, prints a summary and
ends by itself.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from vap_video.pipeline.annotate import AnnotatedWriter
from vap_video.pipeline.model_config import SHIPPED_MODEL
from vap_video.pipeline.settings import parse_settings

DEMO_FPS = 10
DEMO_SIZE = (640, 360)

# Geometry in relative coordinates: the synthetic scene's road runs left-right across the middle.
DEMO_ANALYTICS: dict[str, Any] = {
    "zones": [{"name": "right_half", "relative": True,
               "polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]], "loiter_s": 6.0}],
    "lines": [{"name": "center", "relative": True, "points": [[0.5, 0.0], [0.5, 1.0]]}],
}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def demo_settings(out: Path, cameras: int, port: int, clip: Path, model: Path = SHIPPED_MODEL) -> Any:
    w, h = DEMO_SIZE
    streams = [{"name": f"cam{i + 1}", "analytics": DEMO_ANALYTICS,
                "url": f"synthetic://?seed={i + 1}&fps={DEMO_FPS}&width={w}&height={h}&objects=5"}
               for i in range(cameras)]
    streams.append({"name": "clip", "url": str(clip), "analytics": DEMO_ANALYTICS})
    return parse_settings({
        "streams": streams,
        "model": {"path": str(model)},
        "batch": {"max_batch": 4, "max_delay_ms": 20, "per_stream_cap": 2},
        "sinks": [{"type": "jsonl", "path": str(out / "events.jsonl")}],
        "server": {"port": port},
    }, "demo")


def run_demo(out: Path, duration: float = 20.0, cameras: int = 2, port: int = 9108, quiet: bool = False,
             model: Path | None = None) -> int:
    from vap_video.engines.synth import write_video
    from vap_video.pipeline.run import EXIT_MODEL, run_pipeline

    model = model or SHIPPED_MODEL
    if not model.exists():
        print(f"error: the model {model} is missing; reinstall vap, or train one with "
              "`vap train configs/train-synth.yaml` and export it there", file=sys.stderr)
        return EXIT_MODEL
    out.mkdir(parents=True, exist_ok=True)
    events_file = out / "events.jsonl"
    if events_file.exists():
        events_file.unlink()  # one demo run, one event file
    if port and not _port_free(port):
        print(f"port {port} is busy; serving metrics on a free port instead", file=sys.stderr)
        port = 0
    clip = out / "clip.mp4"
    w, h = DEMO_SIZE
    print(f"writing a {int(duration // 2)} s synthetic clip to {clip} ...", file=sys.stderr)
    write_video(clip, seed=100, frames=int(DEMO_FPS * max(2, duration // 2)), width=w, height=h, fps=DEMO_FPS,
                num_objects=5)
    settings = demo_settings(out, cameras, port, clip, model)
    writer = AnnotatedWriter(out / "annotated.mp4", "clip", [], fps=DEMO_FPS,
                             analytics=settings.stream_analytics(settings.streams[-1]))
    summary: dict[str, Any] = {}

    def done(pipeline: Any) -> None:
        writer.close()
        summary.update(summarise(pipeline, events_file))

    def prepare(pipeline: Any) -> None:
        writer.names = pipeline.names
        pipeline.hooks.append(writer)

    print(f"demo: {cameras} synthetic cameras ({w}x{h} @ {DEMO_FPS} fps) + 1 clip for {duration:.0f} s; "
          f"Ctrl-C ends it early", file=sys.stderr)
    code = run_pipeline(settings, quiet=quiet, duration=duration, prepare=prepare, on_done=done)
    summary["annotated_video"] = str(writer.path) if writer.frames else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out)
    return code


def summarise(pipeline: Any, events_file: Path) -> dict[str, Any]:
    reg = pipeline.metrics.registry
    streams = {}
    for s in pipeline.streams():
        name = s["name"]
        drops = {r: reg.get_sample_value("vap_frames_dropped_total", {"stream": name, "reason": r}) or 0
                 for r in ("stale", "stride", "corrupt")}
        streams[name] = {"state": s["state"], "decoded": s["frames"],
                         "processed": reg.get_sample_value("vap_frames_processed_total", {"stream": name}) or 0,
                         "dropped": {k: v for k, v in drops.items() if v}}
    by_type: dict[str, int] = {}
    if events_file.exists():
        for line in events_file.read_text().splitlines():
            t = json.loads(line)["type"]
            by_type[t] = by_type.get(t, 0) + 1
    lat = pipeline.latency_percentiles()
    return {"streams": streams, "events": dict(sorted(by_type.items())), "events_file": str(events_file),
            "latency_ms_p50_p95": {k: [round(v[0] * 1e3, 1), round(v[1] * 1e3, 1)] for k, v in lat.items()}}


def print_summary(summary: dict[str, Any], out: Path) -> None:
    print("\nvap demo summary", file=sys.stderr)
    for name, s in summary.get("streams", {}).items():
        lat = summary.get("latency_ms_p50_p95", {}).get(name)
        lat_s = f", latency p50/p95 {lat[0]:.0f}/{lat[1]:.0f} ms" if lat else ""
        print(f"  {name:<6} {s['processed']:>5.0f} frames processed, dropped {s['dropped'] or 0}{lat_s}",
              file=sys.stderr)
    print(f"  events: {summary.get('events')}", file=sys.stderr)
    print(f"  files: {summary.get('events_file')}, {summary.get('annotated_video')}, {out / 'summary.json'}",
          file=sys.stderr)
