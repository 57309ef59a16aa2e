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


def bad_output_model(path: Path, channels: int = 84, anchors: int = 100, imgsz: int = 64) -> Path:
    """A raw YOLO-style head `[B, 4+nc, anchors]` that needs NMS: not a vap engine."""
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
    onnx.save(model, str(path))
    return path
