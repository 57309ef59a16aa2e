"""TensorRT: build plans from ONNX models (`build`), cache them per model/GPU/version (`cache`), pick or
build the plan for a model (`resolve`), run them (`runtime.TrtBackend`).

Importing this package needs neither TensorRT nor a CUDA binding: they are imported when a plan is
built or loaded, so machines without a GPU can still import `engines`, check options and read
sidecars. What was verified where is in docs/tensorrt.md.
"""

from vap_video.engines.tensorrt.cache import BuildOptions, TensorRTUnavailable, TrtEnvironment, default_cache_dir
from vap_video.engines.tensorrt.resolve import resolve_engine

__all__ = ["BuildOptions", "TensorRTUnavailable", "TrtEnvironment", "default_cache_dir", "resolve_engine"]
