"""Engine cache: which TensorRT plan belongs to which model, GPU, TensorRT version and build options.

A TensorRT plan only runs on the TensorRT version that built it and on GPUs of the compute
capability it was tuned for. Building takes minutes, so plans are cached, and the cache key holds
everything that makes a plan unusable or different when it changes:

    sha256 of the ONNX model, TensorRT version, GPU compute capability, precision,
    optimisation profiles (batch min/opt/max, H/W range, copies per context), INT8 calibration source

Layout (flat, one folder; names readable by people, the key makes them unique)::

    <cache_dir>/<model stem>.<precision>.b<min>-<opt>-<max>.trt<version>.sm<cc>.<key12>.engine
    <cache_dir>/<same>.engine.json   sidecar: engine contract metadata + what the plan was built for
    <cache_dir>/timing.trt<version>.sm<cc>.cache    TensorRT timing cache shared by builds

The sidecar also records the sha256 of the plan itself, so a plan replaced or truncated behind
the cache's back (a stale sidecar) is detected instead of deserialized. Every refusal says what
was found, what was expected and the command that rebuilds the engine.

Nothing here imports TensorRT: keys, sidecars and decisions are computed from plain values, so
they are tested on machines without a GPU. `detect_environment` is the one place that asks
TensorRT and the driver what this machine has.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, Literal, cast

from vap_video.engines.contract import ModelContractError
from vap_video.engines.metadata import sha256_file
from vap_video.engines.tensorrt.plan_file import find_sidecar, read_sidecar_raw, sidecar_path

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
HW = tuple[int, int]
DEFAULT_BATCH_PROFILES: tuple[tuple[int, int, int], ...] = ((1, 8, 16),)
KEY_VERSION = 1
# Where an option comes from, for messages: the deployment YAML key (vap run) and the CLI flag.
BATCH_KEYS = " (model.tensorrt.batch_profiles / vap build-engine --batch)"
HW_KEYS = " (model.tensorrt.hw_profile / vap build-engine --hw)"
SIDECAR_FORMAT = "vap.trt/1"
REQUIRED_SIDECAR_KEYS = ("format", "names", "imgsz", "tensorrt_version", "compute_capability", "engine_sha256",
                         "source_sha256", "batch_profiles", "precision")


class TensorRTUnavailable(ModelContractError):
    """TensorRT (or a CUDA GPU) is not present on this machine."""


@dataclass(frozen=True)
class TrtEnvironment:
    """What a plan must match to load here: TensorRT version and the GPU's compute capability."""

    tensorrt_version: str
    compute_capability: str          # "8.9"
    device_name: str = ""

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


