"""`vap run` against Ultralytics' `model.track(stream=True)`: same ONNX, same file, wall time.

    PYTHONPATH=. python benchmarks/vs_ultralytics.py [--model M.onnx] [--frames 200] [--pairs 3]
                                                     [--out benchmarks/vs-ultralytics.json]

Without --model, a standard n-scale vap detector (random weights; the compute does not depend on
them) is exported at 640 with dynamic batch and H/W, so both sides run the same graph at the same
rectangular input size (384x640 for 720p: both letterbox to the smallest stride multiple).
Ultralytics gets a copy whose metadata is rewritten in the form its loader parses.
The clip is 720p H.264 from the scene generator. Each side runs as its own process, timed from
start to exit (what a user waits for), and also reports its frame count: every frame must be
processed by both. Pairs are interleaved (vap, Ultralytics, vap, ...) and medians compared,
because the machine is shared.

Ultralytics (AGPL-3.0) is never imported here: it runs with the benchmark venv's Python
(~/.cache/vap-bench/venv, made by tests/run.sh), offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_PYTHON = Path.home() / ".cache" / "vap-bench" / "venv" / "bin" / "python"
ROOT = Path(__file__).resolve().parent.parent

ULTRALYTICS_LOOP = """
import json, sys, time
from ultralytics import YOLO
model = YOLO(sys.argv[1], task="detect")
t0 = time.perf_counter()
n = 0
for _ in model.track(source=sys.argv[2], stream=True, imgsz=640, verbose=False, persist=True):
    n += 1
print(json.dumps({"frames": n, "loop_s": time.perf_counter() - t0}))
"""


def export_n640(out: Path) -> Path:
    from vap_video.engines.detector import DetectorConfig, build_detector
    from vap_video.engines.export import export_model
    from vap_video.engines.synth import CLASS_NAMES

    return export_model(build_detector(DetectorConfig(scale="n", nc=len(CLASS_NAMES))), out, 640, list(CLASS_NAMES),
                        dynamic_hw=True)


def ultralytics_copy(model: Path, out: Path) -> Path:
    """The same graph with its metadata written as Python literals, the way Ultralytics' loader
    reads it (`ast.literal_eval`; vap writes JSON, whose `true` it cannot parse)."""
    import onnx

    from vap_video.engines.metadata import read_onnx_metadata

    meta = read_onnx_metadata(model)
    m = onnx.load(str(model))
    del m.metadata_props[:]
    names = meta["names"]
    by_id = {int(k): v for k, v in names.items()} if isinstance(names, dict) else dict(enumerate(names))
    literal = {"names": repr(by_id),
               "imgsz": repr(list(meta["imgsz"])), "stride": repr(int(meta["stride"])), "task": "detect",
               "batch": "1", "end2end": "True", "dynamic": "True"}
    for k, v in literal.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(out))
    return out


def run_ultralytics(model: Path, clip: Path) -> dict[str, float]:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    p = subprocess.run([str(VENV_PYTHON), "-c", ULTRALYTICS_LOOP, str(model), str(clip)], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=1800, check=False)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"ultralytics failed: {p.stderr[-2000:]}")
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "wall_s": wall}


def run_vap(model: Path, clip: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)  # the default JSONL sink writes under the working folder
    # exit 0 only when the file was processed to its end (every frame: files have backpressure)
    p = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", "--log-level", "warning", "run", str(clip),
                        "--model",
                        str(model), "--quiet"], capture_output=True, text=True, env=env, cwd=out,
                       stdin=subprocess.DEVNULL, timeout=1800, check=False)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"vap run failed ({p.returncode}): {p.stderr[-2000:]}")
    return {"wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not VENV_PYTHON.exists():
        print(f"error: no benchmark venv at {VENV_PYTHON} (bash tests/run.sh makes it)", file=sys.stderr)
        return 2
    from vap_video.engines.hostinfo import machine
    from vap_video.engines.synth import write_video

    with tempfile.TemporaryDirectory(prefix="vap-vs-ul-") as td:
        tmp = Path(td)
        model = args.model or export_n640(tmp / "vap-n640-static.onnx")
        clip = write_video(tmp / "clip.mp4", seed=10, frames=args.frames, width=1280, height=720, fps=25)
        ul_model = ultralytics_copy(model, tmp / "ultralytics-copy.onnx")
        rows: dict[str, list[dict[str, float]]] = {"vap": [], "ultralytics": []}
        for i in range(args.pairs):
            rows["vap"].append(run_vap(model, clip, tmp / f"vap{i}"))
            rows["ultralytics"].append(run_ultralytics(ul_model, clip))
            print(f"pair {i + 1}: vap {rows['vap'][-1]['wall_s']:.1f}s, ultralytics "
                  f"{rows['ultralytics'][-1]['wall_s']:.1f}s ({rows['ultralytics'][-1]['frames']} frames)",
                  file=sys.stderr)
    med = {k: round(statistics.median(r["wall_s"] for r in v), 2) for k, v in rows.items()}
    result = {"machine": machine(), "load_avg": os.getloadavg(), "model": model.name,
              "clip": f"1280x720 H.264, {args.frames} frames", "runs": rows, "wall_s_median": med,
              "ratio_vap_to_ultralytics_wall": round(med["vap"] / med["ultralytics"], 3)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
