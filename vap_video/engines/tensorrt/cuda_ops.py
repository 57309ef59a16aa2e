"""The few CUDA calls the TensorRT runtime needs, behind one small interface.

Streams, device buffers, pinned (page-locked) host arrays and asynchronous copies, from pycuda
(the `vap-video[tensorrt]` extra) or NVIDIA's cuda-python (`cuda.bindings.runtime`), whichever is
installed; torch is never needed. Keeping these calls in one place lets the runtime's buffer and
stream logic be tested on a machine without a GPU, against `HostOps` below, which implements the
same interface with NumPy arrays standing in for device memory.

Why pinned memory: an asynchronous copy from pageable memory is silently synchronous (the driver
stages it through a pinned bounce buffer), which would serialise copies and inference.
"""

from __future__ import annotations

import ctypes
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from vap_video.engines.contract import ModelContractError


class CudaOps(Protocol):
    """What the runtime uses. Pointers are ints; streams are opaque, `stream_handle` gives the int."""

    name: str

    def activate(self) -> Any: ...           # context manager: make the device current in this thread
    def new_stream(self) -> Any: ...
    def destroy_stream(self, stream: Any) -> None: ...
    def stream_handle(self, stream: Any) -> int: ...
    def synchronize(self, stream: Any) -> None: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...
    def free_pinned(self, array: np.ndarray) -> None: ...
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...
    def release(self) -> None: ...           # free what is left and let go of the device (last call)


