"""The engine contract, checked in one place for every backend.

An engine takes `images: float32 [B, 3, H, W]` (RGB, 0..1, letterboxed with pad 114) and returns
`[B, K, 6]` rows `x1, y1, x2, y2, score, class_id` in letterboxed input pixels, sorted by score.
Engines carry metadata (ONNX `metadata_props`, or a JSON sidecar next to TensorRT engines); this
module turns either into an `EngineInfo` and refuses models that cannot honour the contract, with a
message that says what is wrong and what to do. It accepts the metadata of YOLO26/YOLOv10 models
exported by Ultralytics with end-to-end on (names as a Python dict literal, imgsz as a list).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

END2END = "end2end"
LEGACY = "one-to-many+nms"


class ModelContractError(Exception):
    """The model cannot be used as a vap engine; the message says why and what to do."""


@dataclass(frozen=True)
class EngineInfo:
    """What the runtime needs to know about an engine, resolved from graph shapes and metadata."""

    names: list[str]
    input_hw: tuple[int, int]          # the size to letterbox to (the maximum when dynamic_hw)
    stride: int = 32
    max_det: int = 300
    dynamic_batch: bool = True
    max_batch: int | None = None       # fixed batch size of the graph, when not dynamic
    dynamic_hw: bool = False
    precision: str = "fp32"
    source: str = ""                   # path or description, for messages
    layout: str = "end2end"            # END2END [B, K, 6], or LEGACY [B, 4+nc, N] decoded by the NMS fallback
    input_dtype: str = "float32"       # "uint8": the graph takes 0..255 and divides by 255 itself
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _parse_value(raw: str) -> Any:
    """Metadata values are strings holding JSON (ours) or Python literals (Ultralytics)."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(raw)
        except (ValueError, SyntaxError, TypeError):
            continue
    return raw


def parse_names(raw: Any) -> list[str]:
    """Class names from a list, a {id: name} dict (keys int or str), or their string forms."""
    value = _parse_value(raw) if isinstance(raw, str) else raw
    if isinstance(value, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError) as exc:
            raise ModelContractError(f"metadata 'names' has a non-integer class id: {exc}") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise ModelContractError("metadata 'names' class ids must be 0..N-1 without gaps")
        return [v for _, v in items]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ModelContractError(f"metadata 'names' is not a list or dict: {raw!r}")


def _truthy(raw: Any) -> bool:
    return str(raw).strip().lower() in ("1", "true", "yes")


ProbeFn = Callable[[int, tuple[int, int]], tuple[int, ...]]


def resolve_info(meta: dict[str, str], input_shape: list[Any], output_shape: list[Any],
                 source: str, class_names: list[str] | None = None, probe: ProbeFn | None = None) -> EngineInfo:
    """Check the graph's input/output shapes against the contract and merge in the metadata.

    `input_shape`/`output_shape` hold ints for fixed dims and anything else (None, a name) for
    dynamic ones. `class_names` overrides missing metadata (from the YAML). Where the output's
    row dims are symbolic (Ultralytics' dynamic exports name even the fixed ones, e.g.
    `['batch', 'Concatoutput0_dim_1', 'anchors']`), `probe(batch, (h, w))` runs one inference
    on a blank batch and returns the real output shape, which then decides the layout.
    """
    if len(input_shape) != 4:
        raise ModelContractError(
            f"{source}: input has shape {input_shape}; a vap engine takes images [B, 3, H, W]")
    if isinstance(input_shape[1], int) and input_shape[1] != 3:
        raise ModelContractError(
            f"{source}: input has {input_shape[1]} channels; a vap engine takes 3 (RGB) in NCHW layout")
    names = parse_names(meta["names"]) if "names" in meta else list(class_names or [])

    dyn_hw = not (isinstance(input_shape[2], int) and isinstance(input_shape[3], int))
    hw: tuple[int, int]
    if not dyn_hw:
        hw = (int(input_shape[2]), int(input_shape[3]))
    elif "imgsz" in meta:
        size = _parse_value(meta["imgsz"])
        if isinstance(size, int):
            size = [size, size]
        try:
            meta_hw = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) and len(size) == 2 else None
        except (TypeError, ValueError):
            meta_hw = None
        if meta_hw is None:
            raise ModelContractError(f"{source}: metadata imgsz {meta['imgsz']!r} is not [h, w]")
        hw = meta_hw
    else:
        raise ModelContractError(
            f"{source}: the input size is dynamic and the metadata has no 'imgsz'; set model.imgsz in the config")

    batch = input_shape[0]
    output_shape = list(output_shape)
    if len(output_shape) == 3 and not all(isinstance(d, int) for d in output_shape[1:]) and probe is not None:
        try:
            real = tuple(int(d) for d in probe(batch if isinstance(batch, int) else 1, hw))
        except ModelContractError:
            raise
        except Exception as exc:
            raise ModelContractError(f"{source}: a test inference on a blank {hw[0]}x{hw[1]} batch failed "
                                     f"({type(exc).__name__}: {str(exc)[:300]}); the model cannot run here") from None
        output_shape = [output_shape[0], *real[1:]] if len(real) == 3 else list(real)
    layout = output_layout(output_shape, meta, len(names), source)
    if not names:
        raise ModelContractError(
            f"{source}: no class names in the model metadata; set model.class_names in the config")
    try:
        stride = int(_parse_value(meta.get("stride", "32")))
        k = output_shape[1] if layout == END2END and isinstance(output_shape[1], int) else \
            int(_parse_value(meta.get("max_det", "300")))
    except (TypeError, ValueError):
        raise ModelContractError(f"{source}: metadata stride {meta.get('stride')!r} or max_det "
                                 f"{meta.get('max_det')!r} is not an integer; fix or remove it") from None
    return EngineInfo(
        names=names, input_hw=hw, stride=stride, max_det=int(k),
        dynamic_batch=not isinstance(batch, int), max_batch=batch if isinstance(batch, int) else None,
        dynamic_hw=dyn_hw, precision=str(meta.get("precision", "fp32")), source=source, layout=layout,
        extra={k: v for k, v in meta.items() if k not in ("names",)},
    )


