"""What the builder needs to know about an ONNX model before TensorRT is imported: its IO, metadata
and contract, and the optimisation profiles (batch ranges times contexts, the H/W range) that fit it.

Plain Python and the `onnx` package, so usage and model errors read the same on machines without
TensorRT.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from vap_video.engines.contract import EngineInfo, ModelContractError, resolve_info
from vap_video.engines.metadata import decode_metadata
from vap_video.engines.tensorrt.cache import (
    DEFAULT_BATCH_PROFILES,
    BuildOptions,
)


Shape4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class OnnxSummary:
    """The ONNX model as the builder needs it: IO names and shapes, metadata, contract info."""

    path: Path
    input_name: str
    output_name: str
    input_shape: list[int | None]
    output_shape: list[int | None]
    meta: dict[str, Any]
    info: EngineInfo


def inspect_onnx(path: str | Path, class_names: list[str] | None = None) -> OnnxSummary:
    """Read IO and metadata with `onnx` (no TensorRT) and check the engine contract."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelContractError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise ModelContractError(f"{path} is not a readable ONNX model ({exc})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or not model.graph.output:
        raise ModelContractError(f"{path}: has inputs {[i.name for i in inputs]}; a vap engine has exactly one, "
                                 "images [B, 3, H, W]")

    def dims(value_info: Any) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in value_info.type.tensor_type.shape.dim]

    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelContractError(f"{path}: input {inputs[0].name} is not float32; the engine contract takes float32")
    raw = {p.key: p.value for p in model.metadata_props}
    info = resolve_info(raw, dims(inputs[0]), dims(model.graph.output[0]), str(path), class_names)
    return OnnxSummary(path, inputs[0].name, model.graph.output[0].name, dims(inputs[0]),
                       dims(model.graph.output[0]), decode_metadata(raw), info)


def fit_options(summary: OnnxSummary, options: BuildOptions) -> BuildOptions:
    """`options` adapted to the model: the default batch profiles become the model's own batch size
    when its graph has a fixed batch (Ultralytics exports batch 1 by default), so such a model
    builds without flags. Profiles given explicitly are left alone (profile_shapes checks them)."""
    b_fixed = summary.input_shape[0]
    if b_fixed is not None and options.batch_profiles == DEFAULT_BATCH_PROFILES:
        return dataclasses.replace(options, batch_profiles=((b_fixed,) * 3,))
    return options


def profile_shapes(summary: OnnxSummary, options: BuildOptions) -> list[tuple[Shape4, Shape4, Shape4]]:
    """The (min, opt, max) input shapes of every optimisation profile, in engine order.

    Profiles repeat `options.contexts` times: copy c of batch range i has index
    c * len(batch_profiles) + i, and execution context c owns copy c (see runtime.py).
    Raises ValueError when the options contradict the model (fixed batch or size); the message
    names both the config key (`model.tensorrt.*`, for `vap run`) and the `vap build-engine` flag.
    """
    b_fixed = summary.input_shape[0]
    for b in options.batch_profiles:
        if b_fixed is not None and tuple(b) != (b_fixed,) * 3:
            raise ValueError(
                f"{summary.path.name} has a fixed batch size of {b_fixed}, but batch profile "
                f"{','.join(map(str, b))} was asked for: set model.tensorrt.batch_profiles: "
                f"[[{b_fixed}, {b_fixed}, {b_fixed}]] (or leave it at its default) / "
                f"vap build-engine --batch {b_fixed}, "
                "or export the model with a dynamic batch (vap export does by default)")
    h_fixed, w_fixed = summary.input_shape[2], summary.input_shape[3]
    if h_fixed is not None and w_fixed is not None:
        fixed = (h_fixed, w_fixed)
        if options.hw_profile and any(tuple(hw) != fixed for hw in options.hw_profile):
            raise ValueError(f"{summary.path.name} has a fixed input size {h_fixed}x{w_fixed}: remove "
                             "model.tensorrt.hw_profile / drop --hw, or export with --dynamic-hw")
        hw = (fixed, fixed, fixed)
    elif h_fixed is not None or w_fixed is not None:
        raise ValueError(f"{summary.path.name}: input shape {summary.input_shape} has only one of H/W dynamic; "
                         "vap engines have both fixed or both dynamic")
    else:
        hw = options.hw_profile or (summary.info.input_hw,) * 3
        stride = summary.info.stride
        bad = [f"{h}x{w}" for h, w in hw if h % stride or w % stride]
        if bad:
            raise ValueError(f"input sizes {', '.join(bad)} (model.tensorrt.hw_profile / --hw) are not multiples "
                             f"of the model stride {stride}")
    out = []
    for _ in range(options.contexts):
        for lo, opt, hi in options.batch_profiles:
            out.append(((lo, 3, *hw[0]), (opt, 3, *hw[1]), (hi, 3, *hw[2])))
    return out


def checked_options(onnx_path: str | Path, options: BuildOptions,
                    class_names: list[str] | None = None) -> BuildOptions:
    """Validate `options` against the ONNX model before anything slow happens, adapted to it
    (`fit_options`). ModelContractError: the model is unusable; ValueError: the options are wrong."""
    options.validate()
    summary = inspect_onnx(onnx_path, class_names)
    options = fit_options(summary, options)
    profile_shapes(summary, options)
    return options
