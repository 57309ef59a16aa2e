"""PyTorch backend: a `vap train` checkpoint run directly, on CPU or CUDA.

Used where TensorRT is absent and for parity checks (the ONNX and TensorRT engines must agree with
it). It runs the same inference graph the exporter writes: EMA weights, one-to-many head dropped,
RepConv and BatchNorm folded, top-K inside the model, so its output is the engine contract.

Speed options, each only where it pays:
- fp16 on CUDA (halves memory traffic; CPU fp16 convolutions are slower than fp32, so refused);
- channels-last memory format (faster convolutions on tensor cores; on by default on CUDA only,
  because on CPU it measured 2-5x slower for the shipped model's narrow layers);
- `torch.compile` (kernel fusion; the first call per input shape compiles, which takes a while);
- CUDA graphs per fixed batch size: one captured graph replayed per batch removes the per-kernel
  launch cost that dominates small models at small batches. Batches are padded up to the nearest
  captured size, like a fixed-batch engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.backends.base import Backend
from vap_video.engines.contract import EngineInfo, ModelContractError

MAX_GRAPHS = 8   # captured (batch, H, W) shapes; further shapes run eagerly


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: Path | None = None, device: str = "cpu", fp16: bool = False,
                 channels_last: bool | None = None, compile: bool = False, cuda_graphs: Sequence[int] = (),
                 class_names: list[str] | None = None, model: Any = None, imgsz: int | None = None) -> None:
        """Load `path` (a checkpoint), or wrap an in-memory detector `model` (tests, notebooks)."""
        try:
            import torch
        except ModuleNotFoundError:
            raise ModelContractError("the torch backend needs PyTorch: pip install torch 'vap-video[train]'") from None
        self.torch = torch
        if model is None:
            model, names, imgsz = self._load(Path(path) if path else None)
        else:
            names = list(class_names or getattr(model.cfg, "names", None) or [str(i) for i in range(model.cfg.nc)])
            imgsz = imgsz or model.cfg.imgsz
        if class_names:
            names = list(class_names)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelContractError("model.device is cuda but PyTorch sees no CUDA GPU here; use device: cpu")
        if fp16 and self.device.type != "cuda":
            raise ModelContractError("fp16 needs a CUDA device (CPU half-precision convolutions are slower "
                                     "than fp32); set fp16: false or device: cuda")
        if cuda_graphs and self.device.type != "cuda":
            raise ModelContractError("CUDA graphs need a CUDA device; remove cuda_graphs or use device: cuda")
        if cuda_graphs and compile:
            raise ModelContractError("choose one of compile and cuda_graphs: captured graphs replay the eager model, "
                                     "so compile would only apply to batches no graph covers")
        if getattr(model, "o2m", None) is not None:
            model.drop_one_to_many()
        model.fuse()
        model.eval()
        if channels_last is None:   # tensor cores want NHWC; on CPU it measured slower for small models
            channels_last = self.device.type == "cuda"
        self.dtype = torch.float16 if fp16 else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        self._forward = torch.compile(self.model) if compile else self.model
        self._graphs: dict[tuple[int, int, int], tuple[Any, Any, Any]] = {}  # (batch, H, W) -> captured
        self._graph_sizes = sorted(int(b) for b in cuda_graphs)
        self.info = EngineInfo(
            names=names, input_hw=(int(imgsz), int(imgsz)), stride=int(max(model.strides)),
            max_det=int(model.max_det), dynamic_batch=True, max_batch=None, dynamic_hw=True,
            precision="fp16" if fp16 else "fp32", source=str(path or "in-memory model"),
            extra={"device": str(self.device), "compile": compile, "cuda_graphs": self._graph_sizes})

    @staticmethod
    def _load(path: Path | None) -> tuple[Any, list[str], int]:
        if path is None or not path.is_file():
            raise ModelContractError(f"torch backend: checkpoint {path} not found")
        if path.suffix.lower() != ".pt":
            raise ModelContractError(f"{path}: the torch backend runs `vap train` checkpoints (.pt); use "
                                     "backend onnxruntime for .onnx or tensorrt for .engine")
        from vap_video.engines.train import ConfigFileError, load_checkpoint, model_from_checkpoint

        try:
            ck = load_checkpoint(path)
            model = model_from_checkpoint(ck, "ema")
        except (ConfigFileError, RuntimeError, KeyError) as exc:
            raise ModelContractError(f"{path}: cannot load as a vap checkpoint: {exc}") from None
        names = list(ck.get("names") or ck["model_cfg"].get("names") or [str(i) for i in range(model.cfg.nc)])
        return model, names, int(ck["model_cfg"].get("imgsz") or model.cfg.imgsz)

    def _to_device(self, images: Any) -> Any:
        if isinstance(images, self.torch.Tensor):   # already preprocessed on the GPU (model.gpu_preprocess)
            return images.to(self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format)
        x = self.torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.to(dtype=self.dtype).contiguous(memory_format=self.memory_format)

    def _graph_for(self, batch: int, hw: tuple[int, int]) -> tuple[Any, Any, Any] | None:
        """Capture (once) and return (graph, static input, static output) for the smallest size >= batch."""
        size = next((s for s in self._graph_sizes if s >= batch), None)
        if size is None:
            return None
        key = (size, *hw)
        if key not in self._graphs and len(self._graphs) >= MAX_GRAPHS:
            return None     # rect batches vary H/W: each shape needs its own graph and memory pool; cap them
        if key not in self._graphs:
            torch = self.torch
            static_in = torch.zeros((size, 3, *hw), device=self.device, dtype=self.dtype).contiguous(
                memory_format=self.memory_format)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):  # warm-up outside the graph (cuDNN autotuning, lazy allocations)
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                static_out = self.model(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def _run(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        n, hw = images.shape[0], (images.shape[2], images.shape[3])
        with torch.inference_mode():
            captured = self._graph_for(n, hw) if self._graph_sizes else None
            if captured is not None:
                graph, static_in, static_out = captured
                static_in[:n].copy_(self._to_device(images))
                if n < static_in.shape[0]:
                    static_in[n:].zero_()
                graph.replay()
                out = static_out[:n]
            else:
                out = self._forward(self._to_device(images))
            return out.float().cpu().numpy()  # Backend.infer_raw checks it against the layout

    def close(self) -> None:
        self._graphs.clear()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