def output_layout(shape: list[Any], meta: dict[str, str], num_classes: int, source: str) -> str:
    """END2END for `[B, K, 6]`; LEGACY for a one-to-many head `[B, 4+nc, N]` (boxes cx, cy, w, h then
    class scores); anything else is refused with the shapes found and the shapes expected.

    The metadata's end2end flag (Ultralytics writes it) wins over the shapes where present.
    """
    e2e = _truthy(meta["end2end"]) if "end2end" in meta else None
    nms_in_graph = _nms_in_graph(meta)
    legacy_rows = f"[B, {4 + num_classes}, N]" if num_classes else "[B, 4+classes, N]"
    expected = (f"expected [B, K, 6] (end-to-end: rows x1, y1, x2, y2, score, class_id; YOLO26/YOLOv10 or "
                f"`vap export`, or an export with NMS in the graph) or {legacy_rows} (one-to-many head, "
                f"YOLOv8/YOLO11 style, run with the NMS fallback)")
    if len(shape) == 3:
        d1, d2 = shape[1], shape[2]
        fits_legacy = isinstance(d1, int) and d1 > 4 and (not num_classes or d1 == 4 + num_classes)
        if d2 == 6 and (e2e is not False or nms_in_graph):
            # end-to-end head, or Ultralytics `nms=True`: end2end False, but NMS already in the graph
            return END2END
        if fits_legacy and e2e is not True and not nms_in_graph:
            return LEGACY
        if e2e or nms_in_graph:
            why = "end2end" if e2e else "nms=True"
            raise ModelContractError(f"{source}: the metadata says {why} (rows [B, K, 6]) but the output has "
                                     f"shape {shape}; re-export it, or remove the metadata key if it is wrong")
        if e2e is False and isinstance(d1, int) and num_classes and d1 != 4 + num_classes:
            raise ModelContractError(f"{source}: output has shape {shape}: as a one-to-many head (end2end False) "
                                     f"that is {d1 - 4} class rows, but the metadata names {num_classes} classes; "
                                     f"the metadata does not belong to this model")
    raise ModelContractError(f"{source}: output has shape {shape}; {expected}.")


def _nms_in_graph(meta: dict[str, str]) -> bool:
    """True for an Ultralytics export made with `nms=True` (its `args` metadata says so): the graph
    ends in NMS and already returns [B, max_det, 6] rows, though `end2end` is False."""
    if "nms" in meta:
        return _truthy(meta["nms"])
    args = _parse_value(meta["args"]) if "args" in meta else None
    return isinstance(args, dict) and args.get("nms") is True


def check_output(out: Any, batch: int, info: EngineInfo | str) -> None:
    """Validate one inference result against the engine's layout (cheap: shape only)."""
    shape = getattr(out, "shape", None)
    if isinstance(info, EngineInfo) and info.layout == LEGACY:
        rows = 4 + info.num_classes
        if shape is None or len(shape) != 3 or shape[0] != batch or shape[1] != rows:
            raise ModelContractError(f"{info.source}: engine returned shape {shape} for a batch of {batch}; "
                                     f"expected [{batch}, {rows}, N] (one-to-many layout)")
        return
    source = info.source if isinstance(info, EngineInfo) else info
    if shape is None or len(shape) != 3 or shape[0] != batch or shape[2] != 6:
        raise ModelContractError(
            f"{source}: engine returned shape {shape} for a batch of {batch}; expected [{batch}, K, 6]")
