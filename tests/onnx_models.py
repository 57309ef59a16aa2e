"""Tiny ONNX models built with the `onnx` helper API, for tests that need an engine but not a trained one.

`constant_detector` honours the engine contract: it returns the same rows for every image of a
batch of any size (the batch dimension is taken from the input, so a wrong batch plumbing fails).
`bad_output_model` returns a raw YOLO-head shape that must be refused at load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant_detector(path: Path, rows: np.ndarray, names: list[str], imgsz: int = 64,
                      dynamic_hw: bool = False, with_metadata: bool = True) -> Path:
    """An engine whose output is `rows` ([K, 6]) for every image; output [B, K, 6]."""
    rows = np.asarray(rows, dtype=np.float32).reshape(1, -1, 6)
    k = rows.shape[1]
    hw: list[int | str] = ["H", "W"] if dynamic_hw else [imgsz, imgsz]
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, *hw])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", k, 6])
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["m4"], keepdims=1),      # [B,1,1,1]
        helper.make_node("Reshape", ["m4", "shape3"], ["m3"]),                       # [B,1,1]
        helper.make_node("Mul", ["m3", "zeros"], ["z"]),                              # [B,K,6] of zeros
        helper.make_node("Add", ["z", "rows"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape3"),
        numpy_helper.from_array(np.zeros((1, k, 6), dtype=np.float32), "zeros"),
        numpy_helper.from_array(rows, "rows"),
    ]
    graph = helper.make_graph(nodes, "constant_detector", [images], [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if with_metadata:
        meta = {"names": json.dumps({str(i): n for i, n in enumerate(names)}), "imgsz": json.dumps([imgsz, imgsz]),
                "stride": "32", "end2end": "true", "max_det": str(k), "vap_format": "1", "task": "detect"}
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def bad_output_model(path: Path, channels: int = 84, anchors: int = 100, imgsz: int = 64,
                     names: list[str] | None = None) -> Path:
    """A raw YOLO-style head `[B, channels, anchors]`; with `names` whose count is not channels - 4
    it matches no layout the engine contract accepts."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, imgsz, imgsz])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", channels, anchors])
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["m4"], keepdims=1),
        helper.make_node("Reshape", ["m4", "shape3"], ["m3"]),
        helper.make_node("Mul", ["m3", "zeros"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape3"),
        numpy_helper.from_array(np.zeros((1, channels, anchors), dtype=np.float32), "zeros"),
    ]
    graph = helper.make_graph(nodes, "raw_head", [images], [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if names is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "names", json.dumps({str(i): n for i, n in enumerate(names)})
    onnx.save(model, str(path))
    return path


def one_to_many_variant(src: Path, out: Path, ultralytics_meta: bool = True) -> Path:
    """The same trained head as `src` (a `vap export` engine) with the legacy YOLOv8/YOLO11 output.

    Cuts the graph before its top-K and outputs every anchor as `[B, 4+nc, A]`: cx, cy, w, h in
    input pixels, then per-class sigmoid scores, as Ultralytics' non-end-to-end exports do. The
    metadata becomes Ultralytics-style Python literals with end2end False.
    """
    model = onnx.load(str(src))
    producer = {o: n for n in model.graph.node for o in n.output}
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    scores = producer[topk.input[0]].input[0]            # Flatten(Sigmoid scores [B, A, nc])
    boxes = next(n for n in model.graph.node if n.op_type == "GatherElements").input[0]  # xyxy [B, A, 4]
    meta = {p.key: p.value for p in model.metadata_props}
    opset = list(model.opset_import)
    nc = len(json.loads(meta["names"]))
    nodes = [
        helper.make_node("Slice", [boxes, "s0", "s2", "ax2"], ["lt"]),
        helper.make_node("Slice", [boxes, "s2", "s4", "ax2"], ["rb"]),
        helper.make_node("Add", ["lt", "rb"], ["sum"]),
        helper.make_node("Mul", ["sum", "half"], ["centre"]),
        helper.make_node("Sub", ["rb", "lt"], ["wh"]),
        helper.make_node("Concat", ["centre", "wh", scores], ["rows"], axis=2),
        helper.make_node("Transpose", ["rows"], ["output0_legacy"], perm=[0, 2, 1]),
    ]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([2], np.int64), "s2"),
        numpy_helper.from_array(np.array([4], np.int64), "s4"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("output0_legacy", TensorProto.FLOAT,
                                                            ["batch", 4 + nc, "anchors"]))
    model = onnx.utils.Extractor(model).extract_model(["images"], ["output0_legacy"])  # drops the top-K part
    names = {int(k): v for k, v in json.loads(meta["names"]).items()}
    imgsz = json.loads(meta["imgsz"])
    new_meta = ({"names": repr(names), "imgsz": repr(imgsz), "stride": "32", "end2end": "False", "task": "detect",
                 "description": "Ultralytics-style legacy export (test fixture)"} if ultralytics_meta else {})
    del model.opset_import[:]
    model.opset_import.extend(opset)
    for k, v in new_meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(out))
    return out
