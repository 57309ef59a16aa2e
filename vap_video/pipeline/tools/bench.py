"""`vap bench`: engine-only vs full-pipeline throughput, live latency, and a memory soak.

Measured on whatever machine runs it, in one run, so the ratios compare like with like. The
engine-only number uses the exact input shape the pipeline feeds the engine for 720p frames
(rectangular letterbox when the engine allows it), so the ratio isolates pipeline overhead:
decode, preprocessing, batching, tracking, analytics and event delivery.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.hostinfo import machine
from vap_video.pipeline.batcher import BatchConfig
from vap_video.pipeline.model_config import SHIPPED_MODEL
from vap_video.pipeline.settings import parse_settings

HD = (1280, 720)


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def engine_only(model: Path, batch_sizes: list[int], seconds: float) -> dict[int, float]:
    """Frames/s of the bare engine at each batch size, fed the pipeline's input shape for 720p."""
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.preprocess import plan_shape

    be = load_backend(model)
    h, w = plan_shape([(HD[1], HD[0])], be.info.input_hw, be.info.stride, rect=be.info.dynamic_hw)
    out = {}
    for b in batch_sizes:
        x = np.random.default_rng(0).random((b, 3, h, w), dtype=np.float32)
        if be.info.input_dtype == "uint8":
            x = (x * 255).astype(np.uint8)
        be.infer(x)  # warm-up
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            be.infer(x)
            times.append(time.perf_counter() - t0)
        out[b] = b / statistics.median(times)
    be.close()
    return out


def _run(settings: Any, timeout: float) -> tuple[Any, float]:
    from vap_video.pipeline.runtime import Pipeline
    p = Pipeline(settings)
    t0 = time.perf_counter()
    p.start()
    ok = p.wait(timeout)
    dt = time.perf_counter() - t0
    p.stop()
    if not ok:
        raise RuntimeError(f"benchmark run did not finish within {timeout:.0f}s")
    return p, dt


def pipeline_files(model: Path, clips: list[Path], n_streams: int, max_batch: int, tmp: Path) -> dict[str, Any]:
    streams = [{"name": f"f{i}", "url": str(clips[i % len(clips)])} for i in range(n_streams)]
    settings = parse_settings({"streams": streams, "model": {"path": str(model)},
                               "batch": {"max_batch": max_batch},
                               "sinks": [{"path": str(tmp / f"ev-{n_streams}.jsonl"), "fsync": "never"}],
                               "server": {"enabled": False}}, "bench")
    p, dt = _run(settings, timeout=1800)
    frames = sum(p.metrics.registry.get_sample_value("vap_frames_processed_total", {"stream": s["name"]}) or 0
                 for s in streams)
    return {"streams": n_streams, "frames": int(frames), "seconds": round(dt, 2), "fps": frames / dt}