class PyCudaOps:
    """pycuda, on the device's primary context (the one TensorRT's runtime API calls use)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        self.ctx = cuda.Device(device).retain_primary_context()
        self._buffers: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}
        self._lock = threading.Lock()

    @contextmanager
    def activate(self) -> Iterator[None]:
        # pycuda contexts are per thread; the inference stage may call from a thread that never
        # pushed one, so every use pushes the primary context and pops it afterwards.
        self.ctx.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def new_stream(self) -> Any:
        stream = self.cuda.Stream()
        with self._lock:
            self._streams[id(stream)] = stream
        return stream

    def destroy_stream(self, stream: Any) -> None:
        # pycuda destroys a stream (cuStreamDestroy) when its last reference goes; call this with
        # the context active (inside `activate`) so that happens in a thread that has it current.
        with self._lock:
            self._streams.pop(id(stream), None)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def malloc(self, nbytes: int) -> int:
        buf = self.cuda.mem_alloc(max(int(nbytes), 1))
        with self._lock:
            self._buffers[int(buf)] = buf
        return int(buf)

    def free(self, ptr: int) -> None:
        with self._lock:
            buf = self._buffers.pop(int(ptr), None)
        if buf is not None:
            buf.free()

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        base = array.base  # pycuda's HostAllocation behind a pagelocked array
        while base is not None and not hasattr(base, "free") and isinstance(base, np.ndarray):
            base = base.base
        if base is not None and hasattr(base, "free"):
            base.free()

    def release(self) -> None:
        """Free buffers and streams still held, then detach from the primary context (pycuda's
        `retain_primary_context` took a reference that nothing else gives back)."""
        with self._lock:
            buffers, self._buffers = list(self._buffers.values()), {}
            self._streams.clear()
        for buf in buffers:
            buf.free()
        if self.ctx is not None:
            self.ctx.detach()
            self.ctx = None

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class CudaPythonOps:
    """NVIDIA cuda-python's runtime API (`cudaMalloc`, `cudaMemcpyAsync`, ...)."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        self.rt = _cudart()
        self.device = device
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self._pinned: dict[int, int] = {}   # array data address -> cudaMallocHost pointer
        self._streams: dict[int, Any] = {}  # handle -> stream
        self._device_ptrs: set[int] = set()
        self._lock = threading.Lock()

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    @contextmanager
    def activate(self) -> Iterator[None]:
        self._check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")
        yield

    def new_stream(self) -> Any:
        stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        with self._lock:
            self._streams[int(stream)] = stream
        return stream

    def destroy_stream(self, stream: Any) -> None:
        with self._lock:
            known = self._streams.pop(int(stream), None)
        if known is not None:
            self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        with self._lock:
            self._device_ptrs.add(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        with self._lock:
            if int(ptr) not in self._device_ptrs:
                return  # already freed (release() after a partial close)
            self._device_ptrs.discard(int(ptr))
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        with self._lock:
            self._pinned[ptr] = ptr
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def free_pinned(self, array: np.ndarray) -> None:
        """Free an array from `pinned` (it must no longer be used)."""
        with self._lock:
            ptr = self._pinned.pop(int(array.ctypes.data), None)
        if ptr is not None:
            self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def release(self) -> None:
        """Free the pinned memory, device buffers and streams still held (none may be in use)."""
        with self._lock:
            pinned, self._pinned = list(self._pinned.values()), {}
            streams, self._streams = list(self._streams.values()), {}
            ptrs, self._device_ptrs = list(self._device_ptrs), set()
        for stream in streams:
            self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")
        for ptr in ptrs:
            self._check(self.rt.cudaFree(ptr), "cudaFree")
        for ptr in pinned:
            self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")


class _HostStream:
    """A stand-in CUDA stream: the work queued on it, in order, until `synchronize`."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []


class HostOps:
    """The same interface on host memory, for tests (and nothing else): 'device' buffers are NumPy
    byte arrays keyed by a fake pointer, and like on a GPU, copies and kernel launches (`launch`)
    are only queued on their stream and happen at `synchronize` (reading the source memory
    then, not when queued). So code that forgets to wait for a stream, or reuses a host buffer
    before its copy ran, gives wrong results in tests instead of working by accident.

    It also keeps count of what is live (`memory`, `streams`, `pinned_live`), so tests can check
    that everything allocated was released."""

    name = "host"

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.streams: dict[int, _HostStream] = {}
        self.pinned_live: dict[int, np.ndarray] = {}
        self._next = 0x1000
        self._lock = threading.Lock()
        self.syncs = 0
        self.copies = 0
        self.released = False

    @contextmanager
    def activate(self) -> Iterator[None]:
        yield

    def new_stream(self) -> Any:
        stream = _HostStream()
        with self._lock:
            self.streams[id(stream)] = stream
        return stream

    def destroy_stream(self, stream: Any) -> None:
        # Like cudaStreamDestroy: work already queued still completes.
        self.synchronize(stream)
        with self._lock:
            del self.streams[id(stream)]

    def stream_handle(self, stream: Any) -> int:
        return id(stream)

    def _stream(self, stream: Any) -> _HostStream:
        key = stream if isinstance(stream, int) else id(stream)
        with self._lock:
            found = self.streams.get(key)
        if found is None:
            raise RuntimeError(f"stream {key:#x} does not exist (destroyed, or never created)")
        return found

    def launch(self, stream: Any, kernel: Callable[[], None]) -> None:
        """Queue `kernel` (a 'device' computation) on `stream` (the object or its handle)."""
        self._stream(stream).pending.append(kernel)

    def synchronize(self, stream: Any) -> None:
        s = self._stream(stream)
        while s.pending:
            s.pending.pop(0)()
        self.syncs += 1

    def malloc(self, nbytes: int) -> int:
        with self._lock:
            ptr = self._next
            self._next += (int(nbytes) + 0xFFF) & ~0xFFF or 0x1000
            self.memory[ptr] = np.zeros(int(nbytes), dtype=np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        with self._lock:
            del self.memory[ptr]

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        array = np.zeros(shape, dtype=dtype)
        with self._lock:
            self.pinned_live[id(array)] = array
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        with self._lock:
            del self.pinned_live[id(array)]

    def release(self) -> None:
        self.released = True

    def view(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The 'device' buffer at `ptr` as an array (what a kernel would read or write)."""
        n = int(np.prod(shape))
        return self.memory[ptr][: n * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        def copy() -> None:
            raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
            self.memory[dst][: raw.size] = raw
            self.copies += 1
        self.launch(stream, copy)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        def copy() -> None:
            dst.reshape(-1).view(np.uint8)[:] = self.memory[src][: dst.nbytes]
            self.copies += 1
        self.launch(stream, copy)


def cuda_ops(kind: str = "auto", device: int = 0) -> CudaOps:
    """pycuda or cuda-python ('auto': pycuda first). Missing both is a clear error."""
    errors = []
    for name, cls in (("pycuda", PyCudaOps), ("cuda-python", CudaPythonOps)):
        if kind not in ("auto", name):
            continue
        try:
            return cls(device)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
        except Exception as exc:  # driver errors: no GPU, no driver
            raise ModelContractError(f"CUDA is not usable here ({name}: {exc}); TensorRT needs an NVIDIA GPU "
                                     "and driver; use model.backend: onnxruntime on CPU") from None
    raise ModelContractError(
        "the TensorRT runtime needs pycuda or cuda-python (" + "; ".join(errors) + "): "
        "pip install 'vap-video[tensorrt]' or pip install cuda-python")


def gpu_properties(device: int = 0) -> tuple[int, int, str]:
    """(major, minor, name) of GPU `device`, from pycuda, cuda-python or nvidia-smi."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return int(major), int(minor), str(dev.name())
    except Exception:  # not installed, or no driver/GPU: try the next source
        pass
    try:
        rt = _cudart()
        err, prop = rt.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            return int(prop.major), int(prop.minor), name.strip("\x00 ")
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(device), "--query-gpu=compute_cap,name",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
        cap, name = (s.strip() for s in out.stdout.strip().splitlines()[0].split(",", 1))
        major, minor = cap.split(".")
        return int(major), int(minor), name
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    raise ModelContractError(f"cannot find CUDA GPU {device} (no pycuda, cuda-python or nvidia-smi answer); "
                             "TensorRT needs an NVIDIA GPU and driver")
