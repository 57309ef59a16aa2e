"""`vap build-engine MODEL.onnx`: build a TensorRT plan with the TensorRT Python API (10.x and 11.x).

What a build does, in order:

1. Check the ONNX model against the engine contract and work out the optimisation profiles
   (plain Python and the `onnx` package: usage and model errors are reported before TensorRT is
   even imported, so they read the same on machines without it).
2. Parse it with TensorRT's ONNX parser into an explicit-batch network.
3. Configure: workspace limit, precision, one optimisation profile per batch range (times the
   number of concurrent execution contexts), the H/W range when the model's input size is
   dynamic, and a timing cache file that makes the next build on this GPU faster.
4. Build with a progress monitor that prints phases and steps (builds take minutes) and that
   returns "stop" to TensorRT after Ctrl-C, so the build ends cleanly instead of being killed.
5. Write the plan atomically and its JSON sidecar (engine contract metadata + what it was built for).

Precision: TensorRT 10 takes FP16 and INT8 as builder flags (INT8 with an entropy calibrator fed
from a folder of images or a YOLO data.yaml, letterboxed exactly like the runtime does). TensorRT
11 builds strongly typed networks only and removed those flags; there INT8 means a Q/DQ ONNX
model, which this command produces first with `vap_video.engines.quantize.quantize_qdq` and then builds,
and FP16 means an ONNX model converted to mixed precision (NVIDIA ModelOpt AutoCast, used when it
is installed). Both are said in the output, never done silently.

Nothing in this module has run against a real TensorRT here (no GPU on the development machines);
see docs/tensorrt.md for what was verified where.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from vap_video.engines.contract import ModelContractError
from vap_video.engines.metadata import sha256_file
from vap_video.engines.tensorrt.cache import (
    DEFAULT_BATCH_PROFILES,
    BuildOptions,
    TrtEnvironment,
    cache_key,
    decide,
    default_cache_dir,
    detect_environment,
    import_tensorrt,
    parse_batch,
    parse_hw,
    sidecar_metadata,
    timing_cache_path,
)
from vap_video.engines.tensorrt.calibrator import int8_calibrator
from vap_video.engines.tensorrt.plan_file import atomic_write, sidecar_path, write_sidecar
from vap_video.engines.tensorrt.profiles import OnnxSummary, fit_options, inspect_onnx, profile_shapes
from vap_video.engines.tensorrt.progress import BuildCancelled, BuildProgress, progress_monitor, run_cancellable

Shape4 = tuple[int, int, int, int]
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_MODEL, EXIT_CANCELLED = 0, 1, 2, 3, 130


class BuildFailed(Exception):
    """TensorRT could not build the network; its messages were logged above this error."""


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _fp16_onnx_for_trt11(source: Path, out: Path, log: Callable[[str], None]) -> Path:
    """TensorRT 11 has no FP16 flag: convert the ONNX model to mixed precision with ModelOpt AutoCast."""
    try:
        import modelopt.onnx.autocast as autocast
        import onnx
    except ImportError:
        raise ModelContractError(
            "TensorRT 11 builds strongly typed networks only and has no FP16 builder flag; an FP16 engine needs "
            "the ONNX model converted to mixed precision first. Install NVIDIA ModelOpt (pip install "
            "'nvidia-modelopt[onnx]') and run again, or build --fp32, or --int8 (Q/DQ).") from None
    target = out.with_suffix(".fp16.onnx")
    log(f"TensorRT 11: converting {source.name} to mixed FP16 with ModelOpt AutoCast -> {target}")
    onnx.save(autocast.convert_to_mixed_precision(onnx_path=str(source), low_precision_type="fp16",
                                                  keep_io_types=True), str(target))
    return target


def build_engine(onnx_path: str | Path, out: str | Path, options: BuildOptions, *, env: TrtEnvironment | None = None,
                 cache_dir: str | Path | None = None, log: Callable[[str], None] = print,
                 cancel: threading.Event | None = None, class_names: list[str] | None = None) -> Path:
    """Build `onnx_path` into the plan `out` (+ its `<out name>.json` sidecar); returns `out`.

    Raises ModelContractError (model unusable / parser errors), ValueError (options contradict the
    model), TensorRTUnavailable, BuildFailed or BuildCancelled.
    """
    onnx_path, out = Path(onnx_path).expanduser(), Path(out).expanduser()
    options.validate()
    summary = inspect_onnx(onnx_path, class_names)
    options = fit_options(summary, options)
    shapes = profile_shapes(summary, options)
    trt = import_tensorrt()
    env = env or detect_environment()
    major = trt_major(trt)
    source_sha = sha256_file(onnx_path)
    key = cache_key(source_sha, env, options)
    notes: list[str] = []
    source = _source_for(trt, major, onnx_path, out, options, notes, log)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, input_name = _parse_network(trt, builder, logger, major, source)
    tc_path = Path(options.timing_cache).expanduser() if options.timing_cache else timing_cache_path(
        Path(cache_dir).expanduser() if cache_dir else out.parent, env)
    config = _builder_config(trt, builder, major, options, shapes, input_name, tc_path)
    calib_ops: Any = None
    calibrator: Any = None
    try:
        if major < 11 and options.precision == "int8":
            from vap_video.engines.tensorrt.cuda_ops import cuda_ops

            calib_ops = cuda_ops()
            calibrator = _attach_calibrator(trt, builder, config, calib_ops, options, shapes, input_name,
                                            out.with_suffix(f".{key[:12]}.calib"), log)
        return _build_and_write(trt, logger, builder, network, config, summary, options, shapes, env, key,
                                source, onnx_path, out, source_sha, tc_path, input_name, notes, log, cancel)
    finally:
        # The calibrator's device buffer, pinned batch, stream and CUDA context: the build is over.
        if calibrator is not None:
            calibrator.close()
        if calib_ops is not None:
            calib_ops.release()


def _source_for(trt: Any, major: int, onnx_path: Path, out: Path, options: BuildOptions, notes: list[str],
                log: Callable[[str], None]) -> Path:
    """The ONNX TensorRT parses: the model itself, or on TensorRT 11 (strongly typed networks only)
    a Q/DQ INT8 or a mixed-precision FP16 rewrite of it."""
    if major >= 11 and options.precision == "int8":
        from vap_video.engines.quantize import quantize_qdq

        source = out.with_suffix(".qdq.onnx")
        msg = (f"TensorRT {trt.__version__} builds strongly typed networks only (no INT8 calibrator): writing a Q/DQ "
               f"INT8 ONNX {source.name} calibrated on {options.calibration} and building that")
        log(msg)
        notes.append(msg)
        quantize_qdq(onnx_path, source, options.calibration or "", limit=options.calib_limit, target="tensorrt")
        return source
    if major >= 11 and options.precision == "fp16":
        notes.append(f"TensorRT {trt.__version__}: FP16 from a ModelOpt AutoCast mixed-precision ONNX")
        return _fp16_onnx_for_trt11(onnx_path, out, log)
    return onnx_path


def _parse_network(trt: Any, builder: Any, logger: Any, major: int, source: Path) -> tuple[Any, str]:
    """The parsed network and its one input's name; ModelContractError with the parser's errors."""
    # Explicit batch is the only mode since TensorRT 10 (flag 0); 11 is always strongly typed.
    network = builder.create_network(0) if major < 11 else builder.create_network()
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelContractError(f"{source}: TensorRT's ONNX parser refused the model:\n  " + "\n  ".join(errors))
    if network.num_inputs != 1:
        raise ModelContractError(f"{source}: TensorRT sees {network.num_inputs} inputs; a vap engine has one")
    return network, network.get_input(0).name


def _builder_config(trt: Any, builder: Any, major: int, options: BuildOptions,
                    shapes: list[tuple[Shape4, Shape4, Shape4]], input_name: str, tc_path: Path) -> Any:
    """Workspace, precision flags, one optimisation profile per shape range, and the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if major < 11 and options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 builds keep FP16 for the layers left in float
    for lo, opt, hi in shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
    timing = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    return config


