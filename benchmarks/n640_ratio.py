"""Pipeline against engine-only throughput for a standard n-scale detector at 640 (issue 20).

    PYTHONPATH=. python benchmarks/n640_ratio.py [--rounds 3] [--frames 300] [--out benchmarks/n640-ratio.json]

The model is vap's n scale at 640 with random weights (compute does not depend on them), exported
with dynamic H/W as `vap export` does: 720p frames run at 384x640. For each ONNX Runtime intra-op
thread count, one round measures the bare engine at batch 8 on the pipeline's input shape, then
the pipeline on 1 and on 4 streams of 720p H.264 files (every frame processed, max batch 8). The
cells rotate round by round so drift hits all alike; medians over rounds. The ratio uses the
pipeline's steady rate (10 % to 90 % of the frames: no model loading or last partial batch) and,
for reference, its start-to-end rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vap_video.engines.hostinfo import machine  # noqa: E402
from vap_video.pipeline.tools.bench_stages import HD, engine_fps, pipeline_run  # noqa: E402


def export_n640(out: Path) -> Path:
    from vap_video.engines.detector import DetectorConfig, build_detector
    from vap_video.engines.export import export_model
    from vap_video.engines.synth import CLASS_NAMES

    return export_model(build_detector(DetectorConfig(scale="n", nc=len(CLASS_NAMES))), out, 640, list(CLASS_NAMES),
                        dynamic_hw=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300, help="frames per clip")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts to compare")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "n640-ratio.json")
    args = ap.parse_args(argv)
    from vap_video.engines.synth import write_video

    threads = [int(t) for t in args.threads.split(",")]
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vap-n640-") as td:
        tmp = Path(td)
        model = export_n640(tmp / "vap-n640.onnx")
        clips = [write_video(tmp / f"clip{i}.mp4", seed=10 + i, frames=args.frames, width=HD[0], height=HD[1], fps=25,
                             num_objects=6) for i in range(4)]
        cells = [(th, streams) for th in threads for streams in (0, 1, 4)]   # 0 streams: engine only
        for r in range(args.rounds):
            order = cells[r % len(cells):] + cells[:r % len(cells)]
            for th, streams in order:
                if streams == 0:
                    row = {"engine_fps": engine_fps(model, 8, th, 3.0)}
                else:
                    row = pipeline_run(model, clips, streams, 8, th, tmp)
                runs.setdefault(f"t{th}-s{streams}", []).append(row)
                print(f"  round {r + 1} threads {th} streams {streams}: {row.get('engine_fps') or row['fps_steady']}",
                      file=sys.stderr)
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0] if isinstance(v[0][f], (int, float))}
           for k, v in runs.items()}
    ratios = {}
    for th in threads:
        eng = med[f"t{th}-s0"]["engine_fps"]
        for s in (1, 4):
            m = med[f"t{th}-s{s}"]
            ratios[f"t{th}-s{s}"] = {"steady": round(m["fps_steady"] / eng, 3),
                                     "start_to_end": round(m["fps"] / eng, 3)}
    best_engine = max(med[f"t{th}-s0"]["engine_fps"] for th in threads)
    best = {s: max(med[f"t{th}-s{s}"]["fps_steady"] for th in threads) / best_engine for s in (1, 4)}
    result = {"machine": machine(), "frames_per_clip": args.frames, "rounds": args.rounds, "runs": runs,
              "medians": med, "ratio_same_threads": ratios,
              "ratio_best_pipeline_to_best_engine": {str(s): round(v, 3) for s, v in best.items()}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in ratios.items():
        print(f"{k}: pipeline/engine {v}", file=sys.stderr)
    print(f"best pipeline / best engine: {result['ratio_best_pipeline_to_best_engine']}; wrote {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
