"""`vap bench --stages`: where every millisecond of a frame goes, and how the engine is best scheduled.

Two measurements, on the same 720p H.264 clips and model, in one run:

* **Stage budget.** Each stage of the data path run on its own, in one thread, over the clip:
  demux, decode, colour conversion, resize/letterbox (the two-pass path: full-size RGB, then
  OpenCV), the one-pass path the decoders now use (swscale converts and scales together),
  batch assembly and normalisation, engine, postprocess, tracker, analytics, sink. CPU-ms per
  frame, so the sum says what one frame costs the machine. Then the real pipeline on the same
  clip: wall ms per frame and how much of it the engine spent waiting for input.
* **Scheduling grid.** Pipeline throughput (and engine-only throughput) for each max batch size
  and ONNX Runtime intra-op thread count, measured round-robin so drift hits all cells alike.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from vap_video.engines.hostinfo import machine
from vap_video.engines.letterbox import placement
from vap_video.pipeline.model_config import SHIPPED_MODEL
from vap_video.pipeline.settings import parse_settings

HD = (1280, 720)


def _per_frame_ms(seconds: list[float], frames: int) -> float:
    return round(1000 * sum(seconds) / max(1, frames), 3)


def _one_pass(reformatter: Any, vf: Any, h: int, w: int) -> np.ndarray:
    return reformatter.reformat(vf, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def stage_budget(model: Path, clip: Path, batch: int = 8, threads: int = 1) -> dict[str, float]:
    """CPU-ms per frame of every stage, each run alone in this thread (see the module docstring)."""
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.analytics import AnalyticsConfig, StreamAnalytics
    from vap_video.pipeline.postprocess import Postprocessor
    from vap_video.pipeline.preprocess import BatchPreprocessor
    from vap_video.pipeline.sinks import JsonlSink, JsonlSinkConfig
    from vap_video.pipeline.tracking import ByteTracker, TrackerConfig

    be = load_backend(model, intra_op_threads=threads)
    info = be.info
    t: dict[str, list[float]] = {k: [] for k in ("demux", "decode", "colour_conversion", "resize_letterbox",
                                                 "one_pass_convert_scale", "batch_normalise", "engine", "post",
                                                 "tracker", "analytics", "sinks")}

    def timed(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        out = fn(*args, **kwargs)
        t[key].append(time.process_time() - t0)
        return out

    with av.open(str(clip)) as c:                       # demux alone
        s = c.streams.video[0]
        packets = c.demux(s)
        while timed("demux", next, packets, None) is not None:
            pass
    small: list[np.ndarray] = []
    src_hw: tuple[int, int] = (0, 0)
    reformatter = VideoReformatter()  # as the sources do: one swscale context for the whole stream
    with av.open(str(clip)) as c:                       # decode, then both ways to the engine size
        s = c.streams.video[0]
        s.thread_type = "SLICE"  # one thread: CPU time of the stage itself, not of helper threads
        for packet in c.demux(s):
            for vf in timed("decode", packet.decode):
                src_hw = (vf.height, vf.width)
                nh, nw, _ = placement(vf.height, vf.width, *info.input_hw)
                rgb = timed("colour_conversion", vf.to_ndarray, format="rgb24")
                timed("resize_letterbox", cv2.resize, rgb, (nw, nh), interpolation=cv2.INTER_AREA)
                small.append(timed("one_pass_convert_scale", _one_pass, reformatter, vf, nh, nw))
    n = len(small)
    prep = BatchPreprocessor(info.input_hw, info.stride, rect=info.dynamic_hw)
    post = Postprocessor(info.names)
    tracker = ByteTracker(TrackerConfig())
    analytics = StreamAnalytics("s", AnalyticsConfig.model_validate({
        "zones": [{"name": "z", "polygon": [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]], "relative": True}],
        "lines": [{"name": "l", "points": [[0.5, 0.0], [0.5, 1.0]], "relative": True}]}), info.names)
    with tempfile.TemporaryDirectory(prefix="vap-stages-") as td:
        sink = JsonlSink(JsonlSinkConfig(path=Path(td) / "ev.jsonl", fsync="never"))
        be.infer(prep(small[:batch], [src_hw] * min(batch, n))[0])  # warm-up
        for i in range(0, n, batch):
            chunk = small[i:i + batch]
            x, lbs = timed("batch_normalise", prep, chunk, [src_hw] * len(chunk))
            out = timed("engine", be.infer, x)
            dets = timed("post", post, out, lbs)
            for j, d in enumerate(dets):
                ts = (i + j) / 25
                tracks = timed("tracker", tracker.update, d, ts)
                events = timed("analytics", analytics.update, tracks, ts, time.time(), src_hw)
                if events:  # the bus hands a sink only non-empty batches
                    timed("sinks", sink.write, events)
        sink.close()
    be.close()
    out = {k: _per_frame_ms(v, n) for k, v in t.items()}
    out["frames"] = n
    out["two_pass_total"] = round(sum(out[k] for k in ("demux", "decode", "colour_conversion", "resize_letterbox",
                                                       "batch_normalise", "engine", "post", "tracker", "analytics",
                                                       "sinks")), 3)
    out["one_pass_total"] = round(out["two_pass_total"] - out["colour_conversion"] - out["resize_letterbox"]
                                  + out["one_pass_convert_scale"], 3)
    return out


def pipeline_run(model: Path, clips: list[Path], streams: int, max_batch: int, threads: int, tmp: Path,
                 full_frames: bool = False, thread_type: str | None = None) -> dict[str, Any]:
    """One file run through the whole pipeline: frames/s, wall and CPU ms per frame, engine busy and idle.

    `full_frames` decodes to full-size RGB and resizes in the batch step (what happens when a
    consumer of the full picture is configured, and what every run did before one-pass decoding).
    `thread_type` overrides the decoders' FFmpeg threading ("SLICE" or "AUTO") for this run.
    """
    from vap_video.pipeline import sources
    from vap_video.pipeline.runtime import Pipeline

    cfg = {"streams": [{"name": f"f{i}", "url": str(clips[i % len(clips)])} for i in range(streams)],
           "model": {"path": str(model), "onnxruntime": {"intra_op_threads": threads}},
           "batch": {"max_batch": max_batch, "max_delay_ms": 10},
           "sinks": [{"path": str(tmp / "ev.jsonl"), "fsync": "never"}], "server": {"enabled": False}}
    p = Pipeline(parse_settings(cfg, "bench"))
    if full_frames:
        p.decode_plan = p.supervisor.plan = None
    chosen = sources.AVSource.thread_type
    if thread_type:
        sources.AVSource.thread_type = property(lambda _self: thread_type)  # type: ignore[method-assign,assignment]
    reg = p.metrics.registry

    def processed() -> float:
        return sum(reg.get_sample_value("vap_frames_processed_total", {"stream": f"f{i}"}) or 0 for i in range(streams))

    samples: list[tuple[float, float]] = []
    chosen_at: float | None = None   # when the engine thread tuner kept its choice (threads 0)
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        p.start()
        while not p.wait(0.2):   # the progress curve, for the steady rate without start-up and tail
            samples.append((time.perf_counter(), processed()))
            if chosen_at is None and p._tuner is not None and p._tuner.done:
                chosen_at = samples[-1][1]
            if p.error is not None or time.perf_counter() - t0 > 1800:
                break
        ok = p.wait(0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        p.stop()
    finally:
        sources.AVSource.thread_type = chosen  # type: ignore[method-assign]
    if not ok:
        raise RuntimeError("benchmark run did not finish")
    frames = processed()
    busy = reg.get_sample_value("vap_stage_seconds_sum", {"stage": "inference"}) or 0.0
    return {"streams": streams, "max_batch": max_batch, "intra_op_threads": threads, "full_frames": full_frames,
            "thread_type": thread_type or "AUTO",
            "frames": int(frames), "fps": round(frames / wall, 1),
            "fps_steady": _steady_fps(samples, frames), "wall_ms_per_frame": round(1000 * wall / frames, 3),
            "cpu_ms_per_frame": round(1000 * cpu / frames, 3),
            "engine_busy_ms_per_frame": round(1000 * busy / frames, 3),
            "engine_waiting_ms_per_frame": round(1000 * (wall - busy) / frames, 3),
            **_tuner_report(p, samples, frames, chosen_at)}


def _tuner_report(p: Any, samples: list[tuple[float, float]], frames: float, chosen_at: float | None) -> dict:
    """With intra_op_threads 0: the threads kept, why, and the steady rate after the choice."""
    if p._tuner is None:
        return {}
    after = [(t, n) for t, n in samples if chosen_at is not None and chosen_at <= n <= 0.9 * frames]
    rate = (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0]) if len(after) > 1 else None
    return {"threads_kept": p._tuner.threads, "tuner": p._tuner.decision or "no decision before the end",
            "chosen_at_frame": chosen_at, "fps_after_choice": None if rate is None else round(rate, 1)}


def _steady_fps(samples: list[tuple[float, float]], total: float) -> float:
    """Frames/s between 10 % and 90 % of the frames: the rate without model loading, decoder
    opening and the last partial batches (what the engine-only figure is compared with)."""
    inside = [(t, n) for t, n in samples if 0.1 * total <= n <= 0.9 * total]
    if len(inside) < 2 or inside[-1][1] == inside[0][1]:
        return 0.0
    return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 1)


def engine_fps(model: Path, batch: int, threads: int, seconds: float) -> float:
    """Bare engine frames/s at `batch`, fed the pipeline's input shape for 720p."""
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.preprocess import plan_shape

    be = load_backend(model, intra_op_threads=threads)
    h, w = plan_shape([(HD[1], HD[0])], be.info.input_hw, be.info.stride, rect=be.info.dynamic_hw)
    x = np.random.default_rng(0).random((batch, 3, h, w), dtype=np.float32)
    if be.info.input_dtype == "uint8":
        x = (x * 255).astype(np.uint8)
    be.infer(x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        be.infer(x)
        times.append(time.perf_counter() - t0)
    be.close()
    return round(batch / statistics.median(times), 1)


def run_stages(model: Path | None, out_dir: Path, quick: bool = False, rounds: int = 3,
               batches: tuple[int, ...] = (1, 4, 8), threads: tuple[int, ...] = (1, 2)) -> int:
    from vap_video.engines.synth import write_video

    model = model or SHIPPED_MODEL
    if not model.exists():
        print(f"error: model {model} not found (pass --model)", file=sys.stderr)
        return 3
    frames = 40 if quick else 150
    rounds = 1 if quick else rounds
    result: dict[str, Any] = {"machine": machine(), "model": model.name,
                              "clip": f"{HD[0]}x{HD[1]} H.264, {frames} frames"}
    with tempfile.TemporaryDirectory(prefix="vap-stages-") as td:
        tmp = Path(td)
        clips = [write_video(tmp / f"clip{i}.mp4", seed=10 + i, frames=frames, width=HD[0], height=HD[1], fps=25,
                             num_objects=6) for i in range(4)]
        result["stage_budget_ms_per_frame"] = stage_budget(model, clips[0])
        print(f"stage budget (CPU-ms/frame): {result['stage_budget_ms_per_frame']}", file=sys.stderr)
        cells = [(b, th) for b in batches for th in threads]
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(rounds):   # round-robin: every cell and variant sees the same minutes of load
            for streams in (1, 4):
                for full in (True, False):
                    row = pipeline_run(model, clips, streams, 8, 1, tmp, full_frames=full)
                    runs.setdefault(f"{streams}-{'full' if full else 'one-pass'}", []).append(row)
                row = pipeline_run(model, clips, streams, 8, 1, tmp, thread_type="SLICE")
                runs.setdefault(f"{streams}-one-pass-slice-threads", []).append(row)
            for b, th in cells:
                row = pipeline_run(model, clips, 1, b, th, tmp)
                row["engine_fps"] = engine_fps(model, b, th, 0.5 if quick else 1.5)
                runs.setdefault(f"grid-b{b}-t{th}", []).append(row)
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
        result["runs"] = runs
        result["medians"] = {k: {f: statistics.median(x[f] for x in v) for f in v[0] if isinstance(v[0][f], float)}
                             for k, v in runs.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"stages-{model.stem}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result["medians"].items():
        print(f"  {k:<22} {v}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0