def _attach_calibrator(trt: Any, builder: Any, config: Any, calib_ops: Any, options: BuildOptions,
                       shapes: list[tuple[Shape4, Shape4, Shape4]], input_name: str, cache: Path,
                       log: Callable[[str], None]) -> Any:
    """TensorRT 10 INT8: entropy calibration on letterboxed images; the calibrator must stay
    referenced until the build returns, so it is returned to the caller, which closes it."""
    from vap_video.engines.calibration import calibration_batches

    config.set_flag(trt.BuilderFlag.INT8)
    calib_hw = (shapes[0][1][2], shapes[0][1][3])
    calib_shape = (options.calib_batch, 3, *calib_hw)
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(input_name, calib_shape, calib_shape, calib_shape)
    config.set_calibration_profile(calib_profile)
    log(f"INT8: entropy calibration on up to {options.calib_limit} images from {options.calibration} "
        f"({options.calib_batch} per batch, letterboxed to {calib_hw[0]}x{calib_hw[1]})")
    calibrator = int8_calibrator(
        trt, calib_ops, calibration_batches(options.calibration or "", calib_hw, options.calib_batch,
                                            options.calib_limit),
        calib_shape, cache, log)
    config.int8_calibrator = calibrator
    return calibrator


def _build_and_write(trt: Any, logger: Any, builder: Any, network: Any, config: Any, summary: OnnxSummary,
                     options: BuildOptions, shapes: list[tuple[Shape4, Shape4, Shape4]], env: TrtEnvironment,
                     key: str, source: Path, onnx_path: Path, out: Path, source_sha: str, tc_path: Path,
                     input_name: str, notes: list[str], log: Callable[[str], None],
                     cancel: threading.Event | None) -> Path:
    """Steps 4 and 5 of build_engine: run the build (cancellable), check the plan loads, write it."""
    cancel = cancel or threading.Event()
    progress = BuildProgress(log, cancel)
    monitor = progress_monitor(trt, progress)  # kept referenced until the build returns
    config.progress_monitor = monitor
    profiles_text = "; ".join(f"batch {lo[0]},{opt[0]},{hi[0]} HxW {lo[2]}x{lo[3]}..{hi[2]}x{hi[3]}"
                              for lo, opt, hi in shapes[:len(options.batch_profiles)])
    log(f"building {out.name} from {source.name}: TensorRT {trt.__version__}, {env.device_name or 'GPU'} "
        f"({env.sm}), {options.precision}, {profiles_text} (x{options.contexts} contexts), workspace "
        f"{options.workspace_gib:g} GiB, timing cache {tc_path}")
    t0 = time.monotonic()
    plan = run_cancellable(lambda: builder.build_serialized_network(network, config), cancel, log)
    del monitor
    if plan is None:
        raise BuildFailed(f"TensorRT could not build {source.name} (see its messages above); try a larger "
                          "--workspace or a smaller --batch maximum")
    blob = memoryview(plan).tobytes()
    atomic_write(tc_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    if trt.Runtime(logger).deserialize_cuda_engine(blob) is None:
        raise BuildFailed(f"TensorRT built {out.name} but cannot load it back; rebuild, and report it if it repeats")
    info = summary.info
    hw_max = shapes[0][2][2:]
    meta = sidecar_metadata(
        summary.meta, names=info.names, imgsz=(int(hw_max[0]), int(hw_max[1])), stride=info.stride,
        max_det=info.max_det, dynamic_hw=shapes[0][0][2:] != shapes[0][2][2:], source_model=onnx_path,
        source_sha256=source_sha, env=env, options=options, engine_sha256=_sha256(blob), engine_bytes=len(blob),
        key=key, input_name=input_name, output_name=summary.output_name, built_precision=options.precision,
        end2end=getattr(info, "layout", "end2end") == "end2end", notes=notes)
    atomic_write(out, blob)
    write_sidecar(out, meta)
    log(f"wrote {out} ({len(blob) / 1e6:.1f} MB) and {sidecar_path(out).name} in "
        f"{time.monotonic() - t0:.0f} s")
    return out


def _sha256(blob: bytes) -> str:
    import hashlib

    return hashlib.sha256(blob).hexdigest()


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="vap build-engine", description="Build a TensorRT engine from an ONNX model (needs TensorRT and a GPU)")
    ap.add_argument("model", type=Path, help="ONNX model honouring the engine contract (vap export)")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--fp32", dest="precision", action="store_const", const="fp32")
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="(default)")
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8",
                      help="INT8 with calibration images (--calib); on TensorRT 11 via a Q/DQ ONNX")
    ap.add_argument("--calib", default=None, metavar="DIR_OR_YAML",
                    help="calibration images: a folder or a YOLO data.yaml (train split)")
    ap.add_argument("--calib-limit", type=int, default=256, help="images used for calibration")
    ap.add_argument("--calib-batch", type=int, default=8)
    ap.add_argument("--batch", action="append", default=None, metavar="MIN,OPT,MAX",
                    help="batch range of one optimisation profile; repeat for several (default 1,8,16)")
    ap.add_argument("--hw", default=None, metavar="MIN,OPT,MAX",
                    help="input size range for dynamic-H/W models, e.g. 320x320,640x640,640x640 (default: imgsz)")
    ap.add_argument("--contexts", type=int, default=2,
                    help="execution contexts that may run batches at once (each gets its own profile copy)")
    ap.add_argument("--workspace", type=float, default=4.0, metavar="GIB", help="builder workspace limit")
    ap.add_argument("--timing-cache", default=None, metavar="PATH",
                    help="timing cache file (default: one per TensorRT version and GPU in the cache folder)")
    dest = ap.add_mutually_exclusive_group()
    dest.add_argument("--cache-dir", type=Path, default=None, help="engine cache folder (default: "
                      "$VAP_ENGINE_CACHE or ~/.cache/vap/engines)")
    dest.add_argument("--out", type=Path, default=None, help="write the engine here instead of the cache")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has a matching engine")
    ap.add_argument("--class-names", default=None, metavar="A,B,C",
                    help="comma-separated class names, for models without names in their metadata")
    return ap.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """Command-line flags -> validated BuildOptions (ValueError names the bad flag)."""
    batches = tuple(parse_batch(b) for b in args.batch) if args.batch else DEFAULT_BATCH_PROFILES
    return BuildOptions(precision=args.precision or "fp16", batch_profiles=batches,
                        hw_profile=parse_hw(args.hw) if args.hw else None, contexts=args.contexts,
                        workspace_gib=args.workspace, calibration=_user_path(args.calib),
                        calib_limit=args.calib_limit, calib_batch=args.calib_batch,
                        timing_cache=_user_path(args.timing_cache)).validate()


