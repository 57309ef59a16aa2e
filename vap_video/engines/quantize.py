"""CPU INT8: static Q/DQ quantisation of an engine with calibration images, and its accuracy report.

``vap quantize MODEL.onnx --data data.yaml [--calib DIR_OR_YAML] [--out MODEL.int8.onnx]``

Produces a second model next to the fp32 one; it never replaces it. The mAP of both models on the
validation split and the speed of both on this CPU are measured and written into the INT8 model's
metadata (``quantization``), so the accuracy cost travels with the file and the runtime can state
it when it loads the model: INT8 is offered only with its loss reported, never silently.

Only convolutions are quantised. The box decode, sigmoid and top-K at the end of the graph stay in
float: box coordinates span hundreds of pixels and 8 bits would round them to whole-pixel steps at
best, while those ops cost almost nothing next to the convolutions.

The same function writes symmetric Q/DQ models for TensorRT 11 (``target="tensorrt"``), which only
builds strongly typed networks and so takes INT8 as explicit Q/DQ nodes rather than a calibrator.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vap_video.engines.calibration import calibration_batches
from vap_video.engines.contract import ModelContractError
from vap_video.engines.hostinfo import cpu_name
from vap_video.engines.int8_report import describe
from vap_video.engines.metadata import read_onnx_metadata, write_metadata


def cpu_has_vnni() -> bool:
    """x86 CPUs with VNNI accumulate u8 x s8 products without saturating; older ones need 7-bit weights."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def input_spec(model: Path) -> tuple[str, tuple[int, int], int | None]:
    """(input name, (h, w), fixed batch or None) from the graph, with imgsz metadata for dynamic H/W."""
    import onnx

    graph_input = onnx.load(str(model), load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    hw = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else \
        tuple(read_onnx_metadata(model).get("imgsz") or (0, 0))
    if len(hw) != 2 or not all(hw):
        raise ModelContractError(f"{model}: cannot tell the input size (dynamic H/W and no imgsz metadata)")
    return graph_input.name, (int(hw[0]), int(hw[1])), (dims[0] or None) if dims else None


def _fit_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Pad a short last batch by repeating its images (repeats do not move the calibrated ranges)."""
    if len(batch) >= size:
        return batch[:size]
    reps = -(-size // len(batch))
    return np.concatenate([batch] * reps)[:size]


def quantize_qdq(model: str | Path, out: str | Path, calibration: str | Path, limit: int = 256,
                 target: Literal["cpu", "tensorrt"] = "cpu", per_channel: bool = True) -> Path:
    """Write a Q/DQ INT8 copy of `model` to `out`, calibrated on up to `limit` images.

    `target="cpu"`: u8 activations, s8 weights (ONNX Runtime's fast CPU kernels), 7-bit weights on
    CPUs without VNNI. `target="tensorrt"`: symmetric s8 for both, as TensorRT requires.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, out = Path(model), Path(out)
    name, hw, fixed_batch = input_spec(model)

    class Reader(CalibrationDataReader):
        """Feeds batches the graph accepts: a fixed-batch graph gets exactly its batch size."""

        def __init__(self) -> None:
            size = fixed_batch or 8
            batches = calibration_batches(calibration, hw, batch_size=size, limit=limit)
            self._feeds = ({name: _fit_batch(b, size) if fixed_batch else b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    symmetric = target == "tensorrt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prep.onnx"
        quant_pre_process(str(model), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
            per_channel=per_channel, reduce_range=(target == "cpu" and platform.machine() in ("x86_64", "AMD64")
                                                   and not cpu_has_vnni()),
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    return out


def _median_ms(paths: dict[str, Path], hw: tuple[int, int], batch: int, runs: int,
               threads: int) -> dict[str, float]:
    """Median latency of each model, the calls alternating so both see the same machine load."""
    from vap_video.engines.backends.onnxruntime import OrtBackend

    backends = {key: OrtBackend(path, intra_op_threads=threads) for key, path in paths.items()}
    x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
    for backend in backends.values():
        for _ in range(3):
            backend.infer(x)
    times: dict[str, list[float]] = {key: [] for key in backends}
    order = list(backends.items())
    for _ in range(runs):
        order = order[::-1]                 # neither model always runs right after the other
        for key, backend in order:
            t0 = time.perf_counter()
            backend.infer(x)
            times[key].append(1000 * (time.perf_counter() - t0))
    return {key: float(np.median(t)) for key, t in times.items()}


def accuracy_report(fp32: Path, int8: Path, data: str | Path, limit: int = 0, batch: int = 8,
                    threads: int = 0) -> dict[str, Any]:
    """mAP of both models on the validation split and their median CPU latency at `batch`."""
    from vap_video.engines.backends.onnxruntime import OrtBackend
    from vap_video.engines.evaluate_engine import evaluate_backend, val_samples

    samples, names = val_samples(data, limit=limit)
    evals = {}
    for key, path in (("fp32", fp32), ("int8", int8)):
        evals[key] = evaluate_backend(OrtBackend(path, intra_op_threads=threads), samples, names, batch=batch)
    hw = input_spec(fp32)[1]
    speed = _median_ms({"fp32": fp32, "int8": int8}, hw, batch, 20, threads)
    return {
        "data": str(data), "images": evals["fp32"].images, "batch": batch,
        "map50_95": {k: round(v.result.map50_95, 4) for k, v in evals.items()},
        "map50": {k: round(v.result.map50, 4) for k, v in evals.items()},
        "map50_95_change": round(evals["int8"].result.map50_95 - evals["fp32"].result.map50_95, 4),
        "median_ms": {k: round(v, 3) for k, v in speed.items()},
        "speedup": round(speed["fp32"] / speed["int8"], 3),
        "cpu": cpu_name(), "vnni": cpu_has_vnni(),
    }


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vap quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="fp32 ONNX engine (vap export)")
    parser.add_argument("--data", type=Path, required=True,
                        help="data.yaml whose val split measures the accuracy change (required: INT8 is never silent)")
    parser.add_argument("--calib", type=Path, default=None, help="folder of images or data.yaml (default: --data)")
    parser.add_argument("--out", type=Path, default=None, help="default: MODEL.int8.onnx")
    parser.add_argument("--limit", type=int, default=256, help="calibration images")
    parser.add_argument("--val-limit", type=int, default=0, help="validation images (0 = all)")
    parser.add_argument("--target", choices=["cpu", "tensorrt"], default="cpu")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per tensor (faster, less accurate)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: {args.model}: no such model file", file=sys.stderr)
        return 3
    out = args.out or args.model.with_suffix(".int8.onnx")
    # Built under a temporary name and renamed only once it says INT8 and carries its report, so an
    # interrupted run never leaves an INT8 model that looks like fp32.
    tmp = out.with_name(f".{out.stem}.partial.onnx")
    try:
        print(f"calibrating on {args.calib or args.data} (up to {args.limit} images) ...", flush=True)
        quantize_qdq(args.model, tmp, args.calib or args.data, args.limit, args.target, not args.per_tensor)
        print(f"measuring mAP and speed of both models on {args.data} ...", flush=True)
        report = accuracy_report(args.model, tmp, args.data, limit=args.val_limit)
        meta = read_onnx_metadata(tmp)
        meta.update(precision="int8", quantization={**report, "format": "QDQ", "target": args.target,
                                                    "per_channel": not args.per_tensor, "fp32_model": args.model.name})
        write_metadata(tmp, meta, sidecar=False)
        tmp.replace(out)
        write_metadata(out, meta)          # the sidecar, now that the model is in place
    except ModelContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        tmp.unlink(missing_ok=True)
    print(describe(report))
    print(json.dumps(report, indent=2))
    print(f"wrote {out} (+ {out.with_suffix('.json').name}); the fp32 model is unchanged")
    return 0
