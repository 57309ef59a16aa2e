"""ONNX export: graph structure, numerical agreement with PyTorch, dynamic batch, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vap_video.engines.detector import DetectorConfig, build_detector, count_params
from vap_video.engines.export import cli, export_model, export_onnx
from vap_video.engines.metadata import (
    REQUIRED_KEYS,
    decode_metadata,
    read_onnx_metadata,
    read_sidecar,
    sha256_file,
    write_metadata,
)

torch.set_num_threads(1)
NAMES = ["person", "car", "bicycle"]


def seeded_model(seed: int = 0):
    """Tiny model with random BN statistics and spread-out class scores (stable top-K order)."""
    torch.manual_seed(seed)
    m = build_detector(DetectorConfig(scale="n", nc=3, imgsz=64, width=0.125, max_det=40))
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    for head in (m.o2o, m.o2m):
        for cls in head.cls:
            cls[-1].bias.data.normal_(-2.0, 1.0, generator=g)
            cls[-1].weight.data.normal_(0, 0.2, generator=g)
    return m.eval()


def torch_reference(seed: int, x: torch.Tensor) -> np.ndarray:
    m = seeded_model(seed).drop_one_to_many()
    m.max_det = 40
    with torch.no_grad():
        return m(x).numpy()


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output0"], {"images": x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "m.onnx"
    return export_model(seeded_model(0), out, 64, NAMES, max_det=40, source_sha256="ab" * 32)


def test_graph_has_no_nms_and_no_one_to_many_weights(exported):
    model = onnx.load(str(exported))
    ops = {n.op_type for n in model.graph.node}
    assert "NonMaxSuppression" not in ops
    assert "TopK" in ops, "the NMS-free top-K lives in the graph"
    names = [i.name for i in model.graph.initializer] + [inp for n in model.graph.node for inp in n.input]
    assert not any("o2m" in n for n in names), "no node may read one-to-many weights"
    # same number of weights as the fused one-to-one-only model (initializers are the params)
    ref = seeded_model(0).drop_one_to_many().fuse()
    n_init = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                 and len(i.dims) > 0)
    assert abs(n_init - count_params(ref)) <= 64, (n_init, count_params(ref))
    full = seeded_model(0).fuse()
    assert n_init < count_params(full) - 0.5 * count_params(full.o2m)


def test_io_names_and_dynamic_batch(exported):
    model = onnx.load(str(exported))
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.name == "images" and out.name == "output0"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[2].dim_value == 6
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    y = run_ort(exported, x)
    assert y.shape == (3, 40, 6)


def _match_sets(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """Rows of ``a`` and ``b`` agree as sets within ``atol``: equal scores may come in either order,
    and rows tied with the K-th score may be cut differently, so those are exempt."""
    d = np.abs(a[:, None, :] - b[None, :, :]).max(-1)
    cut = max(a[-1, 4], b[-1, 4]) + atol
    assert d.min(1)[a[:, 4] > cut].max(initial=0) <= atol, d.min(1).max()
    assert d.min(0)[b[:, 4] > cut].max(initial=0) <= atol, d.min(0).max()
    assert (a[:, 4] > cut).sum() >= len(a) // 2, "too many ties for a meaningful comparison"


def test_onnxruntime_matches_pytorch(exported):
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 64, 64), dtype=np.float32)
    got = run_ort(exported, x)
    ref = torch_reference(0, torch.from_numpy(x))
    assert np.all(np.diff(got[..., 4], axis=1) <= 0), "sorted by score"
    assert got[..., 4].std() > 0.01, "scores must be non-trivial for the comparison to mean something"
    for i in range(2):
        np.testing.assert_allclose(got[i, :, 4], ref[i, :, 4], atol=1e-4)
        _match_sets(got[i], ref[i], atol=1e-4)


def test_metadata_in_onnx_and_sidecar(exported):
    meta = read_onnx_metadata(exported)
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["names"] == {"0": "person", "1": "car", "2": "bicycle"}
    assert meta["imgsz"] == [64, 64] and meta["stride"] == 32 and meta["end2end"] is True
    assert meta["max_det"] == 40 and meta["precision"] == "fp32" and meta["dynamic_hw"] is False
    assert meta["preprocessing"] == {"color": "RGB", "scale": "0..1", "letterbox_pad": 114, "layout": "NCHW"}
    assert meta["model"]["scale"] == "n" and meta["model"]["params"] > 0
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    raw = sess.get_modelmeta().custom_metadata_map
    assert raw["vap_format"] == "1" and raw["task"] == "detect" and raw["end2end"] == "true"
    assert json.loads(raw["names"]) == {"0": "person", "1": "car", "2": "bicycle"}
    assert raw["source_sha256"] == "ab" * 32
    assert read_sidecar(exported) == meta


def test_ultralytics_style_metadata_is_understood(tmp_path):
    meta = decode_metadata({"names": "{0: 'person', 1: 'car'}", "imgsz": "[640, 640]", "end2end": "True",
                            "stride": "32", "max_det": "300"})
    assert meta == {"names": {"0": "person", "1": "car"}, "imgsz": [640, 640], "end2end": True, "stride": 32,
                    "max_det": 300}
    # write_metadata replaces keys rather than duplicating them
    m = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    p = tmp_path / "id.onnx"
    onnx.save(m, str(p))
    write_metadata(p, {"task": "detect", "max_det": 5})
    write_metadata(p, {"max_det": 7})
    props = [(q.key, q.value) for q in onnx.load(str(p)).metadata_props]
    assert sorted(props) == [("max_det", "7"), ("task", "detect")]


def test_dynamic_hw_export_runs_other_sizes(tmp_path):
    path = export_model(seeded_model(2), tmp_path / "d.onnx", 64, NAMES, dynamic_hw=True, max_det=40)
    assert read_onnx_metadata(path)["dynamic_hw"] is True
    x = np.random.default_rng(0).random((1, 3, 96, 128), dtype=np.float32)
    got = run_ort(path, x)
    ref = torch_reference(2, torch.from_numpy(x))
    assert got.shape == (1, 40, 6)
    np.testing.assert_allclose(got[0, :, 4], ref[0, :, 4], atol=1e-4)


def _checkpoint(tmp_path: Path) -> Path:
    m = seeded_model(0)
    ck = {"model_cfg": m.cfg.to_dict() | {"names": NAMES}, "ema": m.state_dict(), "model": m.state_dict(),
          "names": NAMES, "train_cfg": {}, "epoch": 0}
    p = tmp_path / "best.pt"
    torch.save(ck, p)
    return p


def test_export_from_checkpoint_and_cli(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    out = export_onnx(ck, tmp_path / "m.onnx", max_det=40)
    meta = read_onnx_metadata(out)
    assert meta["source_sha256"] == sha256_file(ck) and len(meta["source_sha256"]) == 64
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    _match_sets(run_ort(out, x)[0], torch_reference(0, torch.from_numpy(x))[0], 1e-4)
    assert cli([str(ck), "--out", str(tmp_path / "c.onnx"), "--max-det", "40"]) == 0
    assert (tmp_path / "c.json").is_file()


def test_cli_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert cli([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert cli([str(junk), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a readable vap checkpoint" in capsys.readouterr().err
    assert cli([str(junk), "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err


def test_bench_onnx_reports_each_batch(exported):
    from vap_video.engines.export import bench_onnx

    rows = bench_onnx(exported, batches=(1, 2), runs=2, warmup=1)
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 and r["p90_ms"] >= r["median_ms"] for r in rows)


def test_uint8_input_export_normalises_inside_the_graph(exported, tmp_path):
    """--uint8-input: same detections from the letterboxed bytes as the float graph from bytes / 255,
    and the ONNX Runtime backend and the batch assembler switch to uint8 by themselves."""
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.preprocess import BatchPreprocessor

    u8_path = export_model(seeded_model(0), tmp_path / "u8.onnx", 64, NAMES, max_det=40, uint8_input=True)
    inp = onnx.load(str(u8_path)).graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert read_sidecar(u8_path)["input_dtype"] == "uint8"
    img = np.random.default_rng(5).integers(0, 256, (48, 80, 3), np.uint8)
    f32, _ = BatchPreprocessor((64, 64))([img])
    u8, _ = BatchPreprocessor((64, 64), dtype=np.uint8)([img])
    np.testing.assert_allclose(run_ort(u8_path, u8), run_ort(exported, f32), rtol=1e-4, atol=1e-4)
    be = load_backend(u8_path)
    assert be.info.input_dtype == "uint8" and load_backend(exported).info.input_dtype == "float32"
    np.testing.assert_allclose(be.infer(u8), run_ort(exported, f32), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="takes uint8 images, got float32"):
        be.infer(f32)
