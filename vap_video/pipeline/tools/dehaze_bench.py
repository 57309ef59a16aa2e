"""Benchmarks of the dehazing stage (issue 6); results go to benchmarks/dehaze-*.json.

One module of ~410 lines on purpose: five small benchmarks (none over 70 lines) behind one
command, sharing its arguments, the machine record and the JSON output, and named as
`dehaze_bench.WHAT` in benchmarks/dehaze.md; splitting them would scatter one command.

    python -m vap_video.pipeline.tools.dehaze_bench quality  [--out benchmarks/dehaze-quality.json]
    python -m vap_video.pipeline.tools.dehaze_bench map --data runs/data/haze-val/data.yaml --model M.onnx [--model ...]
    python -m vap_video.pipeline.tools.dehaze_bench flicker
    python -m vap_video.pipeline.tools.dehaze_bench speed
    python -m vap_video.pipeline.tools.dehaze_bench pipeline

Why each exists:
- quality: the method's correctness where the answer is known. Synthetic scenes (vap_video.engines.synth) get
  haze from the same scattering model (vap_video.engines.haze); PSNR and SSIM of dehazed vs clean are compared
  with hazy vs clean.
- map: the point of the stage. Detection mAP50-95 of an ONNX model on a hazy validation set, with
  the images fed as the pipeline feeds them (dehaze, then letterbox), with and without the stage.
- flicker: video stability. Frame-to-frame change of mean brightness on a hazy synthetic video with
  the smoothed A against A re-estimated on every frame.
- speed / pipeline: stage latency at 720p and 1080p, and frames/s of the whole pipeline with the
  stage on against off, in one run on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.pipeline.dehaze import DehazeConfig, Dehazer, fit_to

ENGINE_HW = (320, 320)  # the shipped model's input: what the runtime path dehazes at

# ----------------------------------------------------------------------------------------------
# image quality


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang, Bovik, Sheikh, Simoncelli 2004): Gaussian window sigma 1.5 (11 px), K1 0.01,
    K2 0.03, L 255, computed per channel and averaged. Written here with SciPy (no scikit-image)."""
    from scipy.ndimage import gaussian_filter

    x = a.astype(np.float64)
    y = b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[:, :, None], y[:, :, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(x.shape[2]):
        xi, yi = x[:, :, c], y[:, :, c]
        f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)
        mx, my = f(xi), f(yi)
        sxx = f(xi * xi) - mx * mx
        syy = f(yi * yi) - my * my
        sxy = f(xi * yi) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(float(m[5:-5, 5:-5].mean()))  # drop the border where the window is clipped
    return float(np.mean(vals))


def quality(n_scenes: int = 12, size: tuple[int, int] = (640, 360),
            transmissions: tuple[float, ...] = (0.3, 0.5, 0.7),
            uniform: tuple[float, ...] = (0.25, 0.15)) -> dict[str, Any]:
    """PSNR/SSIM against the clean picture: depth-gradient haze at each far-row transmission, then
    dense even fog (the same transmission everywhere, `uniform`), where a sky mask that took the
    fogged picture for sky once switched the stage off."""
    from vap_video.engines.haze import add_haze
    from vap_video.engines.synth import render_image

    w, h = size
    modes = {"dcp": DehazeConfig(enabled=True, gate=False),
             "dcp_gated": DehazeConfig(enabled=True),  # each picture a new scene: on iff score >= gate_on
             "clahe": DehazeConfig(enabled=True, gate=False, mode="clahe")}
    rows = []
    for t, gradient in [(t, True) for t in transmissions] + [(t, False) for t in uniform]:
        acc: dict[str, list[float]] = {}
        for i in range(n_scenes):
            clean = render_image((101, i), w, h)[0]
            airlight = 0.75 + 0.2 * ((i * 7) % 10) / 9  # 0.75..0.95 like the training generator
            hazy = add_haze(clean, t, airlight, depth_gradient=gradient)
            outs = {"hazy": hazy, **{m: Dehazer(c).process(hazy) for m, c in modes.items()}}
            for name, img in outs.items():
                acc.setdefault(f"{name}_psnr", []).append(psnr(img, clean))
                acc.setdefault(f"{name}_ssim", []).append(ssim(img, clean))
            acc.setdefault("dcp_better_psnr", []).append(float(psnr(outs["dcp"], clean) > psnr(hazy, clean)))
        rows.append({"transmission_far": t, "haze": "depth gradient" if gradient else "uniform", "scenes": n_scenes,
                     **{k: round(float(np.mean(v)), 4) for k, v in acc.items()}})
    return {"size": f"{w}x{h}", "haze": "vap_video.engines.haze.add_haze, depth gradient (t at the top rows given; "
            "clear near the bottom) or uniform (t everywhere), airlight 0.75..0.95", "rows": rows}


