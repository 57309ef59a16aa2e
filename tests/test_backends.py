"""Backends behind one interface: torch vs ONNX Runtime parity, IO binding, the legacy one-to-many
layout with the NMS fallback, and CPU INT8 with its accuracy report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from vap_video.engines.backends import load_backend
from vap_video.engines.contract import END2END, LEGACY, ModelContractError, resolve_info
from vap_video.engines.evaluate import box_iou
from vap_video.engines.nms_fallback import decode_one_to_many
from tests.onnx_models import one_to_many_variant

SHIPPED = Path(__file__).resolve().parent.parent / "vap_video" / "engines" / "models" / "vap-synth-n.onnx"
SHIPPED_PT = SHIPPED.with_suffix(".pt")   # its training checkpoint (EMA weights, both heads)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from vap_video.engines.synth import write_yolo_dataset

    root = tmp_path_factory.mktemp("synth")
    return write_yolo_dataset(root, 24, 40, imgsz=320, seed=0, haze_fraction=0.25)


# ------------------------------------------------------------------------------------------ torch


@pytest.fixture(scope="module")
def checkpoint_and_onnx(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    from vap_video.engines.export import export_onnx
    from tests.test_export import _checkpoint

    tmp = tmp_path_factory.mktemp("ck")
    ck = _checkpoint(tmp)
    return ck, export_onnx(ck, tmp / "m.onnx", imgsz=64, max_det=40)


def _same_rows(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """Rows agree as sets; rows tied with the K-th score may be cut differently, so those are exempt."""
    d = np.abs(a[:, None, :] - b[None, :, :]).max(-1)
    cut = max(a[-1, 4], b[-1, 4]) + atol
    assert d.min(1)[a[:, 4] > cut].max(initial=0) <= atol
    assert d.min(0)[b[:, 4] > cut].max(initial=0) <= atol
    assert (a[:, 4] > cut).sum() >= len(a) // 2


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_torch_backend_matches_onnxruntime_fp32(checkpoint_and_onnx, batch):
    ck, onnx_path = checkpoint_and_onnx
    ort_be = load_backend(onnx_path)
    torch_be = load_backend(ck, "auto")   # .pt -> torch
    assert torch_be.name == "torch" and ort_be.name == "onnxruntime"
    assert torch_be.info.names == ort_be.info.names and torch_be.info.max_det == ort_be.info.max_det
    x = np.random.default_rng(batch).random((batch, 3, 64, 64), dtype=np.float32)
    a, b = ort_be.infer(x), torch_be.infer(x)
    assert a.shape == b.shape == (batch, 40, 6)
    for i in range(batch):
        _same_rows(a[i], b[i], 1e-4)


def test_torch_backend_options_and_errors(checkpoint_and_onnx, tmp_path):
    ck, onnx_path = checkpoint_and_onnx
    with pytest.raises(ModelContractError, match="fp16 needs a CUDA device"):
        load_backend(ck, "torch", fp16=True)
    with pytest.raises(ModelContractError, match="CUDA graphs need a CUDA device"):
        load_backend(ck, "torch", cuda_graphs=[1, 8])
    with pytest.raises(ModelContractError, match=r"\.pt"):
        load_backend(onnx_path, "torch")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(ModelContractError, match="cannot load as a vap checkpoint"):
        load_backend(junk)
    plain = load_backend(ck, "torch", channels_last=True)
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(plain.infer(x), load_backend(ck, "torch").infer(x), atol=1e-4)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ModelContractError, match="unknown backend 'openvino'"):
        load_backend(SHIPPED, "openvino")


def test_shipped_checkpoint_on_torch_matches_the_shipped_onnx(synth_data):
    from vap_video.engines.calibration import calibration_batches

    torch_be, ort_be = load_backend(SHIPPED_PT), load_backend(SHIPPED)
    assert torch_be.info.names == ort_be.info.names and torch_be.info.input_hw == ort_be.info.input_hw
    for batch in (1, 4):
        x = next(calibration_batches(synth_data, (320, 320), batch_size=batch, limit=batch))
        a, b = ort_be.infer(x), torch_be.infer(x)
        for p, q in zip(a, b):
            keep = p[:, 4] > 0.05       # ranks of near-zero scores may swap at float rounding
            np.testing.assert_allclose(p[keep], q[keep], atol=2e-3)


# ------------------------------------------------------------------------------------ onnxruntime


def test_io_binding_gives_the_same_output():
    x = np.random.default_rng(1).random((3, 3, 320, 320), dtype=np.float32)
    plain = load_backend(SHIPPED)
    bound = load_backend(SHIPPED, io_binding=True, intra_op_threads=1)
    np.testing.assert_array_equal(plain.infer(x), bound.infer(x))
    np.testing.assert_array_equal(plain.infer(x[:1]), bound.infer(x[:1]))   # rebinding per batch shape


def test_provider_options_and_missing_providers():
    be = load_backend(SHIPPED, providers=[{"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}}])
    assert be.providers == ["CPUExecutionProvider"]
    with pytest.raises(ModelContractError, match="onnxruntime-gpu"):
        load_backend(SHIPPED, providers=["CUDAExecutionProvider"])


# ------------------------------------------------------------------------------ legacy + NMS


def test_layouts_are_told_apart_by_shape_and_metadata():
    four = {"names": '["a", "b", "c", "d"]', "imgsz": "[320, 320]"}
    assert resolve_info(four, ["B", 3, 320, 320], ["B", 300, 6], "m").layout == END2END
    legacy = resolve_info(four, ["B", 3, 320, 320], ["B", 8, 2100], "m")
    assert legacy.layout == LEGACY and legacy.max_det == 300
    two = {"names": "{0: 'a', 1: 'b'}"}
    assert resolve_info(two, [1, 3, 64, 64], [1, 6, 84], "m").layout == LEGACY          # 2 classes: 4+2 rows
    assert resolve_info({**two, "end2end": "True"}, [1, 3, 64, 64], [1, 300, 6], "m").layout == END2END
    with pytest.raises(ModelContractError) as err:
        resolve_info(four, ["B", 3, 320, 320], ["B", 84, 8400], "coco.onnx")
    assert "['B', 84, 8400]" in str(err.value) and "[B, 8, N]" in str(err.value)
    with pytest.raises(ModelContractError, match="output has shape"):
        resolve_info(four, [1, 3, 64, 64], [1, 2, 300, 6], "m")


def test_nms_fallback_suppresses_within_a_class_only():
    # anchors: two overlapping class-0 boxes, one class-1 box on top of them, one low score
    cx = [50, 52, 51, 200]
    cy = [50, 50, 50, 200]
    wh = [40, 40, 40, 10]
    scores = np.array([[0.9, 0.8, 0.1, 0.0005], [0.1, 0.1, 0.7, 0.0]], np.float32)
    raw = np.concatenate([np.array([cx, cy, wh, wh], np.float32), scores])[None]
    out = decode_one_to_many(raw, conf=0.001, iou=0.5, max_det=5)
    assert out.shape == (1, 5, 6)
    kept = out[0][out[0, :, 4] > 0]
    np.testing.assert_allclose(kept[:, 4], [0.9, 0.7])        # second class-0 box suppressed
    np.testing.assert_allclose(kept[:, 5], [0, 1])
    np.testing.assert_allclose(kept[0, :4], [30, 30, 70, 70])
    assert not out[0, 2:].any()                               # padding rows are zero


def test_legacy_export_agrees_with_end_to_end(tmp_path, synth_data):
    """The shipped model's trained head, exported both ways: top-K end-to-end and the legacy
    `[B, 4+nc, A]` layout decoded by the NMS fallback, must find the same objects."""
    from vap_video.engines.evaluate_engine import evaluate_backend, val_samples

    legacy_path = one_to_many_variant(SHIPPED, tmp_path / "legacy.onnx")
    e2e, legacy = load_backend(SHIPPED), load_backend(legacy_path)
    assert legacy.info.layout == LEGACY and legacy.info.names == e2e.info.names
    samples, names = val_samples(synth_data)
    a, b = evaluate_backend(e2e, samples, names), evaluate_backend(legacy, samples, names)
    assert abs(a.result.map50_95 - b.result.map50_95) < 0.03, (a.summary(), b.summary())
    assert a.result.map50_95 > 0.2
    from vap_video.engines.calibration import calibration_batches
    x = next(calibration_batches(synth_data, (320, 320), batch_size=8, limit=8))
    direct = total = 0
    for p, q in zip(e2e.infer(x), legacy.infer(x)):
        for row in p[p[:, 4] >= 0.5]:
            # each confident end-to-end box is either found by the legacy path, or explained by NMS:
            # a higher-scoring box of its class overlapping it by more than the NMS IoU
            same = q[(q[:, 5] == row[5]) & (q[:, 4] > 0)]
            iou = box_iou(row[None, :4], same[:, :4])[0]
            total += 1
            if len(same) and iou.max() > 0.95:
                direct += 1
            else:
                assert ((iou > legacy.nms_iou) & (same[:, 4] > row[4])).any()
        for row in q[q[:, 4] >= 0.5]:   # and the legacy path invents nothing
            same = p[p[:, 5] == row[5]]
            assert box_iou(row[None, :4], same[:, :4]).max() > 0.95
    assert total >= 8 and direct / total > 0.8


def _export_one_to_many_head(ckpt: Path, out: Path) -> Path:
    """The checkpoint's one-to-many head (trained with NMS in mind) in the legacy `[B, 4+nc, A]` layout."""
    import onnx
    import torch

    from vap_video.engines.train import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(ckpt)
    model = model_from_checkpoint(ck).eval()

    class OneToMany(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raw = self.m.forward_raw(x)
            boxes, scores = self.m.decode(raw["o2m"], raw["anchors"], raw["strides"])
            centre, wh = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
            return torch.cat([centre, wh, scores], -1).transpose(1, 2)

    with torch.no_grad():
        torch.onnx.export(OneToMany(), (torch.zeros(1, 3, 320, 320),), str(out), input_names=["images"],
                          output_names=["output0"], dynamic_axes={"images": {0: "b"}, "output0": {0: "b"}},
                          opset_version=17, dynamo=False)
    proto = onnx.load(str(out))
    dims = proto.graph.output[0].type.tensor_type.shape.dim   # the tracer leaves them symbolic; exporters fix them
    dims[1].dim_value, dims[2].dim_value = 4 + len(ck["names"]), 2100
    for key, value in (("names", repr(dict(enumerate(ck["names"])))), ("imgsz", "[320, 320]"), ("end2end", "False")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def test_one_to_many_head_with_nms_agrees_with_the_one_to_one_head(tmp_path, synth_data):
    """A model with both heads: its legacy head through the NMS fallback and its NMS-free head
    score alike (`vap val` on the shipped checkpoint gives 0.511 vs 0.477 mAP50-95 on the full synthetic val set)."""
    from vap_video.engines.evaluate_engine import evaluate_backend, val_samples

    legacy = load_backend(_export_one_to_many_head(SHIPPED_PT, tmp_path / "o2m.onnx"))
    assert legacy.info.layout == LEGACY
    samples, names = val_samples(synth_data)
    a = evaluate_backend(load_backend(SHIPPED), samples, names).result.map50_95
    b = evaluate_backend(legacy, samples, names).result.map50_95
    assert a > 0.2 and b > 0.2 and abs(a - b) < 0.06, (a, b)


# ------------------------------------------------------------------------------------------- INT8


def test_cpu_int8_model_carries_its_accuracy_report(tmp_path, synth_data, caplog):
    from vap_video.engines.quantize import cli

    out = tmp_path / "m.int8.onnx"
    assert cli([str(SHIPPED), "--data", str(synth_data), "--out", str(out), "--limit", "16"]) == 0
    with caplog.at_level(logging.WARNING, logger="vap.engine"):
        be = load_backend(out)
    assert be.info.precision == "int8"
    assert "INT8 mAP50-95" in caplog.text and "vs fp32" in caplog.text
    from vap_video.engines.metadata import read_onnx_metadata
    report = read_onnx_metadata(out)["quantization"]
    assert report["images"] == 40 and set(report["map50_95"]) == {"fp32", "int8"}
    assert abs(report["map50_95_change"]) < 0.1          # calibrated INT8 stays close to fp32
    import onnx
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    from vap_video.engines.calibration import calibration_batches
    x = next(iter(calibration_batches(synth_data, (320, 320), 4, 4)))
    assert be.infer(x).shape == (4, 300, 6)


def test_quantize_needs_validation_data(capsys, tmp_path):
    from vap_video.engines.quantize import cli

    with pytest.raises(SystemExit):
        cli([str(SHIPPED)])                       # --data is required: INT8 is never silent
    assert "--data" in capsys.readouterr().err
    assert cli([str(tmp_path / "none.onnx"), "--data", "x.yaml"]) == 3


# ------------------------------------------------------------------------------------------ config


def test_model_config_routes_options_to_the_chosen_backend():
    from vap_video.pipeline.config import ConfigError
    from vap_video.pipeline.settings import parse_settings

    s = parse_settings({"model": {"conf": 0.4, "class_conf": {"car": 0.3},
                                  "onnxruntime": {"intra_op_threads": 1, "io_binding": True}}})
    ort_opts = s.model.backend_options("onnxruntime")
    assert ort_opts["intra_op_threads"] == 1 and ort_opts["io_binding"] and "device" not in ort_opts
    assert ort_opts["nms_conf"] == 0.3                       # the lowest threshold prefilters NMS candidates
    assert s.model.backend_options("torch")["device"] == "cpu"
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        parse_settings({"model": {"backend": "torch", "torch": {"device": "gpu0"}}})
    with pytest.raises(ConfigError, match="unknown key 'providers'"):   # options live under their backend
        parse_settings({"model": {"providers": ["CPUExecutionProvider"]}})


def test_default_engine_threads_leave_one_core_to_decoding(monkeypatch):
    import os

    from vap_video.pipeline.settings import parse_settings

    for cores, expect in ((1, 1), (2, 1), (8, 7)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert parse_settings({}).model.backend_options("onnxruntime")["intra_op_threads"] == expect
    assert parse_settings({"model": {"onnxruntime": {"intra_op_threads": 2}}}).model.backend_options(
        "onnxruntime")["intra_op_threads"] == 2   # an explicit count is kept


def test_engine_bench_measures_every_variant_it_can_and_says_why_not(tmp_path, capsys):
    import json

    from vap_video.pipeline.cli import main

    assert main(["bench", "--engine-only", "--quick", "--batches", "1,2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "engines-vap-synth-n.json").read_text())
    measured = {r["variant"] for r in result["results"]}
    assert {"onnxruntime-cpu", "onnxruntime-cpu-iobinding", "torch-cpu"} <= measured
    assert all(r["images_per_s"] > 0 and r["p90_ms"] >= r["median_ms"] for r in result["results"])
    assert [r["batch"] for r in result["results"] if r["variant"] == "onnxruntime-cpu"] == [1, 2]
    why = {s["variant"]: s["why"] for s in result["skipped"]}
    assert "onnxruntime-cpu-int8" in why          # no INT8 model next to the shipped one
    out = capsys.readouterr().out
    assert "| onnxruntime-cpu | fp32 | 1 |" in out and "not measured: onnxruntime-cpu-int8" in out
    assert main(["bench", "--engine-only", "--batches", "0"]) == 2


def test_run_with_tensorrt_where_it_is_missing_is_a_clear_model_error(tmp_path, capsys):
    pytest.importorskip("yaml")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; this checks the message where it is not")
    from vap_video.pipeline.cli import main

    cfg = tmp_path / "trt.yaml"
    cfg.write_text("streams: [{name: a, url: 'synthetic://?frames=2'}]\nmodel: {backend: tensorrt}\n"
                   "server: {enabled: false}\nsinks: []\n")
    assert main(["run", str(cfg), "--quiet", "--duration", "1"]) == 3
    err = capsys.readouterr().err
    assert "TensorRT not installed" in err and "onnxruntime" in err and "Traceback" not in err


def test_gpu_preprocess_refuses_backends_and_machines_it_cannot_use():
    from vap_video.pipeline.config import ConfigError
    from vap_video.pipeline.runtime import Pipeline
    from vap_video.pipeline.settings import parse_settings

    s = parse_settings({"model": {"gpu_preprocess": True}, "server": {"enabled": False}, "sinks": []})
    with pytest.raises(ConfigError, match="tensorrt or torch backend"):
        Pipeline(s)
    s = parse_settings({"model": {"path": str(SHIPPED_PT), "gpu_preprocess": True}, "server": {"enabled": False},
                        "sinks": []})
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Pipeline(s)                                # torch backend on cpu


def _cuda_available() -> bool:
    try:
        import torch
    except ModuleNotFoundError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_available(), reason="no CUDA GPU")
def test_cuda_fp16_and_gpu_preprocessing_match_onnxruntime_cpu(synth_data):
    """fp16 parity on the GPU: uint8 frames letterboxed on the GPU, the shipped weights in fp16
    (with and without CUDA graphs), against ONNX Runtime fp32 on the CPU path."""
    from vap_video.engines.calibration import calibration_images
    from vap_video.engines.dataset import load_image
    from vap_video.engines.gpu_preprocess import GpuPreprocessor
    from vap_video.pipeline.preprocess import BatchPreprocessor

    frames = [load_image(p) for p in calibration_images(synth_data, limit=8)]
    ref_in, _ = BatchPreprocessor((320, 320))(frames)
    ref = load_backend(SHIPPED).infer(ref_in)
    gpu_in, _ = GpuPreprocessor((320, 320), device="cuda")(frames)
    for opts in ({}, {"cuda_graphs": [8]}):
        _same_detections(ref, load_backend(SHIPPED_PT, "torch", device="cuda", fp16=True, **opts).infer(gpu_in))


def _same_detections(ref: np.ndarray, out: np.ndarray) -> None:
    for p, q in zip(ref, out):
        for row in p[p[:, 4] >= 0.3]:
            same = q[q[:, 5] == row[5]]
            assert box_iou(row[None, :4], same[:, :4]).max() > 0.98
            assert np.abs(same[:, 4] - row[4]).min() < 0.02


@pytest.mark.skipif(not _cuda_available(), reason="no CUDA GPU")
def test_cuda_graphs_are_kept_per_batch_size_and_input_size(synth_data):
    """A captured graph is reused only for its (padded batch, H, W): a new input size captures its
    own graph (a graph keyed by batch alone would replay a wrong-size input), at most MAX_GRAPHS
    of them, and every shape gives the eager model's detections."""
    from vap_video.engines.backends.torch_backend import MAX_GRAPHS
    from vap_video.engines.calibration import calibration_images
    from vap_video.engines.dataset import load_image
    from vap_video.pipeline.preprocess import BatchPreprocessor

    frames = [load_image(p) for p in calibration_images(synth_data, limit=4)]
    eager = load_backend(SHIPPED_PT, "torch", device="cuda")
    graphs = load_backend(SHIPPED_PT, "torch", device="cuda", cuda_graphs=[4])
    shapes = [(2, (320, 320)), (3, (256, 320)), (4, (320, 320))]
    shapes += [(4, (224 + 32 * i, 288)) for i in range(MAX_GRAPHS)]   # more sizes than the cap
    expected: set[tuple[int, int, int]] = set()
    for n, hw in shapes:
        x, _ = BatchPreprocessor(hw)(frames[:n])
        _same_detections(eager.infer(x), graphs.infer(x))
        if len(expected) < MAX_GRAPHS:
            expected.add((4, *hw))      # batches of 2 and 3 replay the graph captured for 4
        assert set(graphs._graphs) == expected
    assert len(expected) == MAX_GRAPHS


def test_tensorrt_qdq_is_symmetric_int8(tmp_path, synth_data):
    """TensorRT takes INT8 only as symmetric signed Q/DQ (zero points 0, int8)."""
    import onnx
    from onnx import numpy_helper

    from vap_video.engines.quantize import quantize_qdq

    out = quantize_qdq(SHIPPED, tmp_path / "trt.qdq.onnx", synth_data, limit=8, target="tensorrt")
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    cpu = quantize_qdq(SHIPPED, tmp_path / "cpu.qdq.onnx", synth_data, limit=8, target="cpu")
    cpu_inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(cpu)).graph.initializer}
    assert any(cpu_inits[n.input[2]].dtype == np.uint8 for n in onnx.load(str(cpu)).graph.node
               if n.op_type == "QuantizeLinear" and len(n.input) > 2)     # CPU: u8 activations


def test_nms_fallback_is_announced_and_unknown_options_are_named(tmp_path, caplog):
    legacy_path = one_to_many_variant(SHIPPED, tmp_path / "legacy.onnx")
    with caplog.at_level(logging.WARNING, logger="vap.engine"):
        load_backend(legacy_path)
    assert "NMS FALLBACK" in caplog.text
    with pytest.raises(ModelContractError, match="does not take these options.*cuda_graph"):
        load_backend(SHIPPED_PT, "torch", cuda_graph=[8])


def test_interrupted_or_failed_quantize_leaves_no_int8_file(tmp_path, synth_data, monkeypatch):
    import vap_video.engines.quantize as q

    def boom(*_a, **_k):
        raise ModelContractError("report failed")
    monkeypatch.setattr(q, "accuracy_report", boom)
    out = tmp_path / "m.int8.onnx"
    assert q.cli([str(SHIPPED), "--data", str(synth_data), "--out", str(out), "--limit", "4"]) == 3
    assert not out.exists() and not list(tmp_path.glob("*.onnx"))


def test_a_gpu_provider_that_falls_back_to_cpu_is_an_error(monkeypatch):
    import onnxruntime as ort

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    with pytest.raises(ModelContractError, match="could not start CUDAExecutionProvider"):
        load_backend(SHIPPED, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
