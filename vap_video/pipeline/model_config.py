"""The `model:` section of the deployment YAML: which engine, which backend, and its thresholds.

Backend options live in one sub-section per backend (`onnxruntime:`, `torch:`, `tensorrt:`), so a
setting is always read by the backend it names and none is silently ignored by another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from vap_video.pipeline.config import Strict

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "engines" / "models" / "vap-synth-n.onnx"


Provider = str | dict[str, dict[str, Any]]   # a name, or {name: {option: value}}


def _cpu_only() -> list[Provider]:
    return ["CPUExecutionProvider"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def engine_threads() -> int:
    """Intra-op threads to start with: every core this process may use but one, which is left to
    the decoders. On 2 cores the shipped model's engine with 2 threads fights decoding for both and
    the pipeline got slower (the batch x threads grid in benchmarks/pipeline.md); a larger model
    gains from the last core, which the pipeline tries once running (engine_tuner)."""
    return max(1, usable_cores() - 1)


class OnnxRuntimeOptions(Strict):
    providers: list[Provider] = Field(
        default_factory=_cpu_only,
        description="Execution providers in order of preference: names, or {name: {option: value}} "
                    "(e.g. TensorrtExecutionProvider with trt_fp16_enable)")
    intra_op_threads: int = Field(0, ge=0, description="Threads per inference. 0 = chosen by the pipeline: it starts "
                                  "with one per core but one (at least 1; the other core decodes) and, once the "
                                  "engine is the limit, tries one per core for a few seconds and keeps the faster "
                                  "(logged; vap_engine_threads). Other values are used as given")
    inter_op_threads: int = Field(1, ge=0, description="Threads across independent graph branches")
    io_binding: bool = Field(False, description="Bind inputs/outputs to the provider's device (pays on GPUs)")


class TorchOptions(Strict):
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    fp16: bool = Field(False, description="Half precision (CUDA only)")
    channels_last: bool | None = Field(None, description="Channels-last memory format; default: on for CUDA "
                                       "(tensor cores), off on CPU (measured slower there for small models)")
    compile: bool = Field(False, description="torch.compile the model (slow first call per input shape)")
    cuda_graphs: list[int] = Field(default_factory=list,
                                   description="Batch sizes to capture as CUDA graphs (batches pad up to one)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not (v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {v!r}")
        return v


class TensorrtOptions(Strict):
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="Precision of engines built from .onnx")
    build_missing: bool = Field(False, description="Build a missing or stale engine at start (takes minutes, "
                                "logged) instead of refusing with the vap build-engine command to run")
    cache_dir: Path | None = Field(None, description="Engine cache (default $VAP_ENGINE_CACHE, else "
                                   "~/.cache/vap/engines); keyed by model sha256, TensorRT version, GPU, precision, "
                                   "profiles")
    batch_profiles: list[list[int]] = Field(default_factory=lambda: [[1, 8, 16]],
                                            description="Optimisation profiles as [min, opt, max] batch sizes")
    hw_profile: list[list[int]] | None = Field(None, description="For dynamic-H/W models: [[min_h, min_w], "
                                               "[opt_h, opt_w], [max_h, max_w]]")
    contexts: int = Field(2, ge=1, le=8, description="Execution contexts (batches in flight at once)")
    workspace_gib: float = Field(4.0, gt=0, description="Builder workspace limit")
    calibration: str | None = Field(None, description="INT8: folder of images or data.yaml to calibrate on")
    calib_limit: int = Field(256, ge=1, description="INT8: calibration images")
    device: int = Field(0, ge=0, description="CUDA device index")
    cuda: Literal["auto", "pycuda", "cuda-python"] = Field("auto", description="CUDA binding for buffers and streams")


class ModelConfig(Strict):
    path: Path = Field(SHIPPED_MODEL, description="Engine file: .onnx (ONNX Runtime, or TensorRT via the engine "
                       "cache), .engine/.plan (TensorRT), .pt (torch); default: the shipped demo model")
    backend: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field(
        "auto", description="Inference backend; 'auto' picks by file suffix (.onnx -> ONNX Runtime, "
                            ".engine -> TensorRT, .pt -> torch)")
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions,
                                            description="ONNX Runtime backend options")
    torch: TorchOptions = Field(default_factory=TorchOptions, description="PyTorch backend options")
    tensorrt: TensorrtOptions = Field(default_factory=TensorrtOptions, description="TensorRT backend options")
    class_names: list[str] | None = Field(None, description="Only for models without names in their metadata")
    conf: float = Field(0.25, ge=0, le=1, description="Score threshold for every class")
    class_conf: dict[str, float] = Field(default_factory=dict, description="Per-class score thresholds")
    classes: list[str] | None = Field(None, description="Keep only these classes (None keeps all)")
    rect: bool = Field(True, description="Minimal padding when the engine accepts dynamic height/width")
    gpu_preprocess: bool = Field(False, description="Letterbox and normalise on the GPU (needs torch with CUDA and "
                                 "the tensorrt or torch backend), so only uint8 frames cross PCIe")
    nms_iou: float = Field(0.7, gt=0, le=1, description="Legacy one-to-many models only (YOLOv8/YOLO11 "
                           "style outputs): IoU of the NumPy NMS fallback")

    def backend_options(self, kind: str) -> dict[str, Any]:
        """Constructor options for the backend `kind`, plus what every backend takes."""
        common: dict[str, Any] = {"class_names": self.class_names, "nms_iou": self.nms_iou,
                                  # candidates below every threshold are dropped later anyway: skip them in NMS
                                  "nms_conf": min([self.conf, *self.class_conf.values()])}
        if kind == "onnxruntime":
            opts = self.onnxruntime.model_dump()
            if not opts["intra_op_threads"]:
                opts["intra_op_threads"] = engine_threads()
            return {**common, **opts}
        if kind == "torch":
            return {**common, **self.torch.model_dump()}
        if kind == "tensorrt":
            import logging

            log = logging.getLogger("vap.engine")
            return {**common, **self.tensorrt.model_dump(), "log": log.info}
        return common
