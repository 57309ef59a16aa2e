"""Does `intra_op_threads: 0` (the pipeline's own thread trial) pick the faster count? (issue 20)

    PYTHONPATH=. python benchmarks/auto_threads.py [--rounds 2] [--out benchmarks/auto-threads.json]

For two models whose best count differs on 2 cores, the shipped small model (320, decode-bound)
and vap's n scale at 640 (random weights, engine-bound), one 720p H.264 stream runs through the
whole pipeline with 1 intra-op thread, with 2, and with 0 (the tuner: starts at cores - 1, tries
cores once the engine is the limit, keeps the faster). Reported per cell: the steady rate (10 % to
90 % of the frames) and, for the tuner, the threads it kept and the rate after it chose. Cells
rotate round by round; medians over rounds.
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

from benchmarks.n640_ratio import export_n640  # noqa: E402
from vap_video.engines.hostinfo import machine  # noqa: E402
from vap_video.pipeline.model_config import SHIPPED_MODEL  # noqa: E402
from vap_video.pipeline.tools.bench_stages import HD, pipeline_run  # noqa: E402

FRAMES = {"shipped": 1500, "n640": 600}   # each run lasts well past the tuner's ~8 s of trial


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "auto-threads.json")
    args = ap.parse_args(argv)
    from vap_video.engines.synth import write_video

    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vap-auto-threads-") as td:
        tmp = Path(td)
        models = {"shipped": SHIPPED_MODEL, "n640": export_n640(tmp / "vap-n640.onnx")}
        clips = {name: write_video(tmp / f"{name}.mp4", seed=3, frames=n, width=HD[0], height=HD[1], fps=25,
                                   num_objects=6) for name, n in FRAMES.items()}
        cells = [(m, th) for m in models for th in (1, 2, 0)]
        for r in range(args.rounds):
            for m, th in cells[r % len(cells):] + cells[:r % len(cells)]:
                row = pipeline_run(models[m], [clips[m]], 1, 8, th, tmp)
                runs.setdefault(f"{m}-t{th}", []).append(row)
                print(f"  round {r + 1} {m} threads {th}: steady {row['fps_steady']}"
                      + (f", kept {row['threads_kept']}, after choice {row['fps_after_choice']} ({row['tuner']})"
                         if th == 0 else ""), file=sys.stderr)
    summary = {}
    for m in models:
        fixed = {th: round(statistics.median(x["fps_steady"] for x in runs[f"{m}-t{th}"]), 1) for th in (1, 2)}
        auto = runs[f"{m}-t0"]
        after = [x["fps_after_choice"] for x in auto if x["fps_after_choice"]]
        summary[m] = {"fixed_steady": fixed, "best_fixed": max(fixed, key=lambda t: fixed[t]),
                      "kept": [x["threads_kept"] for x in auto],
                      "auto_steady": statistics.median(x["fps_steady"] for x in auto),
                      "auto_after_choice": statistics.median(after) if after else None}
        ratio = summary[m]["auto_after_choice"] / max(fixed.values()) if after else None
        summary[m]["auto_after_choice_to_best_fixed"] = None if ratio is None else round(ratio, 3)
    result = {"machine": machine(), "frames": FRAMES, "rounds": args.rounds, "runs": runs, "summary": summary}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
