"""ONNX Runtime backend: CPU by default, CUDA or TensorRT execution providers by config.

Providers are given in order of preference, each a name or a `{name: {option: value}}` mapping
(e.g. `{"TensorrtExecutionProvider": {"trt_fp16_enable": true, "trt_engine_cache_enable": true}}`),
passed to ONNX Runtime unchanged. IO binding keeps inputs and outputs in ONNX Runtime-owned buffers
on the provider's device; it pays on GPUs (no per-run output allocation and copy through the
default path), and is measured by `vap bench --engine-only` on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.backends.base import Backend
from vap_video.engines.contract import ModelContractError, resolve_info

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Graph input types a vap engine may have: float 0..1, or bytes it normalises itself (--uint8-input)
_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def provider_names(providers: Sequence[str | dict[str, Any]]) -> list[str]:
    return [p if isinstance(p, str) else next(iter(p)) for p in providers]


def _provider_options(providers: Sequence[str | dict[str, Any]], name: str) -> dict[str, Any]:
    for p in providers:
        if isinstance(p, dict) and name in p:
            return dict(p[name] or {})
    return {}


def _provider_args(providers: Sequence[str | dict[str, Any]]) -> list[str | tuple[str, dict[str, str]]]:
    out: list[str | tuple[str, dict[str, str]]] = []
    for p in providers:
        if isinstance(p, str):
            out.append(p)
        else:
            if len(p) != 1:
                raise ModelContractError(f"a provider entry with options has exactly one key (its name), got {p}")
            name, opts = next(iter(p.items()))
            out.append((name, {str(k): str(v).lower() if isinstance(v, bool) else str(v)
                               for k, v in (opts or {}).items()}))
    return out


class OrtBackend(Backend):
    """An ONNX model honouring the engine contract, run by ONNX Runtime.

    ONNX Runtime releases the GIL during `run`, so the pipeline overlaps the next batch's
    preprocessing with this batch's inference on another thread.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, providers: Sequence[str | dict[str, Any]] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0, inter_op_threads: int = 1, io_binding: bool = False,
                 class_names: list[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in provider_names(providers) if p not in available]
        if missing:
            raise ModelContractError(
                f"ONNX Runtime providers {missing} are not available here (available: {available}); "
                "install onnxruntime-gpu for CUDA/TensorRT or use CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        self.intra_op_threads = intra_op_threads   # 0: ONNX Runtime's own default
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=_provider_args(providers))
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise ModelContractError(f"{path}: ONNX Runtime cannot load this model: {exc}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelContractError(
                f"{path}: model has {len(inputs)} inputs ({[i.name for i in inputs]}); a vap engine has one, "
                "images [B, 3, H, W]")
        if inputs[0].type not in _INPUT_TYPES:
            raise ModelContractError(f"{path}: input type is {inputs[0].type}; the contract is float32 (0..1), "
                                     "or uint8 (0..255) for a model exported with --uint8-input")
        self._dtype = _INPUT_TYPES[inputs[0].type]
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.info = resolve_info(meta, list(inputs[0].shape), list(outputs[0].shape), str(path), class_names,
                                 probe=self._probe)
        if self._dtype == np.uint8:
            self.info = dataclasses.replace(self.info, input_dtype="uint8")
        self.providers = self.session.get_providers()
        wanted = provider_names(providers)[0]
        if self.providers[:1] != [wanted]:
            # ONNX Runtime falls back to the CPU with only a printed warning when a GPU provider
            # fails to load (driver, CUDA or cuDNN mismatch): running 50x slower unnoticed is worse
            raise ModelContractError(f"{path}: ONNX Runtime could not start {wanted} (running: {self.providers}); "
                                     "check the CUDA/cuDNN versions onnxruntime-gpu needs, or list "
                                     "CPUExecutionProvider first")
        if self.info.precision == "int8":
            _announce_int8(self.info.extra.get("quantization"), str(path))
        self.device = "cuda" if wanted in GPU_PROVIDERS else "cpu"
        self.device_id = int(_provider_options(providers, wanted).get("device_id", 0))
        self._binding = self.session.io_binding() if io_binding else None

    def _probe(self, batch: int, hw: tuple[int, int]) -> tuple[int, ...]:
        """Output shape of one blank batch: what symbolic output dims really are (at load only)."""
        blank = np.full((batch, 3, *hw), 114 if self._dtype == np.uint8 else 114 / 255, dtype=self._dtype)
        return tuple(self.session.run([self.output_name], {self.input_name: blank})[0].shape)

    def _run(self, images: np.ndarray) -> np.ndarray:
        if images.dtype != self._dtype:
            raise ValueError(f"this engine takes {np.dtype(self._dtype).name} images, got {images.dtype}")
        if self._binding is None:
            return self.session.run([self.output_name], {self.input_name: images})[0]
        import onnxruntime as ort

        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        x = np.ascontiguousarray(images)
        if self.device == "cpu":
            binding.bind_cpu_input(self.input_name, x)
        else:
            binding.bind_ortvalue_input(self.input_name,
                                        ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device_id))
        binding.bind_output(self.output_name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def _announce_int8(report: Any, source: str) -> None:
    """INT8 is never silent: say what it cost when it was made, or that nobody measured it."""
    import logging

    from vap_video.engines.int8_report import describe
    from vap_video.engines.metadata import parse_value

    log = logging.getLogger("vap.engine")
    report = parse_value(report) if report is not None else None
    try:
        log.warning("%s is an INT8 model: %s", source, describe(report))
    except (TypeError, KeyError):
        log.warning("%s is an INT8 model and carries no accuracy report: its mAP loss against fp32 is "
                    "unknown; make it with `vap quantize --data` to measure it", source)