def parse_batch(spec: str) -> tuple[int, int, int]:
    """'1,8,32' -> (1, 8, 32); '8' -> (8, 8, 8) (a fixed batch). Clear ValueError otherwise."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"batch profile {spec!r} is not MIN,OPT,MAX integers (e.g. 1,8,32){BATCH_KEYS}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"batch profile {spec!r} needs three values MIN,OPT,MAX (e.g. 1,8,32) or one fixed "
                         f"size{BATCH_KEYS}")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch profile {spec!r} must satisfy 1 <= MIN <= OPT <= MAX{BATCH_KEYS}")
    return lo, opt, hi


def _parse_one_hw(text: str) -> HW:
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise ValueError(f"input size {text!r} is not HxW (e.g. 384x640) or one number{HW_KEYS}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def parse_hw(spec: str) -> tuple[HW, HW, HW]:
    """'320x320,640x640,640x640' (MIN,OPT,MAX) or '640' (fixed) -> three (h, w) pairs."""
    parts = [p for p in str(spec).split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise ValueError(f"input size profile {spec!r} needs MIN,OPT,MAX sizes (e.g. 320x320,640x640,640x640)"
                         f"{HW_KEYS}")
    lo, opt, hi = (_parse_one_hw(p) for p in parts)
    for i in range(2):
        if not 32 <= lo[i] <= opt[i] <= hi[i]:
            raise ValueError(f"input size profile {spec!r} must satisfy 32 <= MIN <= OPT <= MAX in both H and "
                             f"W{HW_KEYS}")
    return lo, opt, hi


@dataclass(frozen=True)
class BuildOptions:
    """How to build a plan. Everything except `workspace_gib` and `timing_cache` is part of the key.

    `batch_profiles`: one optimisation profile per (min, opt, max) batch range; the runtime picks
    the profile whose range holds the batch. `hw_profile`: the H/W range for models with dynamic
    H/W (None: the model's fixed size, or its metadata imgsz as a fixed size). `contexts`: each
    profile is built this many times so that this many execution contexts can run batches
    concurrently (a profile is owned by one context at a time).
    """

    precision: Precision = "fp16"
    batch_profiles: tuple[tuple[int, int, int], ...] = DEFAULT_BATCH_PROFILES
    hw_profile: tuple[HW, HW, HW] | None = None
    contexts: int = 2
    workspace_gib: float = 4.0
    calibration: str | None = None
    calib_limit: int = 256
    calib_batch: int = 8
    timing_cache: str | None = None

    def validate(self) -> BuildOptions:
        """Raise ValueError naming the bad option; return self so calls chain."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)} "
                             "(model.tensorrt.precision / --fp32, --fp16, --int8)")
        if not self.batch_profiles:
            raise ValueError("at least one batch profile is needed (model.tensorrt.batch_profiles: [[1, 8, 32]] / "
                             "--batch 1,8,32)")
        for b in self.batch_profiles:
            parse_batch(",".join(str(v) for v in b))
        if self.hw_profile is not None:
            parse_hw(",".join(f"{h}x{w}" for h, w in self.hw_profile))
        if not 1 <= self.contexts <= 8:
            raise ValueError(f"contexts {self.contexts} must be 1..8 (each one is a copy of every profile; "
                             "model.tensorrt.contexts / --contexts)")
        if not 0 < self.workspace_gib <= 1024:
            raise ValueError(f"workspace {self.workspace_gib} GiB must be > 0 (model.tensorrt.workspace_gib / "
                             "--workspace)")
        if self.precision == "int8" and not self.calibration:
            raise ValueError("INT8 needs calibration images: model.tensorrt.calibration: DIR_OR_DATA_YAML / "
                             "--calib DIR_OR_DATA_YAML")
        if self.calib_batch < 1 or self.calib_limit < 1:
            raise ValueError("calibration batch size and image limit must be >= 1 (model.tensorrt.calib_limit / "
                             "--calib-limit, --calib-batch)")
        return self

    @property
    def max_batch(self) -> int:
        return max(b[2] for b in self.batch_profiles)

    def key_fields(self) -> dict[str, Any]:
        """The options that change the plan (and so belong in the cache key)."""
        out: dict[str, Any] = {
            "precision": self.precision,
            "batch_profiles": [list(b) for b in self.batch_profiles],
            "hw_profile": [list(hw) for hw in self.hw_profile] if self.hw_profile else None,
            "contexts": self.contexts,
        }
        if self.precision == "int8":
            out["calibration"] = {"source": str(self.calibration), "limit": self.calib_limit}
        return out

    def cli_flags(self) -> list[str]:
        """The `vap build-engine` flags that reproduce these options (for rebuild hints)."""
        flags: list[str] = []
        if self.precision != "fp32":
            flags.append(f"--{self.precision}")
        if self.precision == "int8":
            flags += ["--calib", str(self.calibration)]
            if self.calib_limit != 256:
                flags += ["--calib-limit", str(self.calib_limit)]
        for b in self.batch_profiles:
            flags += ["--batch", ",".join(str(v) for v in b)]
        if self.hw_profile:
            flags += ["--hw", ",".join(f"{h}x{w}" for h, w in self.hw_profile)]
        if self.contexts != 2:
            flags += ["--contexts", str(self.contexts)]
        return flags


