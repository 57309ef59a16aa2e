"""Which TensorRT plan to run for a model: check a built one, or find or build one in the cache.

The step above the cache (`cache`: keys, sidecars, decisions) and the builder (`build`): it uses
both, so neither has to import the other. Importing it needs no TensorRT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vap_video.engines.contract import ModelContractError
from vap_video.engines.metadata import sha256_file
from vap_video.engines.tensorrt.build import BuildFailed, build_engine
from vap_video.engines.tensorrt.profiles import checked_options
from vap_video.engines.tensorrt.progress import BuildCancelled
from vap_video.engines.tensorrt.cache import (
    BuildOptions,
    TrtEnvironment,
    check_sidecar,
    decide,
    default_cache_dir,
    detect_environment,
    options_from_sidecar,
    rebuild_command,
)
from vap_video.engines.tensorrt.plan_file import read_sidecar_raw

__all__ = ["resolve_engine", "BuildFn", "PrepareFn"]

BuildFn = Callable[[Path, Path, BuildOptions], Path]
PrepareFn = Callable[[Path, BuildOptions], BuildOptions]


def resolve_engine(onnx_or_engine: str | Path, options: BuildOptions, cache_dir: str | Path | None = None,
                   build_missing: bool = False, env: TrtEnvironment | None = None, build: BuildFn | None = None,
                   log: Callable[[str], None] = print, class_names: list[str] | None = None,
                   prepare: PrepareFn | None = None) -> Path:
    """The plan to run for `onnx_or_engine`, built first when allowed.

    An `.engine`/`.plan` path is checked (sidecar present and fresh, same TensorRT version and GPU)
    and returned. An `.onnx` path is first checked against the options (`prepare`, by default
    `build.checked_options`: a fixed-batch model gets its own batch as the default profile, and
    options that contradict the model are refused here, before any "this takes minutes"), then
    looked up in `cache_dir`; a missing or stale plan is built (with a visible message) when
    `build_missing`, else this raises a `ModelContractError` that gives the `vap build-engine`
    command. Every failure, building included (bad options, TensorRT refusing, Ctrl-C), is a
    `ModelContractError` with a message, never a traceback for `vap run`. `class_names` is for
    models without names in their metadata. `env`/`build`/`prepare` are injectable for tests.
    """
    path = Path(onnx_or_engine).expanduser()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not path.is_file():
        raise ModelContractError(f"model file {path} does not exist; check model.path in the config")
    try:
        options.validate()
    except ValueError as exc:
        raise ModelContractError(f"model.tensorrt options: {exc}") from None
    suffix = path.suffix.lower()
    if suffix in (".engine", ".plan", ".trt"):
        env = env or detect_environment()
        try:
            meta = read_sidecar_raw(path)
        except ValueError as exc:
            raise ModelContractError(f"{exc}; delete it and rebuild the engine with vap build-engine") from None
        if meta is not None:
            check_sidecar(meta, path, env, sha256_file(path),
                          hint=rebuild_command(meta.get("source_model", "MODEL.onnx"), options_from_sidecar(meta),
                                               force=True))
        return path
    if suffix != ".onnx":
        raise ModelContractError(f"{path}: TensorRT takes an .onnx model (built into the cache) or a built "
                                 f".engine/.plan, not {path.suffix!r}")
    if prepare is None:
        def prepare(src: Path, opts: BuildOptions) -> BuildOptions:
            return checked_options(src, opts, class_names)
    try:
        options = prepare(path, options)
    except ValueError as exc:
        raise ModelContractError(f"{path.name}: cannot build a TensorRT engine with these options: {exc}") from None
    env = env or detect_environment()
    decision = decide(path, options, cache_dir, env)
    if decision.action == "use":
        return decision.path
    command = rebuild_command(path, options, cache_dir, force=decision.path.is_file())
    if not build_missing:
        raise ModelContractError(
            f"{path}: no usable TensorRT engine in {cache_dir}: {decision.reason}. Build it with `{command}` "
            "(takes minutes) or set model.tensorrt.build_missing: true to build it on start.")
    log(f"building TensorRT engine for {path.name} ({decision.reason}); this takes minutes, once per model, "
        f"GPU and TensorRT version. Same as: {command}")
    if build is None:
        def build(src: Path, out: Path, opts: BuildOptions) -> Path:
            return build_engine(src, out, opts, env=env, cache_dir=cache_dir, log=log, class_names=class_names)
    try:
        built = build(path, decision.path, options)
    except BuildCancelled as exc:
        raise ModelContractError(f"building the TensorRT engine for {path.name} was cancelled ({exc}); start "
                                 f"again to build it, or build it beforehand with `{command}`") from None
    except BuildFailed as exc:
        raise ModelContractError(f"{exc}. Same build by hand: `{command}`") from None
    except ValueError as exc:
        raise ModelContractError(f"{path.name}: cannot build a TensorRT engine with these options: {exc}") from None
    meta = read_sidecar_raw(built)
    if meta is None:
        raise ModelContractError(f"{built}: the build wrote no sidecar; rebuild with `{command}`")
    check_sidecar(meta, built, env, sha256_file(built), decision.source_sha256, hint=command)
    return built
