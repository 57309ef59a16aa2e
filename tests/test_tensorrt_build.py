"""`vap build-engine` without TensorRT: usage and model errors, profiles, progress/cancel, and the build
sequence run against a fake `tensorrt` module (recording every call) so the code path executes here.

The fake encodes our reading of the TensorRT 10/11 Python API documentation; it proves the build code
runs and passes what it means to pass, not that real TensorRT accepts it (that needs a GPU machine:
see the skipped test in test_tensorrt_runtime.py and docs/tensorrt.md).
"""

from __future__ import annotations

import _thread
import json
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from vap_video.engines.contract import ModelContractError
from vap_video.engines.tensorrt import build as B
from vap_video.engines.tensorrt import calibrator as C
from vap_video.engines.tensorrt import profiles as P
from vap_video.engines.tensorrt import progress as G
from vap_video.engines.tensorrt.cache import BuildOptions, TrtEnvironment
from vap_video.engines.tensorrt.cuda_ops import HostOps
from vap_video.engines.tensorrt.plan_file import read_sidecar_raw
from tests.onnx_models import bad_output_model, constant_detector

ROWS = np.array([[1, 2, 30, 40, 0.9, 0]], dtype=np.float32)
ENV = TrtEnvironment("10.8.0.43", "8.9", "NVIDIA L4")


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return constant_detector(tmp_path / "det.onnx", ROWS, ["person", "car"], imgsz=64)


@pytest.fixture()
def dyn_model(tmp_path: Path) -> Path:
    return constant_detector(tmp_path / "dyn.onnx", ROWS, ["person", "car"], imgsz=128, dynamic_hw=True)


def tensorrt_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


# --- profiles ---------------------------------------------------------------------------------------

def test_profile_shapes_fixed_model_repeats_profiles_per_context(model: Path):
    s = P.inspect_onnx(model)
    assert (s.input_name, s.output_name, s.input_shape) == ("images", "output0", [None, 3, 64, 64])
    shapes = P.profile_shapes(s, BuildOptions(batch_profiles=((1, 1, 1), (2, 8, 16)), contexts=2))
    assert shapes == [((1, 3, 64, 64),) * 3,
                      ((2, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64)),
                      ((1, 3, 64, 64),) * 3,
                      ((2, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))]
    with pytest.raises(ValueError, match="fixed input size 64x64: remove model.tensorrt.hw_profile / drop --hw"):
        P.profile_shapes(s, BuildOptions(hw_profile=((32, 32), (64, 64), (64, 64))))


def test_profile_shapes_dynamic_model(dyn_model: Path):
    s = P.inspect_onnx(dyn_model)
    assert P.profile_shapes(s, BuildOptions(batch_profiles=((1, 2, 4),), contexts=1)) == [
        ((1, 3, 128, 128), (2, 3, 128, 128), (4, 3, 128, 128))]
    hw = ((64, 96), (128, 128), (128, 160))
    assert P.profile_shapes(s, BuildOptions(batch_profiles=((1, 2, 4),), contexts=1, hw_profile=hw)) == [
        ((1, 3, 64, 96), (2, 3, 128, 128), (4, 3, 128, 160))]
    with pytest.raises(ValueError, match="not multiples of the model stride 32"):
        P.profile_shapes(s, BuildOptions(hw_profile=((48, 64), (128, 128), (128, 128))))


def test_fixed_batch_model_needs_matching_profile(tmp_path: Path, model: Path):
    import onnx

    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    fixed = tmp_path / "fixed4.onnx"
    onnx.save(m, str(fixed))
    s = P.inspect_onnx(fixed)
    with pytest.raises(ValueError) as exc:
        P.profile_shapes(s, BuildOptions(batch_profiles=((1, 8, 16),)))
    # Names the YAML key (vap run) as well as the CLI flag (vap build-engine).
    assert "fixed batch size of 4" in str(exc.value)
    assert "model.tensorrt.batch_profiles: [[4, 4, 4]]" in str(exc.value) and "--batch 4" in str(exc.value)
    assert P.profile_shapes(s, BuildOptions(batch_profiles=((4, 4, 4),), contexts=1)) == [((4, 3, 64, 64),) * 3]
    # The default profiles follow the model's fixed batch; explicit ones that contradict it are refused.
    assert P.checked_options(fixed, BuildOptions()).batch_profiles == ((4, 4, 4),)
    with pytest.raises(ValueError, match="fixed batch size of 4"):
        P.checked_options(fixed, BuildOptions(batch_profiles=((1, 4, 8),)))


