"""`vap val MODEL`: deployed engines are scored through the pipeline's backends, and agree with their checkpoint.

The shipped `.onnx` and the `.pt` it was exported from must print the same mAP (the engine path and
the training-time path letterbox, place the ground truth and match boxes the same way); an INT8 copy,
vap's legacy one-to-many layout and real Ultralytics exports run through the same command; every
user error is one line and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from onnx_models import bad_output_model, constant_detector, one_to_many_variant
from vap_video.pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_ONNX = ROOT / "vap_video" / "engines" / "models" / "vap-synth-n.onnx"
SHIPPED_PT = ROOT / "vap_video" / "engines" / "models" / "vap-synth-n.pt"
VENV_PYTHON = Path(os.environ.get("VAP_INTEROP_PYTHON", Path.home() / ".cache/vap-bench/venv/bin/python"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from vap_video.engines.synth import write_yolo_dataset

    return write_yolo_dataset(tmp_path_factory.mktemp("val"), n_train=1, n_val=12, imgsz=320, seed=11)


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory) -> Path:
    """The shipped engine, or (where a checkout lacks it) one exported from the shipped checkpoint."""
    if SHIPPED_ONNX.is_file():
        return SHIPPED_ONNX
    from vap_video.engines.export import export_onnx

    return export_onnx(SHIPPED_PT, tmp_path_factory.mktemp("export") / "vap-synth-n.onnx")


def _val(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"val-{len(list(tmp_path.glob('val-*.json')))}.json"
    assert main(["val", *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_onnx_prints_the_same_map_as_its_checkpoint(data, shipped_onnx, tmp_path, capsys):
    engine = _val(tmp_path, str(shipped_onnx), "--data", str(data), "--coco")
    ckpt = _val(tmp_path, str(SHIPPED_PT), "--data", str(data), "--coco", "--device", "cpu", "--batch", "6")
    out = capsys.readouterr().out
    o2o = ckpt["heads"]["o2o"]
    assert engine["kind"] == "engine" and engine["layout"] == "end2end" and engine["backend"] == "onnxruntime"
    assert 0.2 < engine["map50_95"] < engine["map50"] <= 1  # a trained model on its kind of data
    assert engine["map50"] == pytest.approx(o2o["map50"], abs=1e-3)
    assert engine["map50_95"] == pytest.approx(o2o["map50_95"], abs=1e-3)
    for size in ("small", "medium", "large"):
        assert engine["area_ap"][size] == pytest.approx(o2o["area_ap"][size], abs=2e-3), size
    for name, ap in engine["per_class_ap"].items():
        assert ap == pytest.approx(o2o["per_class_ap"][name], abs=5e-3), name
    assert f"mAP50 {engine['map50']:.4f}" in out and "small" in out and "onnxruntime, end2end, fp32" in out


def test_legacy_one_to_many_layout_runs_through_the_nms_fallback(data, shipped_onnx, tmp_path):
    legacy = one_to_many_variant(shipped_onnx, tmp_path / "legacy.onnx")
    e2e = _val(tmp_path, str(shipped_onnx), "--data", str(data))
    got = _val(tmp_path, str(legacy), "--data", str(data), "--iou", "0.7")
    assert got["layout"] == "one-to-many+nms"
    assert got["map50_95"] == pytest.approx(e2e["map50_95"], abs=0.03)  # same head, NMS instead of top-K


def test_int8_onnx(data, shipped_onnx, tmp_path):
    pytest.importorskip("onnx", reason="quantisation needs the onnx package")
    from vap_video.engines.quantize import quantize_qdq

    int8 = quantize_qdq(shipped_onnx, tmp_path / "m.int8.onnx", data, limit=8)
    got = _val(tmp_path, str(int8), "--data", str(data), "--limit", "8")
    ref = _val(tmp_path, str(shipped_onnx), "--data", str(data), "--limit", "8")
    assert got["images"] == 8
    assert got["map50_95"] > 0.5 * ref["map50_95"] and abs(got["map50_95"] - ref["map50_95"]) < 0.1


def test_user_errors_are_one_line(data, shipped_onnx, tmp_path, capsys):
    def err(*args: str) -> tuple[int, str]:
        code = main(["val", *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        return code, lines[0]

    code, msg = err(str(shipped_onnx), "--data", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml not found" in msg
    code, msg = err(str(shipped_onnx))
    assert code == 2 and "--data is required" in msg
    broken = tmp_path / "broken.yaml"
    broken.write_text("names: [a\n")
    code, msg = err(str(shipped_onnx), "--data", str(broken))
    assert code == 2 and "not valid YAML" in msg
    code, msg = err(str(SHIPPED_PT), "--data", str(data), "--weights", "best")
    assert code == 2 and "--weights must be ema or model" in msg
    code, msg = err(str(shipped_onnx), "--data", str(data), "--imgsz", "640")
    assert code == 2 and "only apply to .pt" in msg
    code, msg = err(str(shipped_onnx), "--data", str(data), "--bogus", "1")
    assert code == 2 and "unknown option" in msg
    code, msg = err(str(tmp_path / "nope.onnx"), "--data", str(data))
    assert code == 3 and "does not exist" in msg
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, msg = err(str(junk), "--data", str(data))
    assert code == 3 and "cannot load" in msg
    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(b"not a checkpoint")
    code, msg = err(str(junk_pt), "--data", str(data))
    assert code == 3 and "not a readable vap checkpoint" in msg
    odd = bad_output_model(tmp_path / "odd.onnx", channels=9, names=["a", "b"])  # fits no layout
    code, msg = err(str(odd), "--data", str(data))
    assert code == 3 and "expected [B, K, 6]" in msg
    two = constant_detector(tmp_path / "two.onnx", np.zeros((3, 6)), ["a", "b"], imgsz=64)
    code, msg = err(str(two), "--data", str(data))
    assert code == 3 and "dataset has 4 classes" in msg and "2" in msg
    code, msg = err(str(data.parent / "images"), "--data", str(data))
    assert code == 3 and "directory" in msg


def test_constant_engine_scores_exactly(tmp_path):
    """An engine that returns the ground truth of a one-image dataset scores 1.0; shifted boxes score less."""
    import cv2

    root = tmp_path / "one"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "val" / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    (root / "labels" / "val" / "a.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val",
                                                    "names": ["a", "b"]}))
    exact = constant_detector(tmp_path / "exact.onnx", [[16, 24, 48, 40, 0.9, 1]], ["a", "b"], imgsz=64)
    assert _val(tmp_path, str(exact), "--data", str(root / "data.yaml"))["map50_95"] == pytest.approx(1.0)
    off = constant_detector(tmp_path / "off.onnx", [[20, 24, 52, 40, 0.9, 1]], ["a", "b"], imgsz=64)  # IoU 0.78
    assert _val(tmp_path, str(off), "--data", str(root / "data.yaml"))["map50_95"] == pytest.approx(0.6)


# ------------------------------------------------------------------------------ Ultralytics exports


def _ultralytics_exports(tmp_path: Path) -> Path:
    if not VENV_PYTHON.exists():
        pytest.skip(f"no Ultralytics venv at {VENV_PYTHON}: tests/run.sh creates it")
    probe = subprocess.run([str(VENV_PYTHON), "-c", "import ultralytics, onnx, onnxslim, onnxruntime"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"the venv at {VENV_PYTHON} cannot import ultralytics/onnx/onnxslim/onnxruntime")
    import cv2

    from vap_video.engines.synth import SceneVideo

    rgb, _ = SceneVideo(7, 320, 320, 10.0, 5, 0.0).frame(4)
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "HF_HUB_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics-config")}
    env.pop("PYTHONPATH", None)
    out = tmp_path / "exports"
    done = subprocess.run([str(VENV_PYTHON), str(ROOT / "tests" / "interop" / "ultralytics_tool.py"), "export",
                           str(out), str(frame), "320", "--variants", "e2e-static,o2m-static,nms-static"],
                          capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL,
                          cwd=tmp_path)  # Ultralytics writes its export next to the cwd first
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return out


@pytest.mark.slow
def test_ultralytics_exports(data, tmp_path):
    """YOLO26n end-to-end, YOLO11n one-to-many and `nms=True` exports (random weights, 80 classes)
    run through `vap val` on a dataset that names 80 classes: each layout is read and scored."""
    exports = _ultralytics_exports(tmp_path)
    spec = yaml.safe_load(data.read_text())
    spec["names"] = [*spec["names"], *(f"c{i}" for i in range(4, 80))]
    spec["nc"] = 80
    data80 = data.parent / "data80.yaml"
    data80.write_text(yaml.safe_dump(spec))
    for name, layout in (("yolo26n-e2e-static-320", "end2end"), ("yolo26n-o2m-static-320", "one-to-many+nms"),
                         ("yolo11n-nms-static-320", "end2end")):
        got = _val(tmp_path, str(exports / f"{name}.onnx"), "--data", str(data80), "--limit", "4")
        assert got["layout"] == layout and got["images"] == 4, name
        assert 0 <= got["map50_95"] <= got["map50"] <= 1 and len(got["per_class_ap"]) == 80, name
    # the 4-class dataset does not fit an 80-class model: one line, exit 3
    proc = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", "val",
                           str(exports / "yolo26n-e2e-static-320.onnx"),
                           "--data", str(data)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "80" in proc.stderr and "4 classes" in proc.stderr


# ------------------------------------------------------------------------------------------ TensorRT


def _fake_trt_plan(tmp_path: Path, onnx_model: Path, monkeypatch) -> tuple[Path, dict]:
    """A TensorRT plan for the fake runtime of test_tensorrt_runtime whose 'kernel' is the ONNX model
    (run by ONNX Runtime on the bytes the backend copied to the fake device), with the sidecar a
    `vap build-engine` writes: what `vap val` must get right is the TensorRT backend's side (sidecar
    metadata, profiles, batch splitting, host <-> device copies), not TensorRT's arithmetic."""
    import hashlib

    import onnxruntime as ort

    import test_tensorrt_runtime as fake
    from vap_video.engines.metadata import read_onnx_metadata
    from vap_video.engines.tensorrt.cache import BuildOptions, sidecar_metadata
    from vap_video.engines.tensorrt.cuda_ops import HostOps
    from vap_video.engines.tensorrt.plan_file import write_sidecar

    meta = read_onnx_metadata(onnx_model)
    names = list(meta["names"].values())
    monkeypatch.setattr(fake, "K", int(meta["max_det"]))
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])

    def kernel(self, profile, shape, addresses):
        x = self.trt.ops.view(addresses["images"], shape, np.float32)
        out = session.run(None, {"images": np.ascontiguousarray(x)})[0]
        self.trt.ops.view(addresses["output0"], out.shape, np.float32)[:] = out

    monkeypatch.setattr(fake.FakeContext, "_kernel", kernel)
    hw = meta["imgsz"]
    profiles = [[[1, 3, *hw], [4, 3, *hw], [5, 3, *hw]]]  # max batch 5: batches of 8 are split
    blob = json.dumps({"fake_plan": True, "profiles": profiles, "dtype": "float32", "hw": hw}).encode()
    plan = tmp_path / "model.engine"
    plan.write_bytes(blob)
    write_sidecar(plan, sidecar_metadata(
        {}, names=names, imgsz=tuple(hw), stride=32, max_det=fake.K, dynamic_hw=False, source_model=str(onnx_model),
        source_sha256=meta.get("source_sha256", "0" * 64), env=fake.ENV,
        options=BuildOptions(batch_profiles=((1, 4, 5),), contexts=1), engine_sha256=hashlib.sha256(blob).hexdigest(),
        engine_bytes=len(blob), key="k" * 64, input_name="images", output_name="output0", built_precision="fp16"))
    ops = HostOps()
    return plan, {"trt_module": fake.FakeTrt(ops), "cuda": ops, "env": fake.ENV, "contexts": 1}


