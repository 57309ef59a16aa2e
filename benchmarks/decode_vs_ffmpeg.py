"""vap's decode stage against `ffmpeg -i CLIP -f null -` on the same 720p H.264 clip.

    PYTHONPATH=. python benchmarks/decode_vs_ffmpeg.py [--frames 300] [--rounds 5]
                                                       [--out benchmarks/decode-vs-ffmpeg.json]

The ffmpeg command decodes every frame with its default (frame) threading and hands it to the
null muxer without any pixel conversion, so it is the bare decoder's throughput. vap is measured
through its real file source (`vap_video.pipeline.sources.AVSource`, the code `vap run` uses) in two ways:
decode only (frames dropped before conversion: a max_fps cap that keeps nothing after the first)
and decode plus the one-pass conversion to the shipped model's letterbox size, which is what each
frame costs the pipeline's decoder thread. Rounds alternate the three, and medians are reported,
because the machine is shared. The ratios are taken against ffmpeg's throughput less its
start-up (the same command stopped after the first frame), which a long clip would amortise.
Needs the ffmpeg command line tool (apt-get install ffmpeg).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vap_video.engines.hostinfo import machine
from vap_video.engines.synth import write_video
from vap_video.pipeline.config import StreamConfig
from vap_video.pipeline.decode_plan import DecodePlan, FrameStride
from vap_video.pipeline.sources import AVSource


def ffmpeg_seconds(clip: Path, first_only: bool = False) -> float:
    limit = ["-frames:v", "1"] if first_only else []
    t0 = time.perf_counter()
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(clip), *limit, "-f", "null",
                    "-"], check=True)
    return time.perf_counter() - t0


def ffmpeg_fps(clip: Path, frames: int) -> tuple[float, float]:
    """(frames/s of the whole command, frames/s less its start-up: the same command stopped after one frame)."""
    whole, startup = ffmpeg_seconds(clip), ffmpeg_seconds(clip, first_only=True)
    return frames / whole, frames / max(1e-6, whole - startup)


def vap_fps(clip: Path, convert: bool, max_hw: tuple[int, int], slice_threads: bool = False) -> tuple[float, int]:
    """Frames/s of vap's file source: decode only, or decode + one-pass conversion; with
    `slice_threads` as a live input decodes (no frame threading), to show what frame threading buys."""
    src = AVSource(StreamConfig(name="c", url=str(clip)))

    src.plan = DecodePlan(max_hw)
    if not convert:
        src.stride = FrameStride(1e-6)  # keeps the first frame only: the rest are decoded, never converted
    t0 = time.perf_counter()
    src.open()
    if slice_threads:
        src._stream.thread_type = "SLICE"  # what a live input gets; the codec opens at the first decode
    n = sum(1 for _ in src.frames())
    dt = time.perf_counter() - t0
    src.close()
    decoded = n + (src.stride.dropped if src.stride else 0)
    return decoded / dt, decoded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        print("error: the ffmpeg command is not installed (apt-get install ffmpeg)", file=sys.stderr)
        return 2
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.model_config import SHIPPED_MODEL

    max_hw = load_backend(SHIPPED_MODEL).info.input_hw
    res: dict[str, list[float]] = {"ffmpeg_null": [], "ffmpeg_null_less_startup": [], "vap_decode": [],
                                   "vap_decode_convert": [], "vap_decode_slice_threads": []}
    with tempfile.TemporaryDirectory(prefix="vap-decode-") as td:
        clip = write_video(Path(td) / "clip.mp4", seed=10, frames=args.frames, width=1280, height=720, fps=25)
        for _ in range(args.rounds):
            whole, less_startup = ffmpeg_fps(clip, args.frames)
            res["ffmpeg_null"].append(whole)
            res["ffmpeg_null_less_startup"].append(less_startup)
            fps, n = vap_fps(clip, False, max_hw)
            assert n == args.frames, f"decoded {n} of {args.frames} frames"
            res["vap_decode"].append(fps)
            res["vap_decode_convert"].append(vap_fps(clip, True, max_hw)[0])
            res["vap_decode_slice_threads"].append(vap_fps(clip, False, max_hw, slice_threads=True)[0])
    med = {k: round(statistics.median(v), 1) for k, v in res.items()}
    out = {"machine": machine(), "load_avg": os.getloadavg(), "clip": f"1280x720 H.264, {args.frames} frames",
           "engine_size": list(max_hw), "fps_runs": {k: [round(x, 1) for x in v] for k, v in res.items()},
           "fps_median": med,
           "ratio_decode_to_ffmpeg": round(med["vap_decode"] / med["ffmpeg_null_less_startup"], 3),
           "ratio_decode_convert_to_ffmpeg": round(med["vap_decode_convert"] / med["ffmpeg_null_less_startup"], 3)}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
