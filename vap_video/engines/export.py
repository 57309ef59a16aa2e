"""``vap export``: checkpoint -> end-to-end ONNX engine with metadata.

The exported graph is the inference form of the detector: EMA weights, the one-to-many head
removed, RepConv branches re-parameterised, BatchNorm folded, and the NMS-free top-K inside the
graph. Input ``images`` float32 [B, 3, H, W] (dynamic B; optional dynamic H, W); output
``output0`` [B, K, 6] ``x1, y1, x2, y2, score, class_id``. No NMS op, no threshold.

Uses the TorchScript-based exporter (``dynamo=False``): it works offline and gives a plain graph.

Usage::

    vap export runs/train/exp/best.pt --out vap_video/engines/models/model.onnx [--imgsz 320] [--dynamic-hw]
        [--max-det 300] [--opset 17] [--bench 1,4,8]
    python -m vap_video.engines.export ...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vap_video.engines.metadata import PREPROCESSING, sha256_file, write_metadata


class ExportError(Exception):
    """Export cannot proceed; the message says why and what to do."""


def export_model(model, out: str | Path, imgsz: int | tuple[int, int], names: list[str],
                 dynamic_hw: bool = False, max_det: int = 300, opset: int = 17,
                 source_sha256: str = "", scale: str = "", uint8_input: bool = False) -> Path:
    """Export an in-memory :class:`vap_video.engines.detector.Detector` (fused and stripped here).

    With ``uint8_input`` the graph takes ``images`` as uint8 0..255 and divides by 255 inside
    (Cast + Mul, fused by ONNX Runtime): the pipeline then hands over the letterboxed bytes as
    they are, a quarter of the memory traffic of float32 and no normalisation pass on the CPU.

    With ``dynamic_hw`` the top-K size is fixed at export as min(max_det, anchors x classes) of the
    export size; an input so small that anchors x classes < K at run time (e.g. under 64 x 64 px
    for 4 classes and K = 300) is rejected by ONNX Runtime's TopK.
    """
    import torch

    from vap_video.engines.detector import count_params

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    if h % 32 or w % 32:
        raise ExportError(f"imgsz {h}x{w} must be a multiple of 32 (the model's largest stride)")
    model = model.cpu().float().drop_one_to_many()
    model.fuse()
    model.eval()
    model.max_det = max_det
    x = torch.zeros(1, 3, h, w)
    graph: Any = model
    if uint8_input:
        graph, x = _Uint8Input(model), x.to(torch.uint8)
    axes: dict[str, dict[int, str]] = {"images": {0: "batch"}, "output0": {0: "batch"}}
    if dynamic_hw:
        axes["images"].update({2: "height", 3: "width"})
    with torch.no_grad():
        torch.onnx.export(graph, (x,), str(out), input_names=["images"], output_names=["output0"],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    meta: dict[str, Any] = {
        "vap_format": "1",
        "task": "detect",
        "names": {str(i): n for i, n in enumerate(names)},
        "imgsz": [h, w],
        "stride": str(max(model.strides)),
        "end2end": True,
        "max_det": str(max_det),
        "precision": "fp32",
        "preprocessing": {**PREPROCESSING, "scale": "0..255"} if uint8_input else PREPROCESSING,
        "input_dtype": "uint8" if uint8_input else "float32",
        "dynamic_hw": bool(dynamic_hw),
        "source_sha256": source_sha256,
        "model": {"scale": scale or model.cfg.scale, "params": count_params(model)},
    }
    write_metadata(out, meta)
    import onnx

    onnx.checker.check_model(onnx.load(str(out)))
    return out


def _Uint8Input(model: Any) -> Any:
    """`model` behind a uint8 -> float 0..1 conversion (a factory: torch is imported lazily here)."""
    import torch

    class Uint8Input(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return self.model(x.float() * (1 / 255))

    return Uint8Input()


def export_onnx(checkpoint: Path, out: Path, imgsz: int | None = None, dynamic_hw: bool = False,
                max_det: int = 300, opset: int = 17, uint8_input: bool = False) -> Path:
    """Export a ``vap train`` checkpoint's EMA weights to ONNX (+ ``<out>.json`` sidecar)."""
    from vap_video.engines.train import ConfigFileError, load_checkpoint, model_from_checkpoint

    checkpoint = Path(checkpoint)
    try:
        ck = load_checkpoint(checkpoint)
    except ConfigFileError as exc:
        raise ExportError(str(exc)) from None
    model = model_from_checkpoint(ck, "ema")
    names = list(ck.get("names") or ck["model_cfg"].get("names") or [str(i) for i in range(model.cfg.nc)])
    size = int(imgsz or ck["model_cfg"]["imgsz"])
    return export_model(model, out, size, names, dynamic_hw=dynamic_hw, max_det=max_det, opset=opset,
                        source_sha256=sha256_file(checkpoint), scale=model.cfg.scale, uint8_input=uint8_input)