def default_cache_dir() -> Path:
    """`$VAP_ENGINE_CACHE`, else `$XDG_CACHE_HOME/vap/engines`, else `~/.cache/vap/engines`."""
    env = os.environ.get("VAP_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "vap" / "engines"


def cache_key(model_sha256: str, env: TrtEnvironment, options: BuildOptions) -> str:
    """Hex sha256 of everything that makes a plan different or unusable (see module docstring)."""
    payload = {"v": KEY_VERSION, "model_sha256": model_sha256, "tensorrt": env.tensorrt_version,
               "compute_capability": env.compute_capability, **options.key_fields()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def engine_path(cache_dir: str | Path, model: str | Path, key: str, env: TrtEnvironment,
                options: BuildOptions) -> Path:
    """Where the plan for this key lives in `cache_dir` (see module docstring for the layout)."""
    lo, opt, hi = options.batch_profiles[0]
    more = f"+{len(options.batch_profiles) - 1}" if len(options.batch_profiles) > 1 else ""
    version = re.sub(r"[^0-9A-Za-z.]+", "_", env.tensorrt_version)
    name = f"{Path(model).stem}.{options.precision}.b{lo}-{opt}-{hi}{more}.trt{version}.{env.sm}.{key[:12]}.engine"
    return Path(cache_dir) / name


def timing_cache_path(cache_dir: str | Path, env: TrtEnvironment) -> Path:
    """One timing cache per TensorRT version and GPU: it only speeds up builds on the same pair."""
    version = re.sub(r"[^0-9A-Za-z.]+", "_", env.tensorrt_version)
    return Path(cache_dir) / f"timing.trt{version}.{env.sm}.cache"


def rebuild_command(model: str | Path, options: BuildOptions, cache_dir: str | Path | None = None,
                    force: bool = False) -> str:
    """The shell command that (re)builds this engine; `force` adds --force, for hints about an
    engine that exists but was refused (the user may want to replace it whatever the cache says)."""
    parts = ["vap", "build-engine", str(model), *options.cli_flags(), *(["--force"] if force else [])]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    return " ".join(shlex.quote(p) for p in parts)


def options_from_sidecar(meta: dict[str, Any]) -> BuildOptions:
    """Rebuild options recorded in a sidecar (for the hint in an error message)."""
    hw = meta.get("hw_profile")
    calib = meta.get("calibration") or {}
    # the sidecar's lists as tuples, lengths unchecked (this only words a hint; validate() checks them)
    batches = cast(tuple[tuple[int, int, int], ...],
                   tuple(tuple(int(v) for v in b) for b in meta.get("batch_profiles") or [(1, 8, 16)]))
    hw_profile = cast(tuple[HW, HW, HW], tuple(tuple(int(v) for v in p) for p in hw)) if hw else None
    return BuildOptions(
        precision=meta.get("precision", "fp16") if meta.get("precision") in PRECISIONS else "fp16",
        batch_profiles=batches,
        hw_profile=hw_profile,
        contexts=int(meta.get("profile_copies", 2) or 2),
        calibration=calib.get("source"), calib_limit=int(calib.get("limit", 256)))


def sidecar_metadata(onnx_meta: dict[str, Any], *, names: list[str], imgsz: HW, stride: int, max_det: int,
                     dynamic_hw: bool, source_model: str | Path, source_sha256: str, env: TrtEnvironment,
                     options: BuildOptions, engine_sha256: str, engine_bytes: int, key: str,
                     input_name: str, output_name: str, built_precision: str, end2end: bool = True,
                     notes: list[str] | None = None) -> dict[str, Any]:
    """The JSON sidecar of a built plan: the engine contract metadata (design: engine output) plus
    what it was built for, so a load can check both before trusting it."""
    from datetime import datetime

    from vap_video.engines.metadata import PREPROCESSING

    return {
        "format": SIDECAR_FORMAT,
        "vap_format": "1",
        "task": "detect",
        "names": {str(i): n for i, n in enumerate(names)},
        "imgsz": [int(imgsz[0]), int(imgsz[1])],
        "stride": int(stride),
        "end2end": bool(end2end),  # False: a one-to-many head, run through the NMS fallback
        "max_det": int(max_det),
        "precision": built_precision,
        "preprocessing": onnx_meta.get("preprocessing") or PREPROCESSING,
        "dynamic_hw": bool(dynamic_hw),
        "source_model": Path(source_model).name,
        "source_sha256": source_sha256,
        "checkpoint_sha256": onnx_meta.get("source_sha256", ""),
        "model": onnx_meta.get("model", {}),
        "tensorrt_version": env.tensorrt_version,
        "compute_capability": env.compute_capability,
        "device_name": env.device_name,
        "batch_profiles": [list(b) for b in options.batch_profiles],
        "hw_profile": [list(hw) for hw in options.hw_profile] if options.hw_profile else None,
        "profile_copies": options.contexts,
        "calibration": ({"source": str(options.calibration), "limit": options.calib_limit}
                        if options.precision == "int8" else None),
        "input_name": input_name,
        "output_name": output_name,
        "engine_sha256": engine_sha256,
        "engine_bytes": int(engine_bytes),
        "cache_key": key,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "notes": list(notes or []),
    }


def check_sidecar(meta: dict[str, Any], engine: Path, env: TrtEnvironment | None, engine_sha256: str | None,
                  source_sha256: str | None = None, hint: str = "") -> None:
    """Refuse a plan whose sidecar is incomplete, stale, or made for another GPU/TensorRT version.

    `engine_sha256`: sha256 of the plan bytes as found (None skips the check); `source_sha256`:
    the ONNX model the caller expects (None skips); `hint`: how to rebuild, appended to messages.
    """
    how = f" Rebuild it: {hint}" if hint else " Rebuild it from its ONNX model with vap build-engine on this machine."
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in meta]
    if missing or meta.get("format") != SIDECAR_FORMAT:
        raise ModelContractError(
            f"{find_sidecar(engine) or sidecar_path(engine)}: not a vap TensorRT sidecar "
            f"(missing {', '.join(missing) or 'format'}; "
            f"format {meta.get('format')!r}, expected {SIDECAR_FORMAT!r}).{how}")
    if engine_sha256 is not None and meta["engine_sha256"] != engine_sha256:
        raise ModelContractError(
            f"{engine}: the plan does not match its sidecar (sha256 {engine_sha256[:12]}..., the sidecar "
            f"describes {str(meta['engine_sha256'])[:12]}...): the engine file was replaced or truncated after "
            f"the sidecar was written, so its metadata cannot be trusted.{how}")
    if source_sha256 is not None and meta["source_sha256"] != source_sha256:
        raise ModelContractError(
            f"{engine}: built from a different ONNX model (sha256 {str(meta['source_sha256'])[:12]}..., the model "
            f"now has {source_sha256[:12]}...).{how}")
    if env is not None:
        found = (meta["tensorrt_version"], meta["compute_capability"])
        if found != (env.tensorrt_version, env.compute_capability):
            raise ModelContractError(
                f"{engine}: built with TensorRT {found[0]} for compute capability {found[1]} "
                f"({meta.get('device_name') or 'unknown GPU'}); this machine has TensorRT {env.tensorrt_version} "
                f"on compute capability {env.compute_capability} ({env.device_name or 'GPU 0'}). TensorRT plans only "
                f"run on the version and GPU generation that built them.{how}")


@dataclass
class CacheDecision:
    """What `resolve_engine` will do for a model: use a cached plan, or build one (and why)."""

    action: Literal["use", "build"]
    path: Path
    key: str
    reason: str
    source_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def decide(model: str | Path, options: BuildOptions, cache_dir: str | Path, env: TrtEnvironment) -> CacheDecision:
    """Look an ONNX model up in the cache without building anything."""
    model = Path(model)
    sha = sha256_file(model)
    key = cache_key(sha, env, options)
    path = engine_path(cache_dir, model, key, env, options)
    if not path.is_file():
        return CacheDecision("build", path, key, f"no cached engine for this model, GPU ({env.sm}), TensorRT "
                             f"{env.tensorrt_version} and options ({options.precision}, batch "
                             f"{' '.join(','.join(map(str, b)) for b in options.batch_profiles)})", sha)
    try:
        meta = read_sidecar_raw(path)
    except ValueError as exc:
        return CacheDecision("build", path, key, f"the cached engine's sidecar is broken: {exc}", sha)
    if meta is None:
        return CacheDecision("build", path, key, f"the cached engine has no sidecar {sidecar_path(path).name} "
                             "(an interrupted build?)", sha)
    try:
        check_sidecar(meta, path, env, sha256_file(path), sha)
    except ModelContractError as exc:
        return CacheDecision("build", path, key, str(exc).split(" Rebuild it")[0], sha)
    return CacheDecision("use", path, key, "cached engine matches", sha, {"meta": meta})


def detect_environment(device: int = 0) -> TrtEnvironment:
    """TensorRT version and GPU compute capability of this machine (imports TensorRT)."""
    trt = import_tensorrt()
    from vap_video.engines.tensorrt.cuda_ops import gpu_properties

    major, minor, name = gpu_properties(device)
    return TrtEnvironment(str(trt.__version__), f"{major}.{minor}", name)


def import_tensorrt() -> Any:
    """`import tensorrt`, or a `TensorRTUnavailable` that says how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT not installed ({exc}); it needs an NVIDIA GPU: pip install 'vap-video[tensorrt]' "
            "(tensorrt>=10 and pycuda), or run the ONNX model with model.backend: onnxruntime") from None
    return tensorrt
