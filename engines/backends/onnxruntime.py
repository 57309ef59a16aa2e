"""ONNX Runtime backend: CPU by default, CUDA or TensorRT execution providers by config."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engines.backends.base import Backend
from engines.contract import ModelContractError, check_output, resolve_info


class OrtBackend(Backend):
    """An ONNX model honouring the engine contract, run by ONNX Runtime.

    ONNX Runtime releases the GIL during `run`, so the pipeline overlaps the next batch's
    preprocessing with this batch's inference on another thread.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0, inter_op_threads: int = 1,
                 class_names: list[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ModelContractError(
                f"ONNX Runtime providers {missing} are not available here (available: {available}); "
                "install onnxruntime-gpu for CUDA/TensorRT or use CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise ModelContractError(f"{path}: ONNX Runtime cannot load this model: {exc}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelContractError(
                f"{path}: model has {len(inputs)} inputs ({[i.name for i in inputs]}); a vap engine has one, "
                "images [B, 3, H, W]")
        if inputs[0].type != "tensor(float)":
            raise ModelContractError(f"{path}: input type is {inputs[0].type}; the contract is float32")
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.info = resolve_info(meta, list(inputs[0].shape), list(outputs[0].shape), str(path), class_names)
        self.providers = self.session.get_providers()

    def _run(self, images: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: images})[0]
        check_output(out, images.shape[0], self.info.source)
        return out.astype(np.float32, copy=False)
