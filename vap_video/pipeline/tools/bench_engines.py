"""`vap bench --engine-only`: throughput and latency per backend, precision and batch size.

Every variant that can run on this machine is measured in one run (so ratios compare like with
like): ONNX Runtime fp32 (plain and with IO binding), ONNX Runtime INT8 (the `vap quantize` model
next to the fp32 one, if present), PyTorch on CPU, and where a CUDA GPU is present PyTorch fp32 /
fp16 / fp16 with CUDA graphs, ONNX Runtime's CUDA provider and TensorRT. Variants that cannot run
here are listed with the reason, never silently dropped. Inputs are random (the graphs have no
data-dependent control flow before top-K) at the engine's own input size. Variants are measured
interleaved, round by round and in a rotating order, so a noisy neighbour (or the previous
variant's spinning threads) slows them all alike.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.hostinfo import machine


@dataclass
class Variant:
    name: str
    path: Path
    kind: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)


def _cuda() -> bool:
    try:
        import torch
    except ModuleNotFoundError:
        return False
    return torch.cuda.is_available()


def variants(model: Path, checkpoint: Path | None, int8: Path | None,
             batches: list[int] = (1, 8, 32)) -> tuple[list[Variant], list[dict[str, str]]]:  # type: ignore[assignment]
    """What to measure here, and what not (with why)."""
    import onnxruntime as ort

    runs = [Variant("onnxruntime-cpu", model, "onnxruntime", "fp32"),
            Variant("onnxruntime-cpu-iobinding", model, "onnxruntime", "fp32", {"io_binding": True})]
    skipped: list[dict[str, str]] = []
    if int8 and int8.is_file():
        runs.append(Variant("onnxruntime-cpu-int8", int8, "onnxruntime", "int8"))
    else:
        skipped.append({"variant": "onnxruntime-cpu-int8",
                        "why": f"no INT8 model at {int8} (make one with vap quantize)"})
    cuda = _cuda()
    if checkpoint and checkpoint.is_file():
        if importlib.util.find_spec("torch") is not None:
            runs.append(Variant("torch-cpu", checkpoint, "torch", "fp32", {"device": "cpu"}))
            if cuda:
                runs += [Variant("torch-cuda", checkpoint, "torch", "fp32", {"device": "cuda"}),
                         Variant("torch-cuda-fp16", checkpoint, "torch", "fp16", {"device": "cuda", "fp16": True}),
                         Variant("torch-cuda-fp16-graphs", checkpoint, "torch", "fp16",
                                 {"device": "cuda", "fp16": True, "cuda_graphs": sorted(set(batches))})]
        else:
            skipped.append({"variant": "torch", "why": "PyTorch not installed"})
    else:
        skipped.append({"variant": "torch", "why": f"no training checkpoint at {checkpoint}"})
    if not cuda:
        skipped.append({"variant": "torch-cuda*", "why": "no CUDA GPU visible to PyTorch"})
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runs.append(Variant("onnxruntime-cuda", model, "onnxruntime", "fp32",
                            {"providers": ["CUDAExecutionProvider"], "io_binding": True}))
    else:
        skipped.append({"variant": "onnxruntime-cuda", "why": "onnxruntime-gpu not installed"})
    if importlib.util.find_spec("tensorrt") is not None:
        runs.append(Variant("tensorrt-fp16", model, "tensorrt", "fp16",   # profiles cover every measured batch
                            {"precision": "fp16", "build_missing": True,
                             "batch_profiles": [[min(batches), min(max(8, min(batches)), max(batches)),
                                                 max(batches)]]}))
    else:
        skipped.append({"variant": "tensorrt", "why": "TensorRT not installed"})
    return runs, skipped


def measure_interleaved(backends: dict[str, Any], batch: int, hw: tuple[int, int],
                        seconds: float) -> dict[str, dict[str, float]]:
    """Median latency of every backend at `batch`, measured in rounds that run each backend once.

    On a shared, noisy machine a variant measured alone can land in a quiet or a busy minute;
    interleaving puts every variant in the same minutes, so their ratios hold even when the
    absolute numbers drift.
    """
    x = np.random.default_rng(batch).random((batch, 3, *hw), dtype=np.float32)
    for backend in backends.values():
        for _ in range(3):
            backend.infer(x)
    times: dict[str, list[float]] = {name: [] for name in backends}
    order = list(backends.items())
    t_end = time.perf_counter() + seconds * len(backends)
    while time.perf_counter() < t_end or min(len(t) for t in times.values()) < 5:
        # rotate the order every round: a variant that runs right after another one pays for its
        # leftovers (torch's OpenMP threads keep spinning for a while after a call), so no variant
        # may always follow the same one
        order = order[1:] + order[:1]
        for name, backend in order:
            t0 = time.perf_counter()
            backend.infer(x)
            times[name].append(1000 * (time.perf_counter() - t0))
    out = {}
    for name, t in times.items():
        med = statistics.median(t)
        out[name] = {"batch": batch, "median_ms": round(med, 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
                     "images_per_s": round(1000 * batch / med, 1), "runs": len(t)}
    return out


def run_engine_bench(model: Path, out_dir: Path, batches: list[int], seconds: float,
                     checkpoint: Path | None = None, int8: Path | None = None) -> dict[str, Any]:
    from vap_video.engines.backends import load_backend

    checkpoint = checkpoint or model.with_suffix(".pt")
    int8 = int8 or model.with_suffix(".int8.onnx")
    runs, skipped = variants(model, checkpoint, int8, batches)
    result: dict[str, Any] = {"machine": machine(), "model": model.name, "batches": batches, "results": [],
                              "skipped": skipped}
    print(f"engine bench: {model.name} on {result['machine']['cpu']} x{result['machine']['cores']}", file=sys.stderr)
    loaded: dict[str, tuple[Variant, Any]] = {}
    for v in runs:
        try:
            loaded[v.name] = (v, load_backend(v.path, v.kind, **v.options))
        except Exception as exc:
            skipped.append({"variant": v.name, "why": f"{type(exc).__name__}: {exc}"})
    if not loaded:  # nothing to measure: say why each variant could not load (not a min() of nothing)
        from vap_video.engines.contract import ModelContractError

        reasons = "; ".join(f"{s['variant']}: {s['why']}" for s in skipped if s["variant"] in {v.name for v in runs})
        raise ModelContractError(f"{model}: no variant of this model could be loaded, nothing to measure ({reasons})")
    sizes = {be.info.input_hw for _, be in loaded.values()}
    if len(sizes) > 1:
        raise ValueError(f"the variants have different input sizes {sizes}; compare models of one size")
    hw = sizes.pop() if sizes else (0, 0)
    for b in batches:
        rows = measure_interleaved({name: be for name, (_, be) in loaded.items()}, b, hw, seconds)
        for name, (v, _) in loaded.items():
            row = {"variant": name, "backend": v.kind, "precision": v.precision, "input_hw": list(hw), **rows[name]}
            result["results"].append(row)
            print(f"  {name:<28} batch {b:>3}: {row['median_ms']:>9.2f} ms  {row['images_per_s']:>8.1f} img/s",
                  file=sys.stderr)
    for _, be in loaded.values():
        be.close()
    base = {r["batch"]: r["images_per_s"] for r in result["results"] if r["variant"] == "onnxruntime-cpu"}
    for r in result["results"]:
        if r["batch"] in base:
            r["speedup_vs_onnxruntime_cpu"] = round(r["images_per_s"] / base[r["batch"]], 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"engines-{model.stem}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table (for benchmarks/engines.md)."""
    lines = ["| variant | precision | batch | median ms | p90 ms | images/s | vs ORT CPU |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['variant']} | {r['precision']} | {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['images_per_s']:.1f} | {r.get('speedup_vs_onnxruntime_cpu', float('nan')):.2f}x |")
    return "\n".join(lines) + "\n"
