"""The engine contract at load and at run time, on tiny ONNX models built in the test."""

from __future__ import annotations

import numpy as np
import pytest

from vap_video.engines.backends import load_backend
from vap_video.engines.contract import ModelContractError, parse_names, resolve_info
from tests.onnx_models import bad_output_model, constant_detector

ROWS = np.array([[10, 10, 30, 40, 0.9, 1], [5, 5, 9, 9, 0.1, 0]], dtype=np.float32)


def test_contract_model_runs_at_any_batch(tmp_path):
    be = load_backend(constant_detector(tmp_path / "m.onnx", ROWS, ["a", "b"]))
    assert be.info.names == ["a", "b"] and be.info.input_hw == (64, 64) and be.info.max_det == 2
    for b in (1, 3, 8):
        out = be.infer(np.random.rand(b, 3, 64, 64).astype(np.float32))
        assert out.shape == (b, 2, 6)
        np.testing.assert_allclose(out[-1], ROWS)


def test_output_matching_no_layout_is_refused_with_shapes(tmp_path):
    with pytest.raises(ModelContractError) as err:
        load_backend(bad_output_model(tmp_path / "raw.onnx", names=["a", "b", "c"]))
    msg = str(err.value)
    assert "['B', 84, 100]" in msg and "[B, K, 6]" in msg and "[B, 7, N]" in msg and "NMS" in msg
    with pytest.raises(ModelContractError, match="class_names"):   # a legacy head, but nameless
        load_backend(bad_output_model(tmp_path / "raw2.onnx"))


def test_missing_names_needs_config_names(tmp_path):
    path = constant_detector(tmp_path / "m.onnx", ROWS, ["a", "b"], with_metadata=False)
    with pytest.raises(ModelContractError, match="class_names"):
        load_backend(path)
    assert load_backend(path, class_names=["x", "y"]).info.names == ["x", "y"]


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ModelContractError, match="does not exist"):
        load_backend(tmp_path / "nope.onnx")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(ModelContractError, match="unknown model format"):
        load_backend(tmp_path / "m.tflite")


def test_corrupt_onnx_file_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelContractError, match="cannot load"):
        load_backend(p)


def test_ultralytics_style_metadata_is_understood():
    meta = {"names": "{0: 'person', 1: 'bicycle', 2: 'car'}", "imgsz": "[640, 640]", "stride": "32",
            "end2end": "True", "batch": "1"}
    info = resolve_info(meta, [1, 3, 640, 640], [1, 300, 6], "yolo26n.onnx")
    assert info.names == ["person", "bicycle", "car"]
    assert info.max_batch == 1 and not info.dynamic_batch and info.max_det == 300
    with pytest.raises(ModelContractError, match=r"output has shape \[1, 300, 6\]"):  # end2end=False needs [B, 4+nc, N]
        resolve_info({**meta, "end2end": "False"}, [1, 3, 640, 640], [1, 300, 6], "m")


def test_dynamic_hw_needs_imgsz():
    info = resolve_info({"names": '["a"]', "imgsz": "[384, 640]"}, ["B", 3, "H", "W"], ["B", 300, 6], "m")
    assert info.dynamic_hw and info.input_hw == (384, 640)
    with pytest.raises(ModelContractError, match="imgsz"):
        resolve_info({"names": '["a"]'}, ["B", 3, "H", "W"], ["B", 300, 6], "m")


def test_parse_names_rejects_gaps():
    assert parse_names('{"1": "b", "0": "a"}') == ["a", "b"]
    with pytest.raises(ModelContractError, match="without gaps"):
        parse_names("{0: 'a', 2: 'c'}")


def test_fixed_batch_graph_is_split_and_padded(tmp_path):
    """A graph exported with batch 1 still serves batches of 3 (the backend splits them)."""
    import onnx
    path = constant_detector(tmp_path / "m.onnx", ROWS, ["a", "b"])
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, str(path))
    be = load_backend(path)
    assert be.info.max_batch == 2
    assert be.infer(np.zeros((3, 3, 64, 64), np.float32)).shape == (3, 2, 6)


def test_odd_metadata_values_are_contract_errors():
    base = {"names": '["a"]', "imgsz": "[64, 64]"}
    for bad in ({"stride": "[8, 16, 32]"}, {"imgsz": '["640", "x"]'}, {"names": "{None: 'a'}"}):
        with pytest.raises(ModelContractError):
            resolve_info({**base, **bad}, ["B", 3, "H", "W"], ["B", 300, 6], "m")


def test_symbolic_output_dims_are_resolved_by_a_probe():
    """Ultralytics' dynamic exports name every output dim, even fixed ones: a blank-batch probe decides."""
    meta = {"names": repr({i: str(i) for i in range(80)}), "imgsz": "[320, 320]", "stride": "32"}
    seen = []

    def probe(batch, hw):
        seen.append((batch, hw))
        return (batch, 300, 6) if meta.get("end2end") == "True" else (batch, 84, 2100)

    symbolic = ["batch", "Concatoutput0_dim_1", "anchors"]
    meta["end2end"] = "True"
    info = resolve_info(meta, ["batch", 3, "height", "width"], symbolic, "yolo26n.onnx", probe=probe)
    assert info.layout == "end2end" and info.max_det == 300 and info.dynamic_hw and info.input_hw == (320, 320)
    assert seen == [(1, (320, 320))]
    meta["end2end"] = "False"
    info = resolve_info(meta, ["batch", 3, "height", "width"], symbolic, "yolo11n.onnx", probe=probe)
    assert info.layout == "one-to-many+nms"
    with pytest.raises(ModelContractError, match=r"output has shape \['batch', 'Concatoutput0_dim_1'"):
        resolve_info(meta, ["batch", 3, "height", "width"], symbolic, "m.onnx")  # no probe: nothing to decide on

    def failing(batch, hw):
        raise RuntimeError("kernel not implemented")

    with pytest.raises(ModelContractError, match="test inference on a blank 320x320 batch failed"):
        resolve_info(meta, ["batch", 3, "height", "width"], symbolic, "m.onnx", probe=failing)


def test_nms_in_graph_export_is_end_to_end_rows():
    """`yolo export nms=True`: end2end False in the metadata, NMS rows [B, max_det, 6] out of the graph."""
    meta = {"names": "{0: 'person', 1: 'car'}", "imgsz": "[320, 320]", "end2end": "False",
            "args": "{'batch': 1, 'nms': True, 'dynamic': False}"}
    info = resolve_info(meta, [1, 3, 320, 320], [1, 300, 6], "yolo11n-nms.onnx")
    assert info.layout == "end2end" and info.max_det == 300
    with pytest.raises(ModelContractError, match="metadata says nms=True"):
        resolve_info(meta, [1, 3, 320, 320], [1, 6, 2100], "m.onnx")
    with pytest.raises(ModelContractError, match="metadata says end2end"):
        resolve_info({**meta, "end2end": "True", "args": "{}"}, [1, 3, 320, 320], [1, 6, 2100], "m.onnx")
