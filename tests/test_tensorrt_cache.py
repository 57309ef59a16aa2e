"""Engine cache without TensorRT: keys, layout, sidecar checks, rebuild decisions, resolve_engine."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vap_video.engines.contract import ModelContractError
from vap_video.engines.tensorrt.cache import (
    BuildOptions,
    TrtEnvironment,
    cache_key,
    check_sidecar,
    decide,
    default_cache_dir,
    engine_path,
    options_from_sidecar,
    parse_batch,
    parse_hw,
    rebuild_command,
    sidecar_metadata,
    timing_cache_path,
)
from vap_video.engines.tensorrt.plan_file import read_sidecar_raw, sidecar_path, write_sidecar
from vap_video.engines.tensorrt.resolve import resolve_engine
from tests.onnx_models import constant_detector

ENV = TrtEnvironment("10.8.0.43", "8.9", "NVIDIA L4")
ROWS = np.array([[1, 2, 30, 40, 0.9, 0]], dtype=np.float32)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return constant_detector(tmp_path / "det.onnx", ROWS, ["person", "car"], imgsz=64)


def fake_build(calls: list):
    """A stand-in for the TensorRT build: writes plan bytes and a real sidecar, records the call."""
    def build(src: Path, out: Path, opts: BuildOptions) -> Path:
        calls.append((src, out, opts))
        blob = b"PLAN" + src.read_bytes()[:64]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        write_sidecar(out, sidecar_metadata(
            {}, names=["person", "car"], imgsz=(64, 64), stride=32, max_det=1, dynamic_hw=False, source_model=src,
            source_sha256=sha, env=ENV, options=opts, engine_sha256=hashlib.sha256(blob).hexdigest(),
            engine_bytes=len(blob), key=cache_key(sha, ENV, opts), input_name="images", output_name="output0",
            built_precision=opts.precision))
        return out
    return build


def test_parse_batch_and_hw():
    assert parse_batch("1,8,32") == (1, 8, 32)
    assert parse_batch("4") == (4, 4, 4)
    for bad in ("0,1,2", "8,4,16", "1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(ValueError, match="batch profile"):
            parse_batch(bad)
    assert parse_hw("320x320,384x640,640x640") == ((320, 320), (384, 640), (640, 640))
    assert parse_hw("640") == ((640, 640),) * 3
    for bad in ("640x320,320x320,640x640", "16,32,64", "axb", "320,640"):
        with pytest.raises(ValueError, match="input size"):
            parse_hw(bad)


def test_build_options_validate_names_the_problem():
    BuildOptions().validate()
    with pytest.raises(ValueError, match="precision 'bf16'"):
        BuildOptions(precision="bf16").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--calib"):
        BuildOptions(precision="int8").validate()
    with pytest.raises(ValueError, match="contexts"):
        BuildOptions(contexts=0).validate()
    with pytest.raises(ValueError, match="at least one batch profile"):
        BuildOptions(batch_profiles=()).validate()


def test_cache_key_changes_with_everything_that_changes_the_plan():
    base = BuildOptions(precision="fp16", batch_profiles=((1, 8, 16),))
    k = cache_key("a" * 64, ENV, base)
    assert len(k) == 64 and k == cache_key("a" * 64, ENV, base)
    variants = [
        cache_key("b" * 64, ENV, base),
        cache_key("a" * 64, TrtEnvironment("10.9.0.34", "8.9"), base),
        cache_key("a" * 64, TrtEnvironment("10.8.0.43", "9.0"), base),
        cache_key("a" * 64, ENV, BuildOptions(precision="fp32", batch_profiles=((1, 8, 16),))),
        cache_key("a" * 64, ENV, BuildOptions(precision="fp16", batch_profiles=((1, 8, 32),))),
        cache_key("a" * 64, ENV, BuildOptions(precision="fp16", batch_profiles=((1, 8, 16), (32, 32, 32)))),
        cache_key("a" * 64, ENV, BuildOptions(hw_profile=((320, 320), (640, 640), (640, 640)))),
        cache_key("a" * 64, ENV, BuildOptions(contexts=3)),
        cache_key("a" * 64, ENV, BuildOptions(precision="int8", calibration="/data/a")),
    ]
    assert len(set(variants + [k])) == len(variants) + 1
    # Build-time knobs that do not change what the plan accepts or computes are not in the key.
    assert cache_key("a" * 64, ENV, BuildOptions(workspace_gib=8, timing_cache="/x")) == cache_key(
        "a" * 64, ENV, BuildOptions())
    # The device name is informational: two L4s and an L4 reporting another name share plans.
    assert cache_key("a" * 64, TrtEnvironment("10.8.0.43", "8.9", "other"), base) == k


def test_cache_layout_names_are_readable(tmp_path: Path):
    opts = BuildOptions(precision="fp16", batch_profiles=((1, 8, 32), (64, 64, 64)))
    p = engine_path(tmp_path, "models/det.onnx", "0123456789abcdef" * 4, ENV, opts)
    assert p.parent == tmp_path
    assert p.name == "det.fp16.b1-8-32+1.trt10.8.0.43.sm89.0123456789ab.engine"
    assert timing_cache_path(tmp_path, ENV).name == "timing.trt10.8.0.43.sm89.cache"


def test_default_cache_dir_honours_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("VAP_ENGINE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VAP_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "vap" / "engines"


def test_rebuild_command_round_trips_through_sidecar():
    opts = BuildOptions(precision="int8", calibration="data/calib", calib_limit=64,
                        batch_profiles=((1, 4, 8), (16, 16, 16)), hw_profile=((320, 320), (640, 640), (640, 640)),
                        contexts=3)
    cmd = rebuild_command("m.onnx", opts, "/cache")
    assert cmd == ("vap build-engine m.onnx --int8 --calib data/calib --calib-limit 64 --batch 1,4,8 --batch 16,16,16 "
                   "--hw 320x320,640x640,640x640 --contexts 3 --cache-dir /cache")
    meta = sidecar_metadata({}, names=["a"], imgsz=(640, 640), stride=32, max_det=300, dynamic_hw=True,
                            source_model="m.onnx", source_sha256="s", env=ENV, options=opts, engine_sha256="e",
                            engine_bytes=1, key="k", input_name="images", output_name="output0",
                            built_precision="int8")
    back = options_from_sidecar(meta)
    assert back.key_fields() == opts.key_fields()


def test_decide_build_then_use_then_stale(tmp_path: Path, model: Path):
    cache = tmp_path / "cache"
    opts = BuildOptions()
    d = decide(model, opts, cache, ENV)
    assert d.action == "build" and "no cached engine" in d.reason and not d.path.exists()
    fake_build([])(model, d.path, opts)
    d2 = decide(model, opts, cache, ENV)
    assert d2.action == "use" and d2.path == d.path
    # The plan changed behind the sidecar's back: a stale sidecar means rebuild.
    d.path.write_bytes(b"PLAN-truncated")
    d3 = decide(model, opts, cache, ENV)
    assert d3.action == "build" and "replaced or truncated" in d3.reason
    # No sidecar (an interrupted build): rebuild.
    fake_build([])(model, d.path, opts)
    sidecar_path(d.path).unlink()
    assert "no sidecar" in decide(model, opts, cache, ENV).reason
    # Broken sidecar JSON: rebuild, and say so.
    sidecar_path(d.path).write_text("{not json")
    assert "broken" in decide(model, opts, cache, ENV).reason


def test_decide_misses_after_model_changes(tmp_path: Path, model: Path):
    cache = tmp_path / "cache"
    opts = BuildOptions()
    first = decide(model, opts, cache, ENV)
    fake_build([])(model, first.path, opts)
    constant_detector(model, ROWS * 2, ["person", "car"], imgsz=64)  # retrained/re-exported model
    second = decide(model, opts, cache, ENV)
    assert second.action == "build" and second.path != first.path


def test_resolve_engine_refuses_or_builds_by_config(tmp_path: Path, model: Path):
    cache = tmp_path / "cache"
    opts = BuildOptions(batch_profiles=((1, 4, 8),))
    with pytest.raises(ModelContractError) as exc:
        resolve_engine(model, opts, cache, build_missing=False, env=ENV, build=fake_build([]))
    msg = str(exc.value)
    assert f"vap build-engine {model} --fp16 --batch 1,4,8 --cache-dir {cache}" in msg
    assert "model.tensorrt.build_missing: true" in msg
    calls: list = []
    logs: list[str] = []
    path = resolve_engine(model, opts, cache, build_missing=True, env=ENV, build=fake_build(calls), log=logs.append)
    assert len(calls) == 1 and path.is_file() and path.parent == cache
    assert any("building TensorRT engine" in line and "takes minutes" in line for line in logs)
    # Second start: cached, no build.
    again = resolve_engine(model, opts, cache, build_missing=True, env=ENV, build=fake_build(calls), log=logs.append)
    assert again == path and len(calls) == 1


def test_engine_for_another_gpu_or_version_is_a_clear_error(tmp_path: Path, model: Path):
    opts = BuildOptions()
    built = fake_build([])(model, tmp_path / "det.engine", opts)
    for env in (TrtEnvironment("10.9.0.34", "8.9", "NVIDIA L4"), TrtEnvironment("10.8.0.43", "9.0", "NVIDIA H100")):
        with pytest.raises(ModelContractError) as exc:
            resolve_engine(built, opts, tmp_path, env=env)
        msg = str(exc.value)
        assert "built with TensorRT 10.8.0.43 for compute capability 8.9 (NVIDIA L4)" in msg
        assert f"TensorRT {env.tensorrt_version} on compute capability {env.compute_capability}" in msg
        assert "vap build-engine det.onnx --fp16 --batch 1,8,16" in msg
    assert resolve_engine(built, opts, tmp_path, env=ENV) == built


def test_check_sidecar_rejects_incomplete_and_foreign_sidecars(tmp_path: Path):
    engine = tmp_path / "x.engine"
    with pytest.raises(ModelContractError, match="not a vap TensorRT sidecar .missing .*tensorrt_version"):
        check_sidecar({"format": "vap.trt/1", "names": {}}, engine, ENV, None)
    with pytest.raises(ModelContractError, match="different ONNX model"):
        meta = read_sidecar_raw(fake_build([])(constant_detector(tmp_path / "m.onnx", ROWS, ["a", "b"]),
                                               engine, BuildOptions()))
        check_sidecar(meta, engine, ENV, None, source_sha256="f" * 64)


def test_resolve_engine_rejects_missing_and_unknown_files(tmp_path: Path):
    with pytest.raises(ModelContractError, match="does not exist"):
        resolve_engine(tmp_path / "nope.onnx", BuildOptions(), tmp_path, env=ENV)
    odd = tmp_path / "m.pt"
    odd.write_bytes(b"x")
    with pytest.raises(ModelContractError, match="not '.pt'"):
        resolve_engine(odd, BuildOptions(), tmp_path, env=ENV)


def test_import_needs_neither_tensorrt_nor_cuda_nor_torch():
    code = ("import sys, vap_video.engines, vap_video.engines.tensorrt, vap_video.engines.tensorrt.build, "
            "vap_video.engines.tensorrt.runtime, vap_video.engines.tensorrt.cache, vap_video.engines.gpu_preprocess;"
            "print(sorted(m for m in ('tensorrt', 'pycuda', 'cuda', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _fixed_batch(model: Path, batch: int) -> Path:
    import onnx

    m = onnx.load(str(model))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    out = model.with_name(f"b{batch}.onnx")
    onnx.save(m, str(out))
    return out


def test_fixed_batch_model_builds_with_default_profiles(tmp_path: Path, model: Path):
    """An Ultralytics-style batch-1 export with the default profiles [[1, 8, 16]] builds for batch 1."""
    b1 = _fixed_batch(model, 1)
    calls: list = []
    logs: list[str] = []
    path = resolve_engine(b1, BuildOptions(), tmp_path / "c", build_missing=True, env=ENV, build=fake_build(calls),
                          log=logs.append)
    assert calls[0][2].batch_profiles == ((1, 1, 1),) and ".b1-1-1." in path.name
    assert "--batch 1,1,1" in logs[0]
    # The next start finds it (same adapted key), without building again.
    assert resolve_engine(b1, BuildOptions(), tmp_path / "c", build_missing=True, env=ENV,
                          build=fake_build(calls)) == path and len(calls) == 1


def test_bad_options_are_refused_before_announcing_a_build(tmp_path: Path, model: Path):
    b4 = _fixed_batch(model, 4)
    logs: list[str] = []
    calls: list = []
    with pytest.raises(ModelContractError) as exc:
        resolve_engine(b4, BuildOptions(batch_profiles=((1, 4, 8),)), tmp_path / "c", build_missing=True, env=ENV,
                       build=fake_build(calls), log=logs.append)
    assert "fixed batch size of 4" in str(exc.value) and "model.tensorrt.batch_profiles" in str(exc.value)
    assert logs == [] and calls == []   # no "this takes minutes" for a build that cannot start
    with pytest.raises(ModelContractError, match="model.tensorrt.contexts / --contexts"):
        resolve_engine(model, BuildOptions(contexts=0), tmp_path / "c", build_missing=True, env=ENV)


@pytest.mark.parametrize("error", ["failed", "cancelled", "value"])
def test_build_errors_become_model_errors_not_tracebacks(tmp_path: Path, model: Path, error: str):
    from vap_video.engines.tensorrt.build import BuildFailed
    from vap_video.engines.tensorrt.progress import BuildCancelled

    def build(src: Path, out: Path, opts: BuildOptions) -> Path:
        raise {"failed": BuildFailed("TensorRT could not build det.onnx"),
               "cancelled": BuildCancelled("build cancelled; nothing was written"),
               "value": ValueError("something about --hw")}[error]

    with pytest.raises(ModelContractError) as exc:
        resolve_engine(model, BuildOptions(), tmp_path / "c", build_missing=True, env=ENV, build=build,
                       log=lambda s: None)
    msg = str(exc.value)
    assert {"failed": "could not build", "cancelled": "was cancelled", "value": "something about --hw"}[error] in msg
    assert "vap build-engine" in msg or error == "value"


def test_stale_cached_engine_hint_mentions_force(tmp_path: Path, model: Path):
    cache = tmp_path / "c"
    opts = BuildOptions()
    d = decide(model, opts, cache, ENV)
    fake_build([])(model, d.path, opts)
    d.path.write_bytes(b"PLAN-truncated")
    with pytest.raises(ModelContractError, match="replaced or truncated.*--force"):
        resolve_engine(model, opts, cache, build_missing=False, env=ENV)
    # A plain miss needs no --force.
    with pytest.raises(ModelContractError) as exc:
        resolve_engine(model, BuildOptions(precision="fp32"), cache, build_missing=False, env=ENV)
    assert "--force" not in str(exc.value)


def test_broken_sidecar_of_an_engine_path_is_a_model_error(tmp_path: Path, model: Path):
    built = fake_build([])(model, tmp_path / "det.engine", BuildOptions())
    sidecar_path(built).write_text("{broken")
    with pytest.raises(ModelContractError, match="not valid JSON.*rebuild"):
        resolve_engine(built, BuildOptions(), tmp_path, env=ENV)