def live_latency(model: Path, n_streams: int, fps: float, seconds: float, tmp: Path) -> dict[str, Any]:
    """Synthetic 720p cameras paced at `fps`: capture-to-event and capture-to-done percentiles."""
    from vap_video.pipeline.runtime import Pipeline

    w, h = HD
    streams = [{"name": f"live{i}", "url": f"synthetic://?seed={i + 1}&fps={fps}&width={w}&height={h}&objects=6"}
               for i in range(n_streams)]
    settings = parse_settings({"streams": streams, "model": {"path": str(model)},
                               "batch": {"max_batch": max(1, n_streams), "max_delay_ms": 10},
                               "sinks": [{"path": str(tmp / "live.jsonl"), "fsync": "never"}],
                               "server": {"enabled": False}}, "bench")
    p = Pipeline(settings)
    lat: list[float] = []
    p.hooks.append(lambda frame, dets, tracks, events: lat.append(time.time() - frame.capture_ts))
    p.start()
    time.sleep(seconds)
    p.stop()
    reg = p.metrics.registry
    dropped = sum(reg.get_sample_value("vap_frames_dropped_total", {"stream": s["name"], "reason": "stale"}) or 0
                  for s in streams)
    decoded = sum(reg.get_sample_value("vap_frames_decoded_total", {"stream": s["name"]}) or 0 for s in streams)
    arr = np.array(lat[len(lat) // 10:] or [float("nan")])  # skip the warm-up tenth
    return {"streams": n_streams, "fps_each": fps, "frames_done": len(lat), "decoded": int(decoded),
            "dropped_stale": int(dropped),
            "latency_ms": {q: round(float(np.percentile(arr, int(q[1:]))) * 1e3, 1) for q in ("p50", "p95", "p99")}}


def soak(model: Path, seconds: float, n_streams: int, tmp: Path) -> dict[str, Any]:
    """Live synthetic streams for `seconds`; RSS sampled each 10 s (flat memory is the goal)."""
    from vap_video.pipeline.runtime import Pipeline

    streams = [{"name": f"s{i}", "url": f"synthetic://?seed={i + 1}&fps=10&width=640&height=360&objects=8"}
               for i in range(n_streams)]
    settings = parse_settings({"streams": streams, "model": {"path": str(model)},
                               "batch": {"max_batch": n_streams, "max_delay_ms": 20},
                               "sinks": [{"path": str(tmp / "soak.jsonl"), "fsync": "never", "rotate_mb": 5,
                                          "max_files": 2}],
                               "server": {"enabled": False}}, "bench")
    p = Pipeline(settings)
    p.start()
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(min(10.0, seconds))
        samples.append(round(rss_mb(), 1))
    p.stop()
    warm = samples[min(len(samples) - 1, max(1, len(samples) // 5))]  # after warm-up
    return {"seconds": seconds, "streams": n_streams, "rss_mb_samples": samples, "rss_mb_after_warmup": warm,
            "rss_mb_end": samples[-1], "growth_mb": round(samples[-1] - warm, 1)}


def run_bench(model: Path | None, out_dir: Path, quick: bool = False, soak_s: float = 0.0) -> int:
    from vap_video.engines.synth import write_video

    model = model or SHIPPED_MODEL
    if not model.exists():
        print(f"error: model {model} not found (pass --model)", file=sys.stderr)
        return 3
    seconds = 2.0 if quick else 8.0
    frames_per_clip = 30 if quick else 100
    stream_counts = [1, 4] if quick else [1, 4, 16]
    max_batch = BatchConfig().max_batch  # the pipeline as configured by default
    command = "vap " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("vap") else "vap bench"
    result: dict[str, Any] = {"machine": machine(), "model": str(model), "quick": quick, "command": command}
    host = result["machine"]
    print(f"bench: model {model.name}, machine {host['cpu']} x{host['cores']}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vap-bench-") as td:
        tmp = Path(td)
        clips = [write_video(tmp / f"clip{i}.mp4", seed=10 + i, frames=frames_per_clip, width=HD[0], height=HD[1],
                             fps=25, num_objects=6) for i in range(4)]
        result["rss_mb_start"] = round(rss_mb(), 1)
        eng = engine_only(model, sorted({1, 4, max_batch}), seconds)
        result["engine_fps"] = {str(b): round(v, 1) for b, v in eng.items()}
        print(f"  engine only (frames/s by batch): {result['engine_fps']}", file=sys.stderr)
        runs = []
        for n in stream_counts:
            r = pipeline_files(model, clips, n, max_batch, tmp)
            r["ratio_to_engine"] = round(r["fps"] / eng[max_batch], 3)
            r["fps"] = round(r["fps"], 1)
            runs.append(r)
            print(f"  pipeline {n:>2} file streams 720p: {r['fps']} frames/s = {r['ratio_to_engine']} x engine",
                  file=sys.stderr)
        result["pipeline_files"] = runs
        result["live"] = []
        for n in (1, 2):
            r = live_latency(model, n, 25.0, seconds * 2, tmp)
            result["live"].append(r)
            print(f"  live {n} x 25 fps 720p: latency {r['latency_ms']}, dropped {r['dropped_stale']}/{r['decoded']}",
                  file=sys.stderr)
        if soak_s > 0:
            result["soak"] = soak(model, soak_s, 4, tmp)
            print(f"  soak {soak_s:.0f}s: RSS {result['soak']['rss_mb_after_warmup']} -> "
                  f"{result['soak']['rss_mb_end']} MB", file=sys.stderr)
        result["rss_mb_end"] = round(rss_mb(), 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"pipeline-{model.stem}{'-quick' if quick else ''}.json"
    (out_dir / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_dir / name}", file=sys.stderr)
    return 0