def bench_onnx(path: str | Path, batches: tuple[int, ...] = (1, 4, 8), imgsz: int | None = None, runs: int = 20,
               warmup: int = 3, threads: int | None = None) -> list[dict[str, float]]:
    """ONNX Runtime CPU latency per batch size: median and p90 ms per batch, images/s at the median.

    Medians, because these machines are shared and noisy; inputs are random (the graph has no
    data-dependent control flow, so content does not change the cost).
    """
    import time

    import numpy as np
    import onnxruntime as ort

    from vap_video.engines.metadata import read_onnx_metadata

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    h, w = (imgsz, imgsz) if imgsz else read_onnx_metadata(path)["imgsz"]
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = rng.random((b, 3, h, w), dtype=np.float32)
        for _ in range(warmup):
            sess.run(None, {"images": x})
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {"images": x})
            times.append((time.perf_counter() - t0) * 1000)
        med = float(np.median(times))
        rows.append({"batch": b, "median_ms": med, "p90_ms": float(np.percentile(times, 90)),
                     "images_per_s": 1000 * b / med})
    return rows


def cli(argv: list[str]) -> int:
    """``vap export CKPT --out model.onnx [--imgsz N] [--dynamic-hw] [--max-det K] [--opset N] [--uint8-input]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="vap export", description="Export a checkpoint to an end-to-end ONNX engine")
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="output .onnx path (a .json sidecar is written next to it)")
    ap.add_argument("--imgsz", type=int, default=None, help="input size (default: the training size)")
    ap.add_argument("--dynamic-hw", action="store_true", help="make input height/width dynamic")
    ap.add_argument("--max-det", type=int, default=300, help="K, rows per image in the output")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--uint8-input", action="store_true",
                    help="the graph takes uint8 0..255 and normalises inside (the pipeline skips its float pass)")
    ap.add_argument("--bench", default="", metavar="1,4,8",
                    help="after export, time ONNX Runtime CPU inference at these batch sizes")
    args = ap.parse_args(argv)
    if args.out.suffix != ".onnx":
        print(f"vap export: --out must end in .onnx, got {args.out}", file=sys.stderr)
        return 2
    try:
        path = export_onnx(args.checkpoint, args.out, args.imgsz, args.dynamic_hw, args.max_det, args.opset,
                           uint8_input=args.uint8_input)
    except ExportError as exc:
        print(f"vap export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB) + {path.with_suffix('.json')}")
    if args.bench:
        try:
            batches = tuple(int(b) for b in args.bench.split(","))
        except ValueError:
            print(f"vap export: --bench wants batch sizes like 1,4,8, got {args.bench!r}", file=sys.stderr)
            return 2
        for row in bench_onnx(path, batches):
            print(f"batch {row['batch']}: median {row['median_ms']:.1f} ms (p90 {row['p90_ms']:.1f}), "
                  f"{row['images_per_s']:.1f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