# ----------------------------------------------------------------------------------------------
# detection accuracy


def _xyxy(labels: np.ndarray, w: int, h: int) -> np.ndarray:
    """YOLO rows (cls, cx, cy, w, h normalised) -> (cls, x1, y1, x2, y2) pixels."""
    lab = np.asarray(labels, np.float64).reshape(-1, 5)
    c, cx, cy, bw, bh = lab.T
    return np.stack([c, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)


def detection_map(model: Path, data_yaml: Path, variants: dict[str, DehazeConfig | None], batch: int = 16,
                  limit: int = 0, add_haze_t: tuple[float, float] | None = None) -> dict[str, Any]:
    """mAP of an ONNX model on a YOLO val split, each image dehazed per variant then letterboxed as in
    the pipeline. Every image is its own scene: a fresh dehazer (gate and A) per image.

    With `add_haze_t` = (lo, hi), haze is added to every image first (vap_video.engines.haze.add_haze, far-row
    transmission uniform in lo..hi, airlight 0.75..0.95, depth gradient; seeded per image), so one
    clean set gives hazy sets of controlled thickness with unchanged labels."""
    from vap_video.engines.backends import load_backend
    from vap_video.engines.dataset import load_data_yaml, load_image, validate_dataset
    from vap_video.engines.evaluate import evaluate_detections
    from vap_video.pipeline.preprocess import BatchPreprocessor, unletterbox

    spec = load_data_yaml(data_yaml)
    rep = validate_dataset(spec, "val")
    samples = list(rep.usable)[: limit or None]  # (image path, YOLO label rows)
    be = load_backend(model)
    prep = BatchPreprocessor(be.info.input_hw, be.info.stride, rect=be.info.dynamic_hw)
    images = [load_image(p) for p, _ in samples]
    if add_haze_t is not None:
        from vap_video.engines.haze import add_haze

        hazed = []
        for i, im in enumerate(images):
            rng = np.random.default_rng([2026, i])
            hazed.append(add_haze(im, float(rng.uniform(*add_haze_t)), float(rng.uniform(0.75, 0.95)), True, rng))
        images = hazed
    gts = [_xyxy(lab, im.shape[1], im.shape[0]) for (_, lab), im in zip(samples, images)]
    paths = samples
    out: dict[str, Any] = {"model": str(model), "data": str(data_yaml), "images": len(paths),
                           "added_haze_t": None if add_haze_t is None else list(add_haze_t), "variants": {}}
    for name, cfg in variants.items():
        preds, on, ms = [], 0, []
        for s in range(0, len(images), batch):
            chunk = []
            for im in images[s:s + batch]:
                if cfg is None:
                    chunk.append(im)
                    continue
                d = Dehazer(cfg)
                chunk.append(d.process(im))
                on += int(d.last.active)
                ms.append(d.last.seconds * 1000)
            x, lbs = prep(chunk)
            y = be.infer(x)
            for k, lb in enumerate(lbs):
                rows = y[k][y[k][:, 4] > 0.001]
                boxes = unletterbox(rows[:, :4].astype(np.float32), lb)
                preds.append(np.concatenate([boxes, rows[:, 4:6]], axis=1))
        ev = evaluate_detections(preds, gts, len(spec.names), list(spec.names))
        out["variants"][name] = {"map50_95": round(ev.map50_95, 4), "map50": round(ev.map50, 4),
                                 "precision": round(ev.precision, 4), "recall": round(ev.recall, 4),
                                 "gate_on_fraction": None if cfg is None else round(on / len(images), 3),
                                 "stage_ms_median": None if cfg is None else round(statistics.median(ms), 2)}
        print(f"  {Path(model).name} {name:>10}: mAP50-95 {ev.map50_95:.4f} mAP50 {ev.map50:.4f}", flush=True)
    be.close()
    return out


MAP_VARIANTS: dict[str, DehazeConfig | None] = {
    "none": None,
    "dcp_gated": DehazeConfig(enabled=True),
    "dcp_always": DehazeConfig(enabled=True, gate=False),
    "dcp_gated_omega0.95": DehazeConfig(enabled=True, omega=0.95),
    "clahe_gated": DehazeConfig(enabled=True, mode="clahe"),
}


# ----------------------------------------------------------------------------------------------
# temporal stability


def flicker(frames: int = 200, size: tuple[int, int] = (640, 360), haze: float = 0.6,
            seeds: tuple[int, ...] = (4, 8), objects: int = 10) -> dict[str, Any]:
    """Frame-to-frame change of mean brightness (0..255 levels) on hazy synthetic videos.

    mean_abs_delta: mean |m[i+1] - m[i]| of the output's mean brightness m. excess: mean
    |delta_out - delta_in|, the part not already in the input (the synthetic scene's lighting drifts,
    and the recovery amplifies any input change by 1/t, so some excess is expected even with a
    constant A). Defaults were chosen on seed 4; seed 8 is a check on a video they were not tuned on.
    """
    from vap_video.engines.synth import SceneVideo

    w, h = size
    variants = {
        "smoothed_A_default": DehazeConfig(enabled=True, gate=False),
        "A_every_frame_no_smoothing": DehazeConfig(enabled=True, gate=False, airlight_every=1, airlight_alpha=1.0),
        "A_every_10_no_smoothing": DehazeConfig(enabled=True, gate=False, airlight_every=10, airlight_alpha=1.0),
    }
    out: dict[str, Any] = {"frames": frames, "size": f"{w}x{h}", "haze": haze, "objects": objects, "videos": {}}
    for seed in seeds:
        video = SceneVideo(seed, w, h, 25.0, objects, haze)
        src = [_frame(video, i) for i in range(frames)]
        m_in = np.array([f.mean() for f in src])
        d_in = np.diff(m_in)
        res: dict[str, Any] = {"input": {"mean_abs_delta": round(float(np.abs(d_in).mean()), 4),
                                         "max_abs_delta": round(float(np.abs(d_in).max()), 4)}}
        for name, cfg in variants.items():
            d = Dehazer(cfg)
            m_out, a_hist = [], []
            for f in src:
                m_out.append(float(d.process(f).mean()))
                a_hist.append(d.last.airlight)
            d_out = np.diff(np.asarray(m_out))
            ex = np.abs(d_out - d_in)
            a = np.asarray(a_hist)
            res[name] = {"mean_abs_delta": round(float(np.abs(d_out).mean()), 4),
                         "p95_abs_delta": round(float(np.percentile(np.abs(d_out), 95)), 4),
                         "max_abs_delta": round(float(np.abs(d_out).max()), 4),
                         "excess_mean": round(float(ex.mean()), 4),
                         "excess_p95": round(float(np.percentile(ex, 95)), 4),
                         "excess_max": round(float(ex.max()), 4),
                         "A_std_mean_over_channels": round(float(a.std(axis=0).mean()), 5),
                         "A_max_step": round(float(np.abs(np.diff(a, axis=0)).max()), 5)}
        out["videos"][f"seed{seed}"] = res
    return out


def _frame(video: Any, i: int) -> np.ndarray:
    f = video.frame(i)
    return f[0] if isinstance(f, tuple) else f


# ----------------------------------------------------------------------------------------------
# speed


def _speed_step(f: np.ndarray, prep: Callable[[np.ndarray], np.ndarray] | None, d: Dehazer | None) -> None:
    """One timed step of `speed`: the optional resize, then the optional dehaze."""
    g = prep(f) if prep is not None else f
    if d is not None:
        d.process(g)


def speed(n: int = 40, torch_path: bool = True) -> dict[str, Any]:
    from vap_video.engines.synth import SceneVideo

    out: dict[str, Any] = {}
    for label, (w, h) in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
        video = SceneVideo(5, w, h, 25.0, 8, 0.5)
        frames = [_frame(video, i) for i in range(8)]
        res: dict[str, Any] = {}
        fit = lambda f: fit_to(f, ENGINE_HW)
        fit640 = lambda f: fit_to(f, (640, 640))
        for name, cfg, prep in (
                ("dcp_on_full_res", DehazeConfig(enabled=True, gate=False), None),
                ("clahe_on_full_res", DehazeConfig(enabled=True, gate=False, mode="clahe"), None),
                ("gate_off_full_res", DehazeConfig(enabled=True, gate_on=1.0, gate_off=1.0), None),
                ("resize_to_engine_only", None, fit),
                ("runtime_dcp_on", DehazeConfig(enabled=True, gate=False), fit),
                ("runtime_clahe_on", DehazeConfig(enabled=True, gate=False, mode="clahe"), fit),
                ("runtime_gate_off", DehazeConfig(enabled=True, gate_on=1.0, gate_off=1.0), fit),
                ("resize_to_640_only", None, fit640),
                ("runtime_640_dcp_on", DehazeConfig(enabled=True, gate=False), fit640)):
            d = Dehazer(cfg) if cfg is not None else None
            for f in frames[:3]:
                _speed_step(f, prep, d)  # warm-up
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                _speed_step(frames[i % len(frames)], prep, d)
                times.append((time.perf_counter() - t0) * 1000)
            res[name] = {"median_ms": round(statistics.median(times), 2),
                         "p95_ms": round(float(np.percentile(times, 95)), 2)}
        try:
            if not torch_path:
                raise ImportError("skipped (--no-torch)")
            import torch

            from vap_video.pipeline.dehaze.torch_dehazer import TorchDehazer

            td = TorchDehazer(DehazeConfig(enabled=True, gate=False), "cpu")
            batch = torch.from_numpy(np.stack(frames[:1]))
            st = [td.new_state()]
            td.process(batch, st)
            times = []
            for _ in range(max(5, n // 4)):
                t0 = time.perf_counter()
                td.process(batch, st)
                times.append((time.perf_counter() - t0) * 1000)
            res["torch_cpu_dcp_on_batch1"] = {"median_ms": round(statistics.median(times), 2),
                                              "p95_ms": round(float(np.percentile(times, 95)), 2),
                                              "threads": torch.get_num_threads()}
        except ImportError as exc:
            res["torch_cpu_dcp_on_batch1"] = f"not measured: {exc}"
        out[label] = res
        print(f"  {label}: {res}", flush=True)
    return out


def pipeline_cost(frames: int = 300, size: tuple[int, int] = (1280, 720), model: Path | None = None,
                  repeats: int = 3) -> dict[str, Any]:
    """Frames/s of the whole pipeline (file source, every frame, shipped model) with the stage off and on.

    Variants run interleaved (off, on, gated, clahe, off, ...) `repeats` times and the median is
    reported, so a burst of load from elsewhere on a shared machine hits all of them alike.
    """
    from vap_video.engines.synth import write_video
    from vap_video.pipeline.runtime import Pipeline
    from vap_video.pipeline.settings import parse_settings

    model = model or parse_settings({}).model.path  # the shipped model by default
    w, h = size
    out: dict[str, Any] = {"frames": frames, "size": f"{w}x{h}", "model": Path(model).name, "repeats": repeats}
    variants = (("off", {"enabled": False}), ("dcp_on", {"enabled": True, "gate": False}),
                ("dcp_gated", {"enabled": True}), ("clahe_on", {"enabled": True, "gate": False, "mode": "clahe"}))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        clip = write_video(tmp / "fog.mp4", 7, frames, w, h, 25.0, 8, 0.6)
        for rep in range(repeats):
            for name, dh in variants:
                settings = parse_settings({"streams": [{"name": "fog", "url": str(clip), "dehaze": dh}],
                                           "model": {"path": str(model)}, "batch": {"max_batch": 4},
                                           "sinks": [{"path": str(tmp / f"{name}{rep}.jsonl"), "fsync": "never"}],
                                           "server": {"enabled": False}}, "bench")
                p = Pipeline(settings)
                t0 = time.perf_counter()
                p.start()
                ok = p.wait(900)
                dt = time.perf_counter() - t0
                p.stop()
                if not ok:
                    raise RuntimeError("pipeline run did not finish")
                reg = p.metrics.registry
                n = reg.get_sample_value("vap_frames_processed_total", {"stream": "fog"}) or 0
                dz_sum = reg.get_sample_value("vap_dehaze_seconds_sum", {"stream": "fog"})
                on = reg.get_sample_value("vap_dehaze_active", {"stream": "fog"})
                runs[name].append({"fps": n / dt, "frames": int(n),
                                   "dehaze_ms": None if dz_sum is None else 1000 * dz_sum / max(n, 1),
                                   "gate_on_at_end": on})
                print(f"  {name} rep {rep}: {runs[name][-1]}", flush=True)
    base = statistics.median(r["fps"] for r in runs["off"])
    for name, rs in runs.items():
        fps = statistics.median(r["fps"] for r in rs)
        dz = [r["dehaze_ms"] for r in rs if r["dehaze_ms"] is not None]
        out[name] = {"fps_median": round(fps, 2), "fps_runs": [round(r["fps"], 2) for r in rs],
                     "fps_ratio_to_off": round(fps / base, 3),
                     "dehaze_ms_per_frame_in_pipeline": round(statistics.median(dz), 2) if dz else None,
                     "gate_on_at_end": rs[-1]["gate_on_at_end"]}
    return out


def machine_info() -> dict[str, Any]:
    from vap_video.engines.hostinfo import machine

    info = machine()
    import cv2

    info["opencv"] = cv2.__version__
    info["opencv_threads"] = cv2.getNumThreads()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vap_video.pipeline.tools.dehaze_bench",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("quality", "map", "flicker", "speed", "pipeline"))
    ap.add_argument("--out", help="JSON result file (default benchmarks/dehaze-WHAT.json)")
    ap.add_argument("--data", help="map: YOLO data.yaml of the (hazy) validation set")
    ap.add_argument("--model", action="append", help="map/pipeline: ONNX model(s)")
    ap.add_argument("--limit", type=int, default=0, help="map: first N images only")
    ap.add_argument("--variants", help=f"map: comma-separated subset of {', '.join(MAP_VARIANTS)}")
    ap.add_argument("--add-haze", type=float, nargs=2, metavar=("T_LO", "T_HI"),
                    help="map: add haze of far-row transmission T_LO..T_HI to every image first")
    ap.add_argument("--no-torch", action="store_true", help="speed: skip the (slow on CPU) torch path")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.what == "quality":
        res: Any = quality()
    elif args.what == "map":
        if not args.data or not args.model:
            print("map needs --data and --model", file=sys.stderr)
            return 2
        names = args.variants.split(",") if args.variants else list(MAP_VARIANTS)
        unknown = [n for n in names if n not in MAP_VARIANTS]
        if unknown:
            print(f"unknown variant(s) {unknown}; choose from {list(MAP_VARIANTS)}", file=sys.stderr)
            return 2
        variants = {n: MAP_VARIANTS[n] for n in names}
        res = [detection_map(Path(m), Path(args.data), variants, limit=args.limit,
                             add_haze_t=tuple(args.add_haze) if args.add_haze else None) for m in args.model]
    elif args.what == "flicker":
        res = flicker()
    elif args.what == "speed":
        res = speed(torch_path=not args.no_torch)
    else:
        res = pipeline_cost(model=Path(args.model[0]) if args.model else None)
    doc = {"benchmark": args.what, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": round(time.time() - t0, 1), "machine": machine_info(), "result": res}
    out = Path(args.out or f"benchmarks/dehaze-{args.what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(res, indent=2)[:4000])
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