def _user_path(value: str | None) -> str | None:
    """A path typed by a user, with `~` expanded (a quoted `~` or one from YAML reaches us as is)."""
    return str(Path(value).expanduser()) if value else value


def cli(argv: list[str]) -> int:
    """Entry point of `vap build-engine`. Exit codes: 0 built (or already cached), 1 the build failed,
    2 bad usage or TensorRT missing, 3 the model cannot be used, 130 cancelled with Ctrl-C."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage message
        return int(exc.code or 0)

    def err(msg: str) -> None:
        print(f"vap build-engine: {msg}", file=sys.stderr)

    try:
        options = options_from_args(args)
    except ValueError as exc:
        err(str(exc))
        return EXIT_USAGE
    args.model = args.model.expanduser()
    args.cache_dir = args.cache_dir.expanduser() if args.cache_dir else None
    args.out = args.out.expanduser() if args.out else None
    if args.model.suffix.lower() != ".onnx":
        err(f"{args.model} is not an .onnx model; export one with vap export (an .engine is already built)")
        return EXIT_USAGE
    if options.precision == "int8" and not Path(options.calibration or "").exists():
        err(f"calibration source {options.calibration} does not exist (a folder of images or a data.yaml)")
        return EXIT_USAGE
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    try:
        summary = inspect_onnx(args.model, names)
        options = fit_options(summary, options)
        profile_shapes(summary, options)
    except (ModelContractError, ValueError) as exc:
        return _fail(exc, err)
    try:
        import_tensorrt()
        env = detect_environment()
    except ModelContractError as exc:  # TensorRT missing, or no GPU / driver: the machine, not the model
        err(str(exc))
        return EXIT_USAGE
    cache_dir = args.cache_dir or default_cache_dir()
    if args.out is not None:
        out = args.out
    else:
        decision = decide(args.model, options, cache_dir, env)
        out = decision.path
        if decision.action == "use" and not args.force:
            print(f"{out} is already built for this model, GPU and TensorRT version (use --force to rebuild)")
            return EXIT_OK
        if out.is_file():
            print(f"rebuilding {out.name}: {decision.reason}" if not args.force else f"rebuilding {out.name} (--force)")
    try:
        build_engine(args.model, out, options, env=env, cache_dir=cache_dir, class_names=names)
    except (BuildCancelled, BuildFailed, ModelContractError, ValueError) as exc:
        return _fail(exc, err)
    return EXIT_OK


def _fail(exc: Exception, err: Callable[[str], None]) -> int:
    """Say what went wrong and map it to the command's exit code (documented in `cli`)."""
    err(str(exc))
    for kind, code in ((BuildCancelled, EXIT_CANCELLED), (BuildFailed, EXIT_FAIL), (ModelContractError, EXIT_MODEL)):
        if isinstance(exc, kind):
            return code
    return EXIT_USAGE                     # ValueError: the options do not fit the model


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