def test_tensorrt_engine_through_the_fake_runtime(data, shipped_onnx, tmp_path, monkeypatch):
    from vap_video.engines.val_cli import val_engine

    plan, options = _fake_trt_plan(tmp_path, shipped_onnx, monkeypatch)
    got, info, backend = val_engine(plan, data, batch=8, coco=True, **options)
    ref, ref_info, _ = val_engine(shipped_onnx, data, batch=8, coco=True)
    assert backend == "tensorrt" and info.names == ref_info.names and info.input_hw == ref_info.input_hw
    assert got.images == ref.images == 12
    assert got.result.map50_95 == pytest.approx(ref.result.map50_95, abs=1e-9)
    assert got.result.area_ap == pytest.approx(ref.result.area_ap, abs=1e-9)
    assert got.result.map50_95 > 0.2


def test_tensorrt_engine_on_a_gpu(data, shipped_onnx, tmp_path):
    """`vap val` of a real fp16 TensorRT engine of the shipped model: within 0.01 mAP50-95 of ONNX Runtime."""
    pytest.importorskip("tensorrt", reason="TensorRT not installed (GPU machines only)")
    from test_tensorrt_runtime import _real_trt_or_skip

    _real_trt_or_skip()
    from vap_video.engines.tensorrt.build import build_engine
    from vap_video.engines.tensorrt.cache import BuildOptions

    plan = build_engine(shipped_onnx, tmp_path / "n.engine",
                        BuildOptions(precision="fp16", batch_profiles=((1, 4, 8),)),
                        cache_dir=tmp_path)  # type: ignore[arg-type]
    got = _val(tmp_path, str(plan), "--data", str(data))
    ref = _val(tmp_path, str(shipped_onnx), "--data", str(data))
    assert got["backend"] == "tensorrt" and abs(got["map50_95"] - ref["map50_95"]) < 0.01
