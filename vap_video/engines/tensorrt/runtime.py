"""TensorRT backend: a deserialized plan, a small pool of execution contexts, pinned host buffers.

Per batch: pick the optimisation profile whose range holds the batch, set the input shape, copy
the images into pinned memory, then queue host-to-device copy, `execute_async_v3` and
device-to-host copy on the context's own CUDA stream and wait for that stream alone. The wait
releases the GIL, so the pipeline's next batch is preprocessed while this one runs; with
`contexts` > 1, that many batches from different threads are in flight at once, each on its own
context, stream and buffers (a context, its profile and its buffers are never shared by two
batches at the same time).

The plan's metadata comes from the JSON sidecar written by `vap build-engine` (checked against
this machine's TensorRT version and GPU) or from the 4-byte-length + JSON header of Ultralytics
`.engine` exports. TensorRT and the CUDA bindings are imported when a backend is created, never
at import time, so `import vap_video.engines.tensorrt.runtime` works on machines without them.

Why one module of ~530 lines: the context pool, its buffers and the per-batch copy/execute/wait
sequence share one locking rule (a context and its buffers belong to one batch at a time);
split apart, that rule would have to be re-read across files.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.backends.base import Backend
from vap_video.engines.contract import ModelContractError, check_output, resolve_info
from vap_video.engines.metadata import encode_metadata
from vap_video.engines.tensorrt.cache import (
    BuildOptions,
    TrtEnvironment,
    check_sidecar,
    import_tensorrt,
    options_from_sidecar,
    parse_batch,
    parse_hw,
    rebuild_command,
)
from vap_video.engines.tensorrt.cuda_ops import CudaOps, cuda_ops
from vap_video.engines.tensorrt.plan_file import read_sidecar_raw, split_header
from vap_video.engines.tensorrt.resolve import resolve_engine

Shape = tuple[int, ...]
PAD = 114 / 255


def _is_torch(x: Any) -> bool:
    """A torch tensor, recognised without importing torch (the runtime must not need it)."""
    return type(x).__module__.split(".")[0] == "torch"


@dataclass(frozen=True)
class ProfileRange:
    """One optimisation profile of the input tensor: index in the engine, (min, opt, max) shapes."""

    index: int
    min: Shape
    opt: Shape
    max: Shape

    def fits(self, shape: Shape) -> bool:
        return all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


def select_profile(ranges: Sequence[ProfileRange], shape: Shape) -> ProfileRange | None:
    """The profile to run `shape` on: among those whose range holds it, the one with the smallest
    maximum batch (kernels tuned for sizes close to the batch), then the closest optimum batch."""
    fitting = [r for r in ranges if r.fits(shape)]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (r.max[0], abs(r.opt[0] - shape[0]), r.index))


def group_profiles(ranges: Sequence[ProfileRange], copies: int, contexts: int) -> list[list[ProfileRange]]:
    """Split the engine's profiles between execution contexts: context c owns copy c.

    `copies`: how many times the builder repeated the profile set (sidecar `profile_copies`);
    plans without that record (Ultralytics) are one copy, so one context.
    """
    n = len(ranges)
    if copies < 1 or n % copies:
        copies = 1
    per = n // copies
    return [list(ranges[c * per:(c + 1) * per]) for c in range(min(contexts, copies))]


def engine_metadata(path: Path, blob: bytes, env: TrtEnvironment | None) -> tuple[dict[str, Any], bytes, str]:
    """(metadata, plan bytes, where the metadata came from) for an engine file's bytes.

    Our sidecar wins; else an embedded (Ultralytics) header; else no metadata (names and size must
    then come from the config and the plan's shapes).
    """
    import hashlib

    header, plan = split_header(blob)
    try:
        sidecar = read_sidecar_raw(path)
    except ValueError as exc:
        raise ModelContractError(f"{exc}; delete it and rebuild the engine with vap build-engine") from None
    if sidecar is not None:
        check_sidecar(sidecar, path, env, hashlib.sha256(blob).hexdigest(),
                      hint=rebuild_command(sidecar.get("source_model", "MODEL.onnx"), options_from_sidecar(sidecar),
                                           force=True))
        return sidecar, plan, "sidecar"
    if header is not None:
        return ultralytics_metadata(header), plan, "header"
    return {}, plan, "none"


def ultralytics_metadata(header: dict[str, Any]) -> dict[str, Any]:
    """Map an Ultralytics engine header to our metadata keys (names, imgsz, stride, end2end, precision)."""
    out: dict[str, Any] = {k: header[k] for k in ("names", "imgsz", "stride", "end2end", "task") if k in header}
    args = header.get("args") or {}
    if isinstance(args, dict):
        out["precision"] = "int8" if args.get("int8") else "fp16" if args.get("half") else "fp32"
        if args.get("max_det"):
            out["max_det"] = args["max_det"]
    out["source_model"] = f"Ultralytics {header.get('version', '')} export".strip()
    return out


def build_options(precision: str = "fp16", batch_profiles: Sequence[Sequence[int] | str] = ((1, 8, 16),),
                  hw_profile: str | Sequence[Sequence[int]] | None = None, contexts: int = 2,
                  workspace_gib: float = 4.0, calibration: str | None = None,
                  calib_limit: int = 256) -> BuildOptions:
    """BuildOptions from config-style values: batch ranges as [1, 8, 16] or "1,8,16", the H/W
    range as [[h, w], [h, w], [h, w]] or "320x320,640x640,640x640". ValueError names the problem."""
    if isinstance(batch_profiles, str) or (batch_profiles and isinstance(batch_profiles[0], int)):
        batch_profiles = [batch_profiles]  # type: ignore[list-item]  # one flat range, as a list of one
    batches = tuple(parse_batch(b if isinstance(b, str) else ",".join(str(int(v)) for v in b))
                    for b in batch_profiles)
    hw = None
    if hw_profile is not None:
        hw = parse_hw(hw_profile if isinstance(hw_profile, str)
                      else ",".join(f"{int(h)}x{int(w)}" for h, w in hw_profile))
    if calibration:
        calibration = str(Path(calibration).expanduser())
    # precision is any str here: validate() rejects one that is not a PRECISIONS literal
    return BuildOptions(precision=precision, batch_profiles=batches, hw_profile=hw,  # type: ignore[arg-type]
                        contexts=int(contexts), workspace_gib=float(workspace_gib), calibration=calibration,
                        calib_limit=int(calib_limit)).validate()


@dataclass
class _Slot:
    """One execution context with its own stream, profiles and buffers (used by one batch at a time)."""

    context: Any
    stream: Any
    handle: int
    profiles: list[ProfileRange]
    d_in: int
    d_out: int
    h_in: Any  # pinned np.ndarray (None once freed)
    h_out: Any
    active: int = -1


class TrtBackend(Backend):
    """A TensorRT plan honouring the engine contract (see module docstring).

    `path`: a built `.engine`/`.plan`, or an `.onnx` model, which is looked up in the engine
    cache (`cache_dir`) with the build options below and built first when `build_missing`
    (else a missing plan is a ModelContractError giving the `vap build-engine` command).
    `contexts`: execution contexts in the pool (capped by the profile copies in the plan).
    `cuda`: 'auto' | 'pycuda' | 'cuda-python' or a CudaOps object; `trt_module` and `env` exist
    so the buffer/profile logic can be tested without a GPU (a fake TensorRT and `HostOps`).
    """

    name = "tensorrt"
    close_timeout_s = 30.0  # how long close() waits for batches running in other threads

    def __init__(self, path: str | Path, class_names: list[str] | None = None, contexts: int = 2,
                 device: int = 0, cuda: str | CudaOps = "auto", *, build_missing: bool = False,
                 cache_dir: str | Path | None = None, precision: str = "fp16",
                 batch_profiles: Sequence[Sequence[int] | str] = ((1, 8, 16),),
                 hw_profile: str | Sequence[Sequence[int]] | None = None, workspace_gib: float = 4.0,
                 calibration: str | None = None, calib_limit: int = 256,
                 log: Callable[[str], None] = print, trt_module: Any = None,
                 env: TrtEnvironment | None = None, **unknown: Any) -> None:
        if unknown:
            # Options come from the config (model.tensorrt.*): a typo must name the key, not be a TypeError.
            import inspect

            known = [p for p in inspect.signature(TrtBackend.__init__).parameters
                     if p not in ("self", "path", "unknown", "trt_module", "env")]
            raise ModelContractError(f"unknown TensorRT backend option(s) {', '.join(sorted(unknown))}; known: "
                                     f"{', '.join(known)}")
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelContractError(f"TensorRT model {path} does not exist; check model.path "
                                     "(an .onnx model, or an .engine built with vap build-engine)")
        trt = trt_module or import_tensorrt()
        self.trt = trt
        self._log = log
        self.ops: CudaOps = cuda_ops(cuda, device) if isinstance(cuda, str) else cuda
        self._owns_ops = isinstance(cuda, str)
        # What close() needs exists before anything can fail, so a failed start releases what
        # it got (buffers, streams, pinned memory, the CUDA context) instead of leaking it.
        self._slots: list[_Slot] = []
        self._pool: queue.Queue[_Slot | None] = queue.Queue()
        self._executor: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self.engine: Any = None
        self.runtime: Any = None
        try:
            self._load(path, env, device, class_names, contexts, precision, batch_profiles, hw_profile,
                       workspace_gib, calibration, calib_limit, cache_dir, build_missing, log)
        except BaseException:
            self.close()
            raise

    def _load(self, path: Path, env: TrtEnvironment | None, device: int, class_names: list[str] | None,
              contexts: int, precision: str, batch_profiles: Sequence[Sequence[int] | str],
              hw_profile: str | Sequence[Sequence[int]] | None, workspace_gib: float, calibration: str | None,
              calib_limit: int, cache_dir: str | Path | None, build_missing: bool,
              log: Callable[[str], None]) -> None:
        """The rest of __init__: find or build the plan, deserialize it, make the slots."""
        trt = self.trt
        if env is None:
            from vap_video.engines.tensorrt.cuda_ops import gpu_properties

            major, minor, gpu = gpu_properties(device)
            env = TrtEnvironment(str(trt.__version__), f"{major}.{minor}", gpu)
        self.env = env
        if path.suffix.lower() == ".onnx":
            try:
                options = build_options(precision, batch_profiles, hw_profile, contexts, workspace_gib,
                                        calibration, calib_limit)
            except ValueError as exc:
                raise ModelContractError(f"model.tensorrt options: {exc}") from None
            path = resolve_engine(path, options, cache_dir, build_missing, env=env, log=log, class_names=class_names)
        self.path = path
        meta, plan, self.meta_source = engine_metadata(path, path.read_bytes(), env)
        self.meta = meta
        self._logger = trt.Logger(trt.Logger.WARNING)
        with self.ops.activate():
            self.runtime = trt.Runtime(self._logger)
            self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            built = f"TensorRT {meta.get('tensorrt_version')}" if meta.get("tensorrt_version") else "another build"
            raise ModelContractError(
                f"{path}: TensorRT {trt.__version__} cannot deserialize this plan (built with {built}, or for "
                f"another GPU, or not a TensorRT plan). Rebuild it on this machine: vap build-engine MODEL.onnx")
        self._find_io(path)
        ranges = [ProfileRange(p, *(tuple(int(v) for v in s)
                                    for s in self.engine.get_tensor_profile_shape(self.input_name, p)))
                  for p in range(self.engine.num_optimization_profiles)]
        if not ranges:
            fixed = tuple(int(v) for v in self.engine.get_tensor_shape(self.input_name))
            ranges = [ProfileRange(0, fixed, fixed, fixed)]
        self.ranges = ranges
        groups = group_profiles(ranges, int(meta.get("profile_copies") or 1), max(1, int(contexts)))
        self.min_batch = min(r.min[0] for r in ranges)
        self.max_profile_batch = max(r.max[0] for r in ranges)
        in_shape = [int(v) if int(v) >= 0 else None for v in self.engine.get_tensor_shape(self.input_name)]
        out_shape = [int(v) if int(v) >= 0 else None for v in self.engine.get_tensor_shape(self.output_name)]
        str_meta = encode_metadata({k: v for k, v in meta.items() if k in (
            "names", "imgsz", "stride", "end2end", "max_det", "precision", "preprocessing", "dynamic_hw")})
        if "imgsz" not in str_meta and in_shape[2] is None:
            str_meta["imgsz"] = encode_metadata({"imgsz": list(ranges[0].max[2:])})["imgsz"]
        info = resolve_info(str_meta, in_shape, out_shape, str(path), class_names)
        # Batch splitting is done here per profile range, not by the base class (which pads to a
        # fixed graph batch): a dynamic plan must not be padded up to its maximum batch.
        self.info = dataclasses.replace(
            info, max_batch=None, dynamic_batch=self.min_batch != self.max_profile_batch,
            dynamic_hw=any(r.min[2:] != r.max[2:] for r in ranges),
            input_hw=(max(r.max[2] for r in ranges), max(r.max[3] for r in ranges)),
            extra={**info.extra, "tensorrt_version": str(trt.__version__), "metadata_from": self.meta_source})
        self._in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        with self.ops.activate():
            for owned in groups:
                slot = self._make_slot(owned)
                self._slots.append(slot)
                self._pool.put(slot)

    def _find_io(self, path: Path) -> None:
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or not outputs:
            raise ModelContractError(f"{path}: plan has inputs {inputs} and outputs {outputs}; a vap engine has one "
                                     "input images [B, 3, H, W] and one output [B, K, 6]")
        self.input_name = inputs[0]
        wanted = self.meta.get("output_name")
        self.output_name = wanted if wanted in outputs else outputs[0]

    def _make_slot(self, owned: list[ProfileRange]) -> _Slot:
        """One execution context with its stream and buffers; on failure, what it got is released."""
        ops = self.ops
        context = self.engine.create_execution_context()
        if context is None:
            raise ModelContractError("TensorRT could not create an execution context (out of GPU memory?); "
                                     "use fewer contexts or rebuild with a smaller --batch maximum")
        stream = ops.new_stream()
        handle = ops.stream_handle(stream)
        slot = _Slot(context, stream, handle, owned, 0, 0, None, None, active=owned[-1].index)
        try:
            # Output size at each profile's largest input, as TensorRT computes it (works for
            # [B, K, 6] and for legacy [B, 4+nc, N] heads whose N grows with H/W).
            max_out = 0
            for r in owned:
                context.set_optimization_profile_async(r.index, handle)
                if not context.set_input_shape(self.input_name, r.max):
                    raise ModelContractError(f"{self.info.source}: TensorRT refused its own profile maximum "
                                             f"{r.max}")
                max_out = max(max_out, int(np.prod([int(v) for v in context.get_tensor_shape(self.output_name)])))
            max_in = max(int(np.prod(r.max)) for r in owned)
            slot.d_in = ops.malloc(max_in * self._in_dtype.itemsize)
            slot.d_out = ops.malloc(max_out * self._out_dtype.itemsize)
            slot.h_in = ops.pinned((max_in,), self._in_dtype)
            slot.h_out = ops.pinned((max_out,), self._out_dtype)
            # Addresses never change for a slot: set them once.
            context.set_tensor_address(self.input_name, slot.d_in)
            context.set_tensor_address(self.output_name, slot.d_out)
        except BaseException:
            ops.synchronize(stream)  # the profile switches queued on it
            self._free_slot(slot)
            raise
        return slot

    def fit_hw(self, images: Any) -> Any:
        """Pad a batch below every profile's minimum H/W at the bottom/right with the letterbox grey.

        Boxes are measured from the top-left corner, which does not move, so the runtime's
        inverse letterbox stays exact. A batch above the maximum is refused later, by profile
        selection (it would need a resize the preprocessor did not record).
        """
        h, w = int(images.shape[2]), int(images.shape[3])
        min_h = min(r.min[2] for r in self.ranges)
        min_w = min(r.min[3] for r in self.ranges)
        if h >= min_h and w >= min_w:
            return images
        if _is_torch(images):
            import torch

            return torch.nn.functional.pad(images, (0, max(0, min_w - w), 0, max(0, min_h - h)), value=PAD)
        out = np.full((*images.shape[:2], max(h, min_h), max(w, min_w)), PAD, dtype=images.dtype)
        out[:, :, :h, :w] = images
        return out

    def padded_batch(self, n: int) -> int:
        """The batch size to run `n` images (n <= the largest profile maximum) at: `n` itself when a
        profile's batch range holds it, else the smallest profile minimum above it. Profiles may
        leave gaps (e.g. --batch 1 --batch 4,8,8 has none for 2 or 3); padding a few rows costs
        less than refusing the batch, which would stop the inference stage."""
        if any(r.min[0] <= n <= r.max[0] for r in self.ranges):
            return n
        above = [r.min[0] for r in self.ranges if r.min[0] > n]
        return min(above) if above else n

    def infer_raw(self, images: Any) -> np.ndarray:
        """The plan's own output for a [B, 3, H, W] batch of any size: splits batches above the
        largest profile and pads batches below the smallest or between two profiles up to the
        next profile (`padded_batch`; padding rows are dropped).

        `images`: a float NumPy array, or a torch tensor; a CUDA tensor (from
        `vap_video.engines.gpu_preprocess`) is read in place on the GPU, so no input crosses PCIe.
        Replaces the base class's fixed-graph padding, which would pad every batch up to the
        maximum; the base class's `infer` still applies the legacy-layout NMS fallback on top.
        """
        if _is_torch(images) and not images.is_cuda:
            images = images.detach().numpy()
        if len(images.shape) != 4 or images.shape[1] != 3:
            raise ModelContractError(f"{self.info.source}: got input shape {tuple(images.shape)}; "
                                     "expected [B, 3, H, W]")
        images = self.fit_hw(images)
        n = int(images.shape[0])
        if n > self.max_profile_batch:
            step = self.max_profile_batch
            return np.concatenate([self.infer_raw(images[i:i + step]) for i in range(0, n, step)])
        target = self.padded_batch(n)
        if target != n:
            padded: Any     # the same kind as `images`: a torch tensor (GPU preprocessing) or an ndarray
            if _is_torch(images):
                import torch

                padded = torch.cat([images, images.new_zeros((target - n, *images.shape[1:]))])
            else:
                padded = np.concatenate([images, np.zeros((target - n, *images.shape[1:]), images.dtype)])
            out = self._run(padded)[:n]
        else:
            out = self._run(images)
        check_output(out, n, self.info)
        return out

    def _run(self, images: Any) -> np.ndarray:
        if self._closed:
            raise RuntimeError("TensorRT backend is closed")
        shape = tuple(int(v) for v in images.shape)
        slot = self._pool.get()
        if slot is None:  # close() took every slot and left this marker: pass it on to the next waiter
            self._pool.put(None)
            raise RuntimeError("TensorRT backend is closed")
        try:
            return self._run_on(slot, images, shape)
        finally:
            self._pool.put(slot)

    def _run_on(self, slot: _Slot, images: Any, shape: Shape) -> np.ndarray:
        ops, ctx = self.ops, slot.context
        profile = select_profile(slot.profiles, shape)
        if profile is None:
            ranges = ", ".join(f"{r.min}..{r.max}" for r in slot.profiles)
            raise ModelContractError(
                f"{self.info.source}: input {shape} is outside every optimisation profile ({ranges}); lower "
                "batch.max_batch or rebuild the engine with a larger --batch maximum / --hw range")
        on_device = _is_torch(images)
        if on_device:
            device_in = self._device_input(images)
        else:
            host_in = slot.h_in[:int(np.prod(shape))].reshape(shape)
            np.copyto(host_in, images, casting="same_kind")
        with ops.activate():
            if slot.active != profile.index:
                ctx.set_optimization_profile_async(profile.index, slot.handle)
                slot.active = profile.index
            if not ctx.set_input_shape(self.input_name, shape):
                raise ModelContractError(f"{self.info.source}: TensorRT refused input shape {shape}")
            if on_device:
                ctx.set_tensor_address(self.input_name, int(device_in.data_ptr()))
            else:
                ops.htod_async(slot.d_in, host_in, slot.stream)
            try:
                if not ctx.execute_async_v3(slot.handle):
                    raise RuntimeError(f"{self.info.source}: TensorRT execute_async_v3 failed for input {shape}")
                out_shape = tuple(int(v) for v in ctx.get_tensor_shape(self.output_name))
                host_out = slot.h_out[:int(np.prod(out_shape))].reshape(out_shape)
                ops.dtoh_async(host_out, slot.d_out, slot.stream)
                ops.synchronize(slot.stream)
            finally:
                if on_device:
                    ctx.set_tensor_address(self.input_name, slot.d_in)
        return host_out.astype(np.float32, copy=True)  # copy: the pinned buffer serves the next batch

    def _device_input(self, images: Any) -> Any:
        """A CUDA tensor as the plan's input: its dtype, contiguous, with the producer's queued work
        finished (it ran on torch's stream, the plan runs on ours)."""
        import torch

        want = torch.float16 if self._in_dtype == np.float16 else torch.float32
        x = images.to(dtype=want).contiguous()
        torch.cuda.current_stream(x.device).synchronize()
        return x

    @property
    def contexts(self) -> int:
        """Execution contexts in the pool: how many batches can be in flight at once."""
        return len(self._slots)

    def submit(self, images: Any) -> Any:
        """Start `infer(images)` on a free execution context and return a `concurrent.futures.Future`.

        Lets one caller keep several batches in flight (copy-in of the next batch overlaps the
        current batch's execution on another context); `.result()` gives the [B, K, 6] array.
        The caller must not modify `images` until the future is done.
        """
        if self._closed:
            raise RuntimeError("TensorRT backend is closed")
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=max(1, len(self._slots)),
                                                        thread_name_prefix="trt-infer")
        return self._executor.submit(self.infer, images)

    def close(self) -> None:
        """Wait for submitted and running batches, then free device buffers and contexts (idempotent).

        Every slot is taken from the pool first (waiting up to `close_timeout_s` for batches that
        other threads are running), so no buffer is freed under a running copy or kernel. Slots
        still busy after the timeout are left allocated (with a message) rather than freed under
        the GPU; callers blocked waiting for a slot get "closed" instead of waiting forever.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        slots, self._slots = self._slots, []
        taken: list[_Slot] = []
        deadline = time.monotonic() + self.close_timeout_s
        while len(taken) < len(slots):
            try:
                slot = self._pool.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if slot is not None:
                taken.append(slot)
        self._pool.put(None)  # wakes anyone still waiting for a slot
        busy = len(slots) - len(taken)
        if busy:
            self._log(f"TensorRT backend closing: {busy} execution context(s) still running a batch after "
                      f"{self.close_timeout_s:g} s; their GPU memory is left allocated")
        with self.ops.activate():
            for slot in taken:
                self._free_slot(slot)
            if busy:
                return  # the engine and CUDA objects are still in use by those contexts
            self.engine = None  # contexts, then the engine, while the device is current
            self.runtime = None
        # Outside activate(): pycuda's detach must not find the context pushed by us.
        self._release_ops()

    def _free_slot(self, slot: _Slot) -> None:
        """Release one slot's CUDA objects (its stream must be idle): buffers, pinned memory, stream."""
        ops = self.ops
        for ptr in (slot.d_in, slot.d_out):
            if ptr:
                ops.free(ptr)
        for host in (slot.h_in, slot.h_out):
            if host is not None:
                ops.free_pinned(host)
        ops.destroy_stream(slot.stream)
        slot.d_in = slot.d_out = 0
        slot.h_in = slot.h_out = None
        slot.context = None

    def _release_ops(self) -> None:
        release = getattr(self.ops, "release", None)
        if callable(release) and self._owns_ops:
            release()