def test_cli_builds_a_fixed_batch_model_with_default_profiles(tmp_path: Path, model: Path, monkeypatch: Any,
                                                              capsys: Any):
    import onnx

    fake_trt(monkeypatch)
    monkeypatch.setattr(B, "detect_environment", lambda: ENV)
    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1   # Ultralytics' default export: batch 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    b1 = tmp_path / "b1.onnx"
    onnx.save(m, str(b1))
    assert B.cli([str(b1), "--cache-dir", str(tmp_path / "c")]) == 0
    meta = read_sidecar_raw(next((tmp_path / "c").glob("*.engine")))
    assert meta["batch_profiles"] == [[1, 1, 1]]
    assert B.cli([str(b1), "--batch", "1,4,8", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "model.tensorrt.batch_profiles" in capsys.readouterr().err


def test_fit_batch_repeats_own_images():
    b = np.arange(3 * 2, dtype=np.float32).reshape(3, 2, 1, 1)
    out = C.fit_batch(b, 8)
    assert out.shape[0] == 8
    np.testing.assert_array_equal(out[3:, 0, 0, 0], b[[0, 1, 2, 0, 1], 0, 0, 0])
    assert C.fit_batch(b, 2).shape[0] == 2 and C.fit_batch(b, 3) is b


# --- progress and Ctrl-C ---------------------------------------------------------------------------

def test_progress_logs_phases_and_cancels():
    lines: list[str] = []
    p = G.BuildProgress(lines.append, interval_s=0.0)
    p.phase_start("Building engine", None, 3)
    p.phase_start("Tactic selection", "Building engine", 100)
    p.phase_start("Layer 17", "Tactic selection", 5)       # depth 2: too detailed to print
    assert p.step_complete("Tactic selection", 0) is True
    assert p.step_complete("Layer 17", 1) is True
    p.phase_finish("Layer 17")
    p.cancel.set()
    assert p.step_complete("Tactic selection", 1) is False  # TensorRT stops at its next step
    p.phase_finish("Tactic selection")
    p.phase_finish("Building engine")
    text = "\n".join(lines)
    assert "Building engine (3 steps)" in text and "  Tactic selection (100 steps)" in text
    assert "Tactic selection: 1/100" in text and "Layer 17" not in text
    assert "Building engine done in" in text


@pytest.fixture
def ctrl_c(monkeypatch: pytest.MonkeyPatch):
    """A Ctrl-C delivered to the main thread after `delay` seconds, whatever the shell did with
    SIGINT: a job started in the background (nohup, `&`, CI) inherits SIGINT ignored, and then
    `_thread.interrupt_main()` does nothing. The test installs Python's own handler for its duration."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda delay: threading.Timer(delay, _thread.interrupt_main).start()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_run_cancellable_ctrl_c_stops_the_build(ctrl_c):
    cancel = threading.Event()
    seen: list[str] = []

    def slow_build() -> Any:
        for _ in range(200):  # a build polling its progress monitor
            if cancel.is_set():
                seen.append("cancelled")
                return None
            time.sleep(0.01)
        return b"plan"

    ctrl_c(0.1)
    with pytest.raises(G.BuildCancelled, match="nothing was written"):
        G.run_cancellable(slow_build, cancel, log=seen.append, poll_s=0.02)
    assert "cancelled" in seen and any("Ctrl-C" in s for s in seen)


def test_run_cancellable_passes_result_and_errors():
    assert G.run_cancellable(lambda: 42, threading.Event()) == 42

    def boom() -> None:
        raise RuntimeError("parser exploded")

    with pytest.raises(RuntimeError, match="parser exploded"):
        G.run_cancellable(boom, threading.Event())


# --- CLI without TensorRT ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, code, text", [
    (["--batch", "8,4,16"], 2, "MIN <= OPT <= MAX"),
    (["--int8"], 2, "--calib"),
    (["--int8", "--calib", "/no/such/dir"], 2, "does not exist"),
    (["--hw", "640x320,320x320,640x640"], 2, "input size profile"),
    (["--contexts", "0"], 2, "contexts 0"),
    (["--hw", "32,64,64"], 2, "fixed input size 64x64"),
])
def test_cli_usage_errors(model: Path, capsys, argv: list[str], code: int, text: str):
    assert B.cli([str(model), *argv]) == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err


def test_cli_bad_arguments_and_files(tmp_path: Path, capsys):
    assert B.cli([]) == 2                                  # argparse: missing MODEL
    assert "usage: vap build-engine" in capsys.readouterr().err
    assert B.cli(["--help"]) == 0
    assert B.cli([str(tmp_path / "m.engine")]) == 2
    assert "not an .onnx model" in capsys.readouterr().err
    assert B.cli([str(tmp_path / "missing.onnx")]) == 3
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \x00\xff")
    assert B.cli([str(junk)]) == 3
    assert "not a readable ONNX model" in capsys.readouterr().err
    no_names = bad_output_model(tmp_path / "raw.onnx", channels=84)
    assert B.cli([str(no_names)]) == 3
    assert "class names" in capsys.readouterr().err


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here; this checks the message without it")
def test_cli_without_tensorrt_says_how_to_install(model: Path, capsys):
    assert B.cli([str(model), "--fp16", "--batch", "1,4,8"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT not installed" in err and "pip install 'vap-video[tensorrt]'" in err and "Traceback" not in err


# --- the build sequence against a fake tensorrt ----------------------------------------------------

class FakeTensorRT(types.ModuleType):
    """Records what build_engine asks of TensorRT; `build_serialized_network` drives the progress
    monitor (and calibrator) the way the documentation describes and returns plan bytes."""

    def __init__(self, version: str = "10.8.0.43", steps: int = 5, step_delay: float = 0.0) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        rec, fake = self.calls, self
        major = int(version.split(".")[0])

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                pass

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class BuilderFlag:
            FP16 = "FP16"
            INT8 = "INT8"

        if major >= 11:
            del BuilderFlag.FP16, BuilderFlag.INT8  # removed in 11: strongly typed only

        class IProgressMonitor:
            def __init__(self) -> None:
                rec.append(("IProgressMonitor.__init__",))

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                rec.append(("IInt8EntropyCalibrator2.__init__",))

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}

            def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return b"TIMING" + self.data[:0] + b"-v1"

        class Config:
            def __init__(self) -> None:
                self.flags: set[str] = set()
                self.profiles: list[Profile] = []
                self.int8_calibrator = None
                self.progress_monitor = None
                self.timing = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.append(("workspace", pool, size))

            def set_flag(self, flag: str) -> None:
                self.flags.add(flag)

            def add_optimization_profile(self, p: Profile) -> int:
                self.profiles.append(p)
                return len(self.profiles) - 1

            def set_calibration_profile(self, p: Profile) -> None:
                rec.append(("calibration_profile", p.shapes))

            def create_timing_cache(self, data: bytes) -> TimingCache:
                rec.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                self.timing = cache
                return True

            def get_timing_cache(self) -> TimingCache:
                return self.timing

        class Input:
            name = "images"

        class Network:
            num_inputs = 1

            def get_input(self, i: int) -> Input:
                return Input()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Network, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                rec.append(("parse_from_file", path))
                return fake.parse_ok

            def get_error(self, i: int) -> str:
                return "In node 3 (TopK): UNSUPPORTED_NODE"

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, *flags: int) -> Network:
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self) -> Config:
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                mon = config.progress_monitor
                mon.phase_start("Building engine", None, steps)
                for i in range(steps):
                    time.sleep(step_delay)
                    if not mon.step_complete("Building engine", i):
                        mon.phase_finish("Building engine")
                        return None
                mon.phase_finish("Building engine")
                cal = config.int8_calibrator
                if cal is not None:
                    assert cal.read_calibration_cache() is None
                    n = 0
                    while (ptrs := cal.get_batch(["images"])) is not None:
                        fake.calib_inputs.append(fake.ops.view(ptrs[0], (cal.get_batch_size(), 3, 64, 64),
                                                               np.float32).copy())
                        n += 1
                    cal.write_calibration_cache(b"CALIB")
                plan = json.dumps({"fake_plan": True, "flags": sorted(config.flags),
                                   "profiles": [p.shapes["images"] for p in config.profiles]}).encode()
                return plan

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, blob: bytes) -> Any:
                return object() if blob.startswith(b'{"fake_plan"') else None

        for name, value in list(locals().items()):
            if isinstance(value, type):
                setattr(self, name, value)
        self.parse_ok = True
        self.config: Any = None
        self.ops = HostOps()
        self.calib_inputs: list[np.ndarray] = []


def fake_trt(monkeypatch, **kw: Any) -> FakeTensorRT:
    fake = FakeTensorRT(**kw)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr("vap_video.engines.tensorrt.cuda_ops.cuda_ops", lambda *a, **k: fake.ops)
    return fake


def test_build_fp16_writes_plan_sidecar_and_timing_cache(tmp_path: Path, model: Path, monkeypatch):
    fake = fake_trt(monkeypatch)
    logs: list[str] = []
    opts = BuildOptions(precision="fp16", batch_profiles=((1, 4, 8),), contexts=2, workspace_gib=2)
    out = B.build_engine(model, tmp_path / "cache" / "det.engine", opts, env=ENV, cache_dir=tmp_path / "cache",
                         log=logs.append)
    plan = json.loads(out.read_bytes())
    assert plan["flags"] == ["FP16"]
    assert plan["profiles"] == [[[1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]]] * 2
    assert ("create_network", (0,)) in fake.calls
    assert ("workspace", "WORKSPACE", 2 << 30) in fake.calls
    assert ("create_timing_cache", b"") in fake.calls
    timing = tmp_path / "cache" / "timing.trt10.8.0.43.sm89.cache"
    assert timing.read_bytes() == b"TIMING-v1"
    meta = read_sidecar_raw(out)
    assert meta["names"] == {"0": "person", "1": "car"} and meta["imgsz"] == [64, 64]
    assert meta["tensorrt_version"] == "10.8.0.43" and meta["compute_capability"] == "8.9"
    assert meta["batch_profiles"] == [[1, 4, 8]] and meta["profile_copies"] == 2 and meta["precision"] == "fp16"
    assert meta["source_model"] == "det.onnx" and meta["max_det"] == 1 and meta["dynamic_hw"] is False
    assert any("Building engine (5 steps)" in line for line in logs)
    # The second build reads the timing cache the first one wrote.
    B.build_engine(model, tmp_path / "cache" / "det2.engine", opts, env=ENV, cache_dir=tmp_path / "cache",
                   log=logs.append)
    assert ("create_timing_cache", b"TIMING-v1") in fake.calls


def test_build_int8_trt10_feeds_the_calibrator_letterboxed_images(tmp_path: Path, model: Path, monkeypatch):
    fake = fake_trt(monkeypatch)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(5):
        cv2.imwrite(str(calib / f"{i}.png"), np.full((32, 64, 3), 40 * i, dtype=np.uint8))
    opts = BuildOptions(precision="int8", calibration=str(calib), calib_batch=2, batch_profiles=((1, 2, 4),),
                        contexts=1)
    out = B.build_engine(model, tmp_path / "det.engine", opts, env=ENV, log=lambda s: None)
    assert json.loads(out.read_bytes())["flags"] == ["FP16", "INT8"]
    assert ("calibration_profile", {"images": ((2, 3, 64, 64),) * 3}) in fake.calls
    assert len(fake.calib_inputs) == 3  # 5 images in batches of 2; the last one repeats its image
    first = fake.calib_inputs[0][0]
    # Letterboxed like the runtime: 32x64 -> rows 16..48 hold the image, the rest is pad 114.
    np.testing.assert_allclose(first[:, :16], 114 / 255, atol=1e-6)
    np.testing.assert_allclose(first[:, 16:48], 0.0, atol=1e-6)
    np.testing.assert_array_equal(fake.calib_inputs[2][1], fake.calib_inputs[2][0])
    assert list(tmp_path.glob("det.*.calib"))[0].read_bytes() == b"CALIB"
    # The calibrator's device buffer, pinned batch and stream are freed, and its CUDA context let go.
    assert fake.ops.memory == {} and fake.ops.pinned_live == {} and fake.ops.streams == {}
    assert fake.ops.released


def test_build_int8_trt11_builds_a_qdq_model_and_says_so(tmp_path: Path, model: Path, monkeypatch):
    fake = fake_trt(monkeypatch, version="11.3.0.5")
    made: list[tuple] = []

    def fake_qdq(src: Path, out: Path, calibration: str, limit: int = 256, target: str = "cpu", **kw: Any) -> Path:
        made.append((Path(src), Path(out), calibration, limit, target))
        Path(out).write_bytes(Path(src).read_bytes())
        return Path(out)

    monkeypatch.setattr("vap_video.engines.quantize.quantize_qdq", fake_qdq)
    logs: list[str] = []
    opts = BuildOptions(precision="int8", calibration=str(tmp_path), calib_limit=32, contexts=1)
    out = B.build_engine(model, tmp_path / "det.engine", opts, env=TrtEnvironment("11.3.0.5", "9.0"),
                         log=logs.append)
    assert made == [(model, tmp_path / "det.qdq.onnx", str(tmp_path), 32, "tensorrt")]
    assert ("parse_from_file", str(tmp_path / "det.qdq.onnx")) in fake.calls
    assert ("create_network", ()) in fake.calls           # strongly typed: no flags, no calibrator
    assert json.loads(out.read_bytes())["flags"] == []
    assert any("strongly typed networks only" in line and "Q/DQ" in line for line in logs)
    assert "Q/DQ" in read_sidecar_raw(out)["notes"][0]


def test_build_fp16_on_trt11_without_modelopt_is_a_clear_error(tmp_path: Path, model: Path, monkeypatch):
    fake_trt(monkeypatch, version="11.3.0.5")
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(ModelContractError, match="no FP16 builder flag.*nvidia-modelopt"):
        B.build_engine(model, tmp_path / "det.engine", BuildOptions(precision="fp16"),
                       env=TrtEnvironment("11.3.0.5", "9.0"), log=lambda s: None)
    assert not (tmp_path / "det.engine").exists()


def test_parser_errors_are_reported(tmp_path: Path, model: Path, monkeypatch):
    fake = fake_trt(monkeypatch)
    fake.parse_ok = False
    fake.OnnxParser.num_errors = 1
    with pytest.raises(ModelContractError, match="parser refused the model:\n  In node 3"):
        B.build_engine(model, tmp_path / "det.engine", BuildOptions(), env=ENV, log=lambda s: None)


def test_cancelled_build_writes_nothing(tmp_path: Path, model: Path, monkeypatch, ctrl_c):
    fake_trt(monkeypatch, steps=200, step_delay=0.01)
    ctrl_c(0.15)
    with pytest.raises(G.BuildCancelled):
        B.build_engine(model, tmp_path / "det.engine", BuildOptions(), env=ENV, log=lambda s: None)
    assert not (tmp_path / "det.engine").exists() and not (tmp_path / "det.engine.json").exists()
    assert not list(tmp_path.glob("*.part"))


def test_cli_builds_into_the_cache_once(tmp_path: Path, model: Path, monkeypatch, capsys):
    fake_trt(monkeypatch)
    monkeypatch.setattr(B, "detect_environment", lambda: ENV)
    cache = tmp_path / "cache"
    assert B.cli([str(model), "--batch", "1,2,4", "--cache-dir", str(cache)]) == 0
    engines = list(cache.glob("*.engine"))
    assert len(engines) == 1 and engines[0].name.startswith("det.fp16.b1-2-4.trt10.8.0.43.sm89.")
    capsys.readouterr()
    assert B.cli([str(model), "--batch", "1,2,4", "--cache-dir", str(cache)]) == 0
    assert "already built" in capsys.readouterr().out
    out = tmp_path / "explicit.engine"
    assert B.cli([str(model), "--fp32", "--out", str(out)]) == 0
    assert json.loads(out.read_bytes())["flags"] == [] and read_sidecar_raw(out)["precision"] == "fp32"


def test_cli_expands_tilde_in_paths(tmp_path: Path, model: Path, monkeypatch, capsys):
    fake_trt(monkeypatch)
    monkeypatch.setattr(B, "detect_environment", lambda: ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert B.cli(["~/det.onnx", "--cache-dir", "~/cache", "--timing-cache", "~/t.cache"]) == 0
    assert len(list((tmp_path / "cache").glob("*.engine"))) == 1 and (tmp_path / "t.cache").is_file()
    assert B.cli(["~/det.onnx", "--out", "~/out/x.engine"]) == 0
    assert (tmp_path / "out" / "x.engine").is_file() and not Path("~").exists()
    args = B.parse_args(["m.onnx", "--int8", "--calib", "~/calib"])
    assert B.options_from_args(args).calibration == str(tmp_path / "calib")


def test_cli_rebuilds_a_damaged_cached_engine(tmp_path: Path, model: Path, monkeypatch, capsys):
    """'already built' only when the cached plan really is usable (decide), not when a sidecar exists."""
    fake_trt(monkeypatch)
    monkeypatch.setattr(B, "detect_environment", lambda: ENV)
    cache = tmp_path / "cache"
    assert B.cli([str(model), "--cache-dir", str(cache)]) == 0
    engine = next(cache.glob("*.engine"))
    good = engine.read_bytes()
    engine.write_bytes(b"truncated")                   # plan damaged behind the sidecar's back
    capsys.readouterr()
    assert B.cli([str(model), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "already built" not in out and "replaced or truncated" in out and engine.read_bytes() == good
    (cache / (engine.name + ".json")).write_text("{broken")   # broken sidecar JSON: rebuild, no traceback
    assert B.cli([str(model), "--cache-dir", str(cache)]) == 0
    assert "sidecar is broken" in capsys.readouterr().out and read_sidecar_raw(engine)["format"] == "vap.trt/1"
    assert B.cli([str(model), "--cache-dir", str(cache), "--force"]) == 0
    assert "rebuilding" in capsys.readouterr().out


def test_build_legacy_one_to_many_model_records_its_layout(tmp_path: Path, monkeypatch):
    import onnx

    raw = bad_output_model(tmp_path / "v8.onnx", channels=6, anchors=84, imgsz=64)
    m = onnx.load(str(raw))
    entry = m.metadata_props.add()
    entry.key, entry.value = "names", "{0: 'person', 1: 'car'}"   # Ultralytics writes a Python literal
    onnx.save(m, str(raw))
    fake_trt(monkeypatch)
    out = B.build_engine(raw, tmp_path / "v8.engine", BuildOptions(contexts=1), env=ENV, log=lambda s: None)
    meta = read_sidecar_raw(out)
    assert meta["end2end"] is False and meta["names"] == {"0": "person", "1": "car"}
