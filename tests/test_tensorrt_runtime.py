"""TrtBackend without a GPU: a fake TensorRT module with the TensorRT 10 runtime API surface the backend
uses, over `HostOps` (NumPy arrays standing in for device memory).

What this can show: buffers are sized and addressed right, the input really travels host -> 'device'
-> engine -> host, profiles are chosen by batch and switched per context, contexts are never shared by
two batches at once, batches are split and padded correctly, metadata comes from the sidecar or an
Ultralytics header, and mismatches are clear errors. What it cannot show: that real TensorRT behaves
like the fake; the real-GPU test at the bottom skips here with its reason.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vap_video.engines.contract import ModelContractError
from vap_video.engines.tensorrt.cache import BuildOptions, TrtEnvironment, sidecar_metadata
from vap_video.engines.tensorrt.cuda_ops import HostOps
from vap_video.engines.tensorrt.plan_file import with_header, write_sidecar
from vap_video.engines.tensorrt.runtime import ProfileRange, TrtBackend, group_profiles, select_profile

ENV = TrtEnvironment("10.8.0.43", "8.9", "NVIDIA L4")
K = 5


class FakeTrt:
    """The slice of the `tensorrt` module TrtBackend touches; plans are JSON describing IO and profiles."""

    __version__ = "10.8.0.43"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    def __init__(self, ops: HostOps) -> None:
        self.ops = ops
        self.in_use: dict[int, int] = {}  # profile index -> context id currently executing on it
        self.lock = threading.Lock()
        self.max_concurrent = 0
        self.running = 0
        fake = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, blob: bytes) -> Any:
                if not blob.startswith(b'{"fake_plan"'):
                    return None
                return FakeEngine(fake, json.loads(blob))

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: str) -> Any:
        return {"float32": np.float32, "float16": np.float16}[dtype]


class FakeEngine:
    def __init__(self, trt: FakeTrt, spec: dict[str, Any]) -> None:
        self.trt, self.spec = trt, spec
        self.num_io_tensors = 2
        self.num_optimization_profiles = len(spec["profiles"])
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return ["images", "output0"][i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "images" else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return self.spec.get("dtype", "float32")

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "images":
            hw = self.spec.get("hw") or [-1, -1]
            return (-1, 3, *hw)
        if "legacy_classes" in self.spec:  # one-to-many head [B, 4+nc, N], N = anchors at this H/W
            return (-1, 4 + self.spec["legacy_classes"], -1)
        return (-1, K, 6)

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        assert name == "images"
        return [tuple(s) for s in self.spec["profiles"][index]]

    def create_execution_context(self) -> FakeContext:
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.trt = engine, engine.trt
        self.profile = 0
        self.addresses: dict[str, int] = {}
        self.shape: tuple[int, ...] | None = None
        self.profile_switches = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        assert 0 <= index < self.engine.num_optimization_profiles
        self.profile = index
        self.profile_switches += 1
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert self.shape is not None
        if name == "images":
            return self.shape
        if "legacy_classes" in self.engine.spec:
            h, w = self.shape[2:]
            return (self.shape[0], 4 + self.engine.spec["legacy_classes"], (h // 8) * (w // 8))
        return (self.shape[0], K, 6)

    def execute_async_v3(self, stream: int) -> bool:
        """Queue the 'kernel' on `stream`, as TensorRT does: it runs when the stream is synchronized,
        with the shapes, profile and addresses of the moment it was queued."""
        profile, shape, addresses = self.profile, self.shape, dict(self.addresses)
        assert shape is not None
        self.trt.ops.launch(stream, lambda: self._kernel(profile, shape, addresses))
        return True

    def _kernel(self, profile: int, shape: tuple[int, ...], addresses: dict[str, int]) -> None:
        trt = self.trt
        with trt.lock:
            owner = trt.in_use.get(profile)
            assert owner is None, f"profile {profile} used by two contexts at once"
            trt.in_use[profile] = id(self)
            trt.running += 1
            trt.max_concurrent = max(trt.max_concurrent, trt.running)
        try:
            time.sleep(0.01)  # long enough for concurrent callers to overlap
            dtype = FakeTrt.nptype(self.engine.get_tensor_dtype("images"))
            x = trt.ops.view(addresses["images"], shape, dtype).astype(np.float32)
            b = shape[0]
            if "legacy_classes" in self.engine.spec:
                h, w = shape[2:]
                out_shape = (b, 4 + self.engine.spec["legacy_classes"], (h // 8) * (w // 8))
                raw = np.zeros(out_shape, dtype=np.float32)
                raw[:, :4, :] = [[10], [20], [8], [8]]       # every anchor: the same box, cx cy w h
                raw[:, 4 + 1, :] = 0.01                        # weak class-1 scores everywhere
                raw[:, 4 + 1, 3] = x.mean(axis=(1, 2, 3))      # anchor 3: score = image mean
                trt.ops.view(addresses["output0"], out_shape, dtype)[:] = raw
                return
            out = np.zeros((b, K, 6), dtype=np.float32)
            out[:, :, 0] = np.arange(K)                       # x1: row index
            out[:, :, 1] = profile                            # y1: which profile ran it
            out[:, :, 2] = shape[2]                           # x2: input height seen by the engine
            out[:, :, 3] = shape[3]                           # y2: input width
            out[:, :, 4] = x.mean(axis=(1, 2, 3))[:, None]    # score: this image's mean
            out[:, :, 5] = np.arange(b)[:, None]              # class: position in the batch
            trt.ops.view(addresses["output0"], (b, K, 6), dtype)[:] = out
        finally:
            with trt.lock:
                trt.in_use.pop(profile, None)
                trt.running -= 1


def write_engine(path: Path, batch_profiles: tuple[tuple[int, int, int], ...], contexts: int,
                 hw: tuple[tuple[int, int], ...] = ((64, 64),) * 3, env: TrtEnvironment = ENV,
                 dtype: str = "float32", source_sha256: str = "0" * 64, key: str = "k" * 64,
                 **spec: Any) -> Path:
    profiles = [[[b[0], 3, *hw[0]], [b[1], 3, *hw[1]], [b[2], 3, *hw[2]]]
                for _ in range(contexts) for b in batch_profiles]
    fixed = hw[0] == hw[2]
    blob = json.dumps({"fake_plan": True, "profiles": profiles, "dtype": dtype,
                       "hw": list(hw[0]) if fixed else None, **spec}).encode()
    path.write_bytes(blob)
    opts = BuildOptions(batch_profiles=batch_profiles, contexts=contexts,
                        hw_profile=None if fixed else hw)  # type: ignore[arg-type]
    write_sidecar(path, sidecar_metadata(
        {}, names=["person", "car"], imgsz=hw[2], stride=32, max_det=K, dynamic_hw=not fixed,
        source_model="det.onnx", source_sha256=source_sha256, env=env, options=opts,
        engine_sha256=hashlib.sha256(blob).hexdigest(), engine_bytes=len(blob), key=key,
        input_name="images", output_name="output0", built_precision="fp16",
        end2end="legacy_classes" not in spec))
    return path


def backend(path: Path, contexts: int = 2, env: TrtEnvironment = ENV, **kw: Any) -> tuple[TrtBackend, FakeTrt]:
    ops = HostOps()
    trt = FakeTrt(ops)
    return TrtBackend(path, contexts=contexts, cuda=ops, trt_module=trt, env=env, **kw), trt


def test_select_profile_prefers_the_tightest_range():
    r = [ProfileRange(0, (1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64)),
         ProfileRange(1, (1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64)),
         ProfileRange(2, (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))]
    assert select_profile(r, (1, 3, 64, 64)).index == 1
    assert select_profile(r, (5, 3, 64, 64)).index == 2
    assert select_profile(r, (9, 3, 64, 64)).index == 0
    assert select_profile(r, (33, 3, 64, 64)) is None
    assert select_profile(r, (4, 3, 96, 64)) is None


def test_group_profiles_gives_each_context_its_own_copy():
    r = [ProfileRange(i, (1,), (1,), (1,)) for i in range(6)]
    assert [[p.index for p in g] for g in group_profiles(r, copies=3, contexts=2)] == [[0, 1], [2, 3]]
    assert [[p.index for p in g] for g in group_profiles(r, copies=3, contexts=8)] == [[0, 1], [2, 3], [4, 5]]
    # Unknown or inconsistent copy count (e.g. an Ultralytics plan): one context owning everything.
    assert [[p.index for p in g] for g in group_profiles(r, copies=4, contexts=2)] == [[0, 1, 2, 3, 4, 5]]


def test_data_round_trip_and_metadata(tmp_path: Path):
    be, trt = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1))
    assert be.info.names == ["person", "car"] and be.info.input_hw == (64, 64) and be.info.max_det == K
    assert be.info.max_batch is None and be.info.dynamic_batch and not be.info.dynamic_hw
    assert be.info.extra["metadata_from"] == "sidecar"
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 64, 64), dtype=np.float32)
    out = be.infer(x)
    assert out.shape == (3, K, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 4], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 0, 5], [0, 1, 2])
    np.testing.assert_array_equal(out[0, :, 0], np.arange(K))
    # The result is a copy: the next batch reuses the pinned buffer without changing it.
    before = out.copy()
    be.infer(rng.random((3, 3, 64, 64), dtype=np.float32))
    np.testing.assert_array_equal(out, before)
    be.close()
    be.close()  # idempotent
    ops = be.ops
    assert ops.memory == {} and ops.streams == {} and ops.pinned_live == {}  # type: ignore[attr-defined]


def test_host_ops_run_copies_and_kernels_only_at_synchronize():
    ops = HostOps()
    stream = ops.new_stream()
    ptr = ops.malloc(16)
    src = np.arange(4, dtype=np.float32)
    ops.htod_async(ptr, src, stream)
    assert not ops.view(ptr, (4,), np.float32).any()          # queued, not done
    src[:] = 7                                                 # the copy reads the source when it runs
    ran: list[int] = []
    ops.launch(ops.stream_handle(stream), lambda: ran.append(1))
    dst = np.zeros(4, np.float32)
    ops.dtoh_async(dst, ptr, stream)
    assert ran == [] and not dst.any()
    ops.synchronize(stream)
    assert ran == [1] and dst.tolist() == [7, 7, 7, 7]
    ops.destroy_stream(stream)
    with pytest.raises(RuntimeError, match="does not exist"):
        ops.synchronize(stream)


class _NoSyncOps(HostOps):
    """A runtime that forgot to wait for its stream."""

    def synchronize(self, stream: Any) -> None:
        self.syncs += 1


def test_a_missing_stream_synchronize_is_caught(tmp_path: Path):
    """The fake only produces results at synchronize(), as a GPU would: without the wait, the
    backend hands back a stale pinned buffer, and the round-trip checks above would fail."""
    path = write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1)
    ops = _NoSyncOps()
    be = TrtBackend(path, contexts=1, cuda=ops, trt_module=FakeTrt(ops), env=ENV)
    x = np.random.default_rng(7).random((2, 3, 64, 64), dtype=np.float32)
    out = be.infer_raw(x)
    assert not np.allclose(out[:, 0, 4], x.mean(axis=(1, 2, 3)))
    good, _ = backend(path, contexts=1)
    np.testing.assert_allclose(good.infer_raw(x)[:, 0, 4], x.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_failed_start_releases_what_it_allocated(tmp_path: Path, monkeypatch: Any):
    """A failure after CUDA was set up (here: no second execution context) frees the first slot's
    buffers, pinned memory and stream, and releases the CUDA binding the backend opened."""
    path = write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=2)
    ops = HostOps()
    monkeypatch.setattr("vap_video.engines.tensorrt.runtime.cuda_ops", lambda kind, device: ops)
    trt = FakeTrt(ops)
    real = FakeEngine.create_execution_context
    made: list[Any] = []

    def second_fails(self: FakeEngine) -> Any:
        made.append(1)
        return real(self) if len(made) == 1 else None

    monkeypatch.setattr(FakeEngine, "create_execution_context", second_fails)
    with pytest.raises(ModelContractError, match="could not create an execution context"):
        TrtBackend(path, contexts=2, cuda="auto", trt_module=trt, env=ENV)
    assert len(made) == 2
    assert ops.memory == {} and ops.streams == {} and ops.pinned_live == {} and ops.released
    # Failing before any slot (a plan that does not deserialize) releases the binding too.
    ops2 = HostOps()
    monkeypatch.setattr("vap_video.engines.tensorrt.runtime.cuda_ops", lambda kind, device: ops2)
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"\x00not a plan" * 8)
    with pytest.raises(ModelContractError, match="cannot deserialize"):
        TrtBackend(junk, cuda="auto", trt_module=FakeTrt(ops2), env=ENV, class_names=["a"])
    assert ops2.released


def test_batches_are_split_above_and_padded_below_the_profiles(tmp_path: Path):
    be, trt = backend(write_engine(tmp_path / "det.engine", ((2, 4, 4),), contexts=1))
    x = np.random.default_rng(1).random((11, 3, 64, 64), dtype=np.float32)
    out = be.infer(x)
    assert out.shape == (11, K, 6)
    np.testing.assert_allclose(out[:, 0, 4], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    # Split into engine calls of 4, 4 and 3 (3 fits the 2..4 range): positions restart per call.
    np.testing.assert_array_equal(out[:, 0, 5], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])
    one = be.infer(x[:1])
    assert one.shape == (1, K, 6)
    np.testing.assert_allclose(one[0, 0, 4], x[0].mean(), rtol=1e-6)


def test_batches_between_profiles_are_padded_to_the_next_one(tmp_path: Path):
    """--batch 1 --batch 4,8,8: batches of 2 and 3 fit no profile; they run padded to 4."""
    be, trt = backend(write_engine(tmp_path / "det.engine", ((1, 1, 1), (4, 8, 8)), contexts=1), contexts=1)
    assert [be.padded_batch(n) for n in range(1, 9)] == [1, 4, 4, 4, 5, 6, 7, 8]
    x = np.random.default_rng(5).random((9, 3, 64, 64), dtype=np.float32)
    for n in (1, 2, 3, 4, 9):
        out = be.infer(x[:n])
        assert out.shape == (n, K, 6)
        np.testing.assert_allclose(out[:, 0, 4], x[:n].mean(axis=(1, 2, 3)), rtol=1e-6)
    assert be.infer(x[:3])[0, 0, 1] == 1     # ran on the 4..8 profile


def test_profile_switches_per_batch_size(tmp_path: Path):
    be, trt = backend(write_engine(tmp_path / "det.engine", ((1, 1, 1), (2, 8, 16)), contexts=1))
    x = np.zeros((16, 3, 64, 64), dtype=np.float32)
    ctx = trt_contexts(be)[0]
    at_start = ctx.profile_switches           # sizing the buffers visits every owned profile once
    assert at_start == 2
    assert be.infer(x[:1])[0, 0, 1] == 0      # batch 1 -> the batch-1 profile
    assert be.infer(x[:5])[0, 0, 1] == 1      # batch 5 -> the 2..16 profile
    assert be.infer(x[:1])[0, 0, 1] == 0
    assert ctx.profile_switches == at_start + 3
    be.infer(x[:1])
    assert ctx.profile_switches == at_start + 3   # same profile again: no switch


def trt_contexts(be: TrtBackend) -> list[FakeContext]:
    return [slot.context for slot in be._slots]


def test_concurrent_batches_use_separate_contexts_and_profiles(tmp_path: Path):
    be, trt = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=3), contexts=3)
    assert len(be._slots) == 3
    assert [[p.index for p in s.profiles] for s in be._slots] == [[0], [1], [2]]
    rng = np.random.default_rng(2)
    inputs = [rng.random((4, 3, 64, 64), dtype=np.float32) for _ in range(12)]
    results: list[Any] = [None] * len(inputs)

    def worker(i: int) -> None:
        results[i] = be.infer(inputs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for x, out in zip(inputs, results):
        np.testing.assert_allclose(out[:, 0, 4], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert trt.max_concurrent >= 2  # batches really overlapped (fake execute sleeps 10 ms)
    assert trt.max_concurrent <= 3


def test_submit_keeps_batches_in_flight_from_one_caller(tmp_path: Path):
    be, trt = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=2), contexts=2)
    assert be.contexts == 2
    rng = np.random.default_rng(4)
    inputs = [rng.random((4, 3, 64, 64), dtype=np.float32) for _ in range(6)]
    futures = [be.submit(x) for x in inputs]
    for x, f in zip(inputs, futures):
        np.testing.assert_allclose(f.result(5)[:, 0, 4], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert trt.max_concurrent == 2
    be.close()
    with pytest.raises(RuntimeError, match="closed"):
        be.submit(inputs[0])


def test_close_waits_for_running_batches(tmp_path: Path):
    """close() from another thread while a batch runs: the batch finishes on live buffers, close
    frees them afterwards, and a caller arriving later gets a clear 'closed' error."""
    be, trt = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1), contexts=1)
    x = np.random.default_rng(6).random((4, 3, 64, 64), dtype=np.float32)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(be.infer(x))
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    while trt.running == 0 and t.is_alive():   # wait until the fake kernel is executing
        time.sleep(0.0005)
    be.close()
    t.join(5)
    assert errors == [] and len(results) == 1
    np.testing.assert_allclose(results[0][:, 0, 4], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert be.ops.memory == {}  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="closed"):
        be.infer(x)


def test_close_gives_up_on_a_stuck_batch_without_freeing_its_buffers(tmp_path: Path):
    logs: list[str] = []
    be, _ = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=2), contexts=2, log=logs.append)
    stuck = be._pool.get()            # a batch that never finishes
    be.close_timeout_s = 0.05
    be.close()
    assert any("still running a batch" in line for line in logs)
    # The free slot's buffers are freed, the stuck one's are not.
    assert set(be.ops.memory) == {stuck.d_in, stuck.d_out}  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="closed"):
        be._run(np.zeros((1, 3, 64, 64), np.float32))


def test_contexts_are_capped_by_profile_copies(tmp_path: Path):
    be, _ = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=2), contexts=4)
    assert len(be._slots) == 2


def test_dynamic_hw_pads_small_inputs_and_refuses_large_ones(tmp_path: Path):
    hw = ((128, 128), (256, 256), (256, 256))
    be, _ = backend(write_engine(tmp_path / "det.engine", ((1, 2, 4),), contexts=1, hw=hw))
    assert be.info.dynamic_hw and be.info.input_hw == (256, 256)
    out = be.infer(np.zeros((2, 3, 96, 160), dtype=np.float32))
    assert tuple(out[0, 0, 2:4]) == (128, 160)  # padded at the bottom to the profile minimum
    np.testing.assert_allclose(out[0, 0, 4], (96 * 160 * 0 + (128 - 96) * 160 * 114 / 255) / (128 * 160), rtol=1e-5)
    with pytest.raises(ModelContractError, match="outside every optimisation profile"):
        be.infer(np.zeros((1, 3, 288, 256), dtype=np.float32))


def test_fp16_engine_io_is_converted(tmp_path: Path):
    be, _ = backend(write_engine(tmp_path / "det.engine", ((1, 2, 2),), contexts=1, dtype="float16"))
    x = np.full((2, 3, 64, 64), 0.5, dtype=np.float32)
    out = be.infer(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 4], 0.5)


def test_engine_for_another_gpu_is_refused_with_rebuild_hint(tmp_path: Path):
    path = write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=2,
                        env=TrtEnvironment("10.3.0.26", "8.6", "NVIDIA A10"))
    with pytest.raises(ModelContractError) as exc:
        backend(path)
    msg = str(exc.value)
    assert "built with TensorRT 10.3.0.26 for compute capability 8.6 (NVIDIA A10)" in msg
    assert "vap build-engine det.onnx --fp16 --batch 1,4,8" in msg


def test_stale_sidecar_is_refused(tmp_path: Path):
    path = write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1)
    path.write_bytes(path.read_bytes().replace(b'"dtype"', b'"dtype" '))
    with pytest.raises(ModelContractError, match="does not match its sidecar"):
        backend(path)
    (tmp_path / "det.engine.json").write_text("[1, 2]")
    with pytest.raises(ModelContractError, match="does not hold a JSON object"):
        backend(path)


def test_undeserializable_plan_says_how_to_rebuild(tmp_path: Path):
    path = tmp_path / "junk.engine"
    path.write_bytes(b"\x00\x01not a plan at all" * 8)
    with pytest.raises(ModelContractError, match="cannot deserialize this plan.*vap build-engine"):
        backend(path, class_names=["a"])


def test_ultralytics_engine_with_header_loads(tmp_path: Path):
    plan = json.dumps({"fake_plan": True, "profiles": [[[1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]]],
                       "hw": [64, 64]}).encode()
    header = {"description": "Ultralytics YOLO26n model", "version": "8.4.0", "stride": 32, "task": "detect",
              "batch": 8, "imgsz": [64, 64], "names": {"0": "person", "1": "bicycle", "2": "car"},
              "end2end": True, "args": {"half": True, "int8": False, "dynamic": True, "max_det": K}}
    path = tmp_path / "yolo26n.engine"
    path.write_bytes(with_header(plan, header))
    be, _ = backend(path, contexts=2)
    assert be.info.names == ["person", "bicycle", "car"]
    assert be.info.precision == "fp16" and be.info.extra["metadata_from"] == "header"
    assert len(be._slots) == 1  # one profile: one context, never shared
    out = be.infer(np.ones((2, 3, 64, 64), dtype=np.float32))
    np.testing.assert_allclose(out[:, 0, 4], 1.0)


def test_engine_next_to_its_onnx_export_sidecar_loads(tmp_path: Path):
    """det.onnx + det.json (vap export's ONNX sidecar) next to det.engine: the engine's own
    metadata must be used, not the ONNX sidecar mistaken for a broken TensorRT one."""
    (tmp_path / "det.json").write_text(json.dumps({"vap_format": "1", "names": '{"0": "cat"}'}))
    plan = json.dumps({"fake_plan": True, "profiles": [[[1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]]],
                       "hw": [64, 64]}).encode()
    header = {"stride": 32, "imgsz": [64, 64], "names": {"0": "person"}, "end2end": True}
    (tmp_path / "det.engine").write_bytes(with_header(plan, header))
    be, _ = backend(tmp_path / "det.engine")
    assert be.info.names == ["person"] and be.info.extra["metadata_from"] == "header"
    # Ours, next to the same ONNX sidecar: det.engine.json is the one read.
    be2, _ = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1))
    assert be2.info.names == ["person", "car"] and be2.info.extra["metadata_from"] == "sidecar"
    assert json.loads((tmp_path / "det.json").read_text())["vap_format"] == "1"   # untouched


def test_plan_without_any_metadata_needs_class_names(tmp_path: Path):
    path = tmp_path / "bare.engine"
    path.write_bytes(json.dumps({"fake_plan": True, "profiles": [[[1, 3, 64, 64]] * 3], "hw": [64, 64]}).encode())
    with pytest.raises(ModelContractError, match="no class names"):
        backend(path)
    be, _ = backend(path, class_names=["a", "b"])
    assert be.info.names == ["a", "b"] and be.info.extra["metadata_from"] == "none"


def test_legacy_one_to_many_plan_goes_through_the_nms_fallback(tmp_path: Path):
    path = write_engine(tmp_path / "v8.engine", ((1, 2, 4),), contexts=1, legacy_classes=2)
    be, _ = backend(path)
    assert be.info.layout != "end2end"
    x = np.full((3, 3, 64, 64), 0.75, dtype=np.float32)
    out = be.infer(x)                       # base class: raw [B, 6, 64] -> NMS -> [B, K, 6]
    assert out.shape == (3, be.info.max_det, 6)
    np.testing.assert_allclose(out[:, 0], [[6, 16, 14, 24, 0.75, 1]] * 3, rtol=1e-6)
    assert np.all(out[:, 1:, 4] == 0)       # identical boxes: NMS keeps one per image


def test_torch_tensor_input_matches_numpy(tmp_path: Path):
    torch = pytest.importorskip("torch", reason="torch not installed")
    be, _ = backend(write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1))
    x = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(be.infer(torch.from_numpy(x)), be.infer(x))


def test_onnx_path_goes_through_the_engine_cache(tmp_path: Path):
    from vap_video.engines.metadata import sha256_file
    from vap_video.engines.tensorrt.cache import decide
    from vap_video.engines.tensorrt.runtime import build_options
    from tests.onnx_models import constant_detector

    model = constant_detector(tmp_path / "det.onnx", np.zeros((1, 6), np.float32), ["person", "car"], imgsz=64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelContractError) as exc:
        backend(model, contexts=1, cache_dir=cache, batch_profiles=[[1, 4, 8]], precision="fp16")
    assert f"vap build-engine {model} --fp16 --batch 1,4,8 --contexts 1 --cache-dir {cache}" in str(exc.value)
    opts = build_options("fp16", "1,4,8", contexts=1)
    d = decide(model, opts, cache, ENV)
    cache.mkdir()
    write_engine(d.path, ((1, 4, 8),), contexts=1, source_sha256=sha256_file(model), key=d.key)
    be, _ = backend(model, contexts=1, cache_dir=cache, batch_profiles="1,4,8")
    assert be.path == d.path and be.info.names == ["person", "car"]


def test_user_paths_expand_tilde(tmp_path: Path, monkeypatch: Any):
    from vap_video.engines.metadata import sha256_file
    from vap_video.engines.tensorrt.cache import decide
    from vap_video.engines.tensorrt.runtime import build_options
    from tests.onnx_models import constant_detector

    monkeypatch.setenv("HOME", str(tmp_path))
    model = constant_detector(tmp_path / "det.onnx", np.zeros((1, 6), np.float32), ["person", "car"], imgsz=64)
    opts = build_options("fp16", "1,4,8", contexts=1)
    d = decide(model, opts, tmp_path / "cache", ENV)
    (tmp_path / "cache").mkdir()
    write_engine(d.path, ((1, 4, 8),), contexts=1, source_sha256=sha256_file(model), key=d.key)
    be, _ = backend("~/det.onnx", contexts=1, cache_dir="~/cache", batch_profiles="1,4,8")  # type: ignore[arg-type]
    assert be.path == d.path
    be2, _ = backend("~/cache/" + d.path.name, contexts=1)  # type: ignore[arg-type]
    assert be2.path == d.path
    assert build_options("int8", calibration="~/calib").calibration == str(tmp_path / "calib")


def test_unknown_backend_options_name_the_key(tmp_path: Path):
    path = write_engine(tmp_path / "det.engine", ((1, 4, 8),), contexts=1)
    with pytest.raises(ModelContractError, match="unknown TensorRT backend option.*batch_profile.*known:.*"
                                                 "batch_profiles"):
        backend(path, batch_profile=[[1, 4, 8]])


def test_build_options_from_config_values():
    from vap_video.engines.tensorrt.runtime import build_options

    o = build_options("int8", [[1, 1, 1], "2,8,16"], [[320, 320], [640, 640], [640, 640]], contexts=3,
                      calibration="calib/")
    assert o.batch_profiles == ((1, 1, 1), (2, 8, 16)) and o.hw_profile == ((320, 320), (640, 640), (640, 640))
    assert build_options("fp16", [1, 8, 16]).batch_profiles == ((1, 8, 16),)
    with pytest.raises(ValueError, match="--calib"):
        build_options("int8")
    with pytest.raises(ModelContractError, match="model.tensorrt options: batch profile"):
        backend(Path(__file__).resolve().parents[1] / "vap_video" / "engines" / "models" / "vap-synth-n.onnx",
                batch_profiles="8,1,16")


def _cuda_available() -> bool:
    try:
        from vap_video.engines.tensorrt.cuda_ops import gpu_properties
        gpu_properties(0)
        return True
    except Exception:
        return False


def _real_trt_or_skip() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    if not _cuda_available():
        pytest.skip("no CUDA GPU")


def _synth_batch(hw: tuple[int, int], n: int) -> np.ndarray:
    """n letterboxed synthetic scenes (objects the shipped model detects), [n, 3, H, W] float32."""
    from vap_video.engines.calibration import preprocess_image
    from vap_video.engines.synth import render_image

    return np.stack([preprocess_image(render_image(seed, 480, 360)[0], hw) for seed in range(n)])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box a [4] against boxes b [N, 4] (x1, y1, x2, y2)."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: np.prod(np.clip(x[..., 2:] - x[..., :2], 0, None), axis=-1)
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def assert_same_detections(ref: np.ndarray, got: np.ndarray, min_iou: float, score_tol: float) -> int:
    """Every confident reference detection has one of the same class in `got` with a matching box
    and score (row order may differ where scores tie). Returns how many were compared."""
    compared = 0
    for p, q in zip(ref, got):
        for row in p[p[:, 4] >= 0.3]:
            same = q[(q[:, 5] == row[5]) & (q[:, 4] >= 0.1)]
            assert len(same), f"class {int(row[5])} at {row[:4]} (score {row[4]:.3f}) missing"
            k = int(np.argmax(_iou(row[:4], same[:, :4])))
            assert _iou(row[:4], same[:, :4])[k] >= min_iou, (row, same[k])
            assert abs(same[k, 4] - row[4]) <= score_tol, (row, same[k])
            compared += 1
    return compared


@pytest.mark.parametrize("precision,min_iou,score_tol", [("fp32", 0.99, 0.005), ("fp16", 0.97, 0.03)])
def test_real_tensorrt_build_and_run(tmp_path: Path, precision: str, min_iou: float, score_tol: float):
    """Build the shipped model with real TensorRT and compare boxes, classes and scores with ONNX
    Runtime on synthetic scenes (GPU machines only; skipped here with the reason)."""
    _real_trt_or_skip()
    from vap_video.engines.backends.onnxruntime import OrtBackend
    from vap_video.engines.tensorrt.build import build_engine

    model = Path(__file__).resolve().parents[1] / "vap_video" / "engines" / "models" / "vap-synth-n.onnx"
    out = build_engine(model, tmp_path / f"n.{precision}.engine",
                       BuildOptions(precision=precision, batch_profiles=((1, 4, 8),)), cache_dir=tmp_path)  # type: ignore[arg-type]
    trt_be = TrtBackend(out)
    try:
        ort_be = OrtBackend(model)
        x = _synth_batch(trt_be.info.input_hw, 6)
        ref, got = ort_be.infer(x), trt_be.infer(x)
        assert got.shape == ref.shape
        assert assert_same_detections(ref, got, min_iou, score_tol) >= 3  # the scenes do have objects
        # Batch sizes inside, between and above the profile give the same detections per image.
        for n in (1, 3, 6):
            assert_same_detections(ref[:n], trt_be.infer(x[:n]), min_iou, score_tol)
    finally:
        trt_be.close()


def test_real_tensorrt_submit_and_concurrent_contexts(tmp_path: Path):
    """Two execution contexts on real TensorRT: batches kept in flight with submit() and batches
    from several threads give the same detections as one at a time (GPU machines only)."""
    _real_trt_or_skip()
    from vap_video.engines.tensorrt.build import build_engine

    model = Path(__file__).resolve().parents[1] / "vap_video" / "engines" / "models" / "vap-synth-n.onnx"
    out = build_engine(model, tmp_path / "n.engine",
                       BuildOptions(precision="fp16", batch_profiles=((1, 4, 8),), contexts=2), cache_dir=tmp_path)
    be = TrtBackend(out, contexts=2)
    try:
        assert be.contexts == 2
        x = _synth_batch(be.info.input_hw, 8)
        batches = [x[i:i + 4] for i in (0, 4, 0, 4, 2, 1)]
        serial = [be.infer(b) for b in batches]
        futures = [be.submit(b) for b in batches]
        for ref, f in zip(serial, futures):
            assert_same_detections(ref, f.result(60), 0.99, 0.01)
        results: list[Any] = [None] * len(batches)
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, be.infer(batches[i])))
                   for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for ref, got in zip(serial, results):
            assert got is not None
            assert_same_detections(ref, got, 0.99, 0.01)
    finally:
        be.close()


def test_missing_cuda_bindings_and_gpu_are_clear_errors(monkeypatch):
    import importlib.util

    from vap_video.engines.tensorrt import cuda_ops as C

    if any(importlib.util.find_spec(m) for m in ("pycuda", "cuda")):
        pytest.skip("a CUDA binding is installed here; this checks the message without one")
    with pytest.raises(ModelContractError, match="needs pycuda or cuda-python.*pip install 'vap-video\\[tensorrt\\]'"):
        C.cuda_ops("auto")
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi either
    with pytest.raises(ModelContractError, match="cannot find CUDA GPU 0"):
        C.gpu_properties(0)


def test_detection_comparison_used_by_the_gpu_tests_can_fail():
    """The helper of the real-GPU tests, checked here on ONNX Runtime output: it matches identical
    detections and refuses moved boxes and changed classes."""
    from vap_video.engines.backends.onnxruntime import OrtBackend

    ort_be = OrtBackend(Path(__file__).resolve().parents[1] / "vap_video" / "engines" / "models" / "vap-synth-n.onnx")
    ref = ort_be.infer(_synth_batch(ort_be.info.input_hw, 3))
    assert assert_same_detections(ref, ref.copy(), 0.99, 0.001) >= 1
    moved = ref.copy()
    moved[..., [0, 2]] += 0.3 * (moved[..., 2:3] - moved[..., 0:1])
    with pytest.raises(AssertionError):
        assert_same_detections(ref, moved, 0.97, 0.03)
    relabelled = ref.copy()
    relabelled[..., 5] = (relabelled[..., 5] + 1) % len(ort_be.info.names)
    with pytest.raises(AssertionError):
        assert_same_detections(ref, relabelled, 0.97, 0.03)
