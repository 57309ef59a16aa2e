"""`vap` command line.

Exit codes (documented in the README): 0 done (files processed, duration reached, or a clean
shutdown on SIGINT/SIGTERM); 1 runtime failure (a data-path thread died, or the shutdown deadline
passed with work undelivered); 2 bad usage or config; 3 the model cannot be used (file missing,
contract violated); 130 a second Ctrl-C forced an immediate exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.config import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_MODEL, EXIT_FORCED = 0, 1, 2, 3, 130

log = logging.getLogger("vap")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _delegate(module: str, func: str) -> Callable[[list[str]], int]:
    """Commands implemented in `engines` (training, export, data) keep their own argument parsing."""
    def run(argv: list[str]) -> int:
        import importlib
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root in INSTALL_HINTS:
                print(f"error: this command needs {root}: {INSTALL_HINTS[root]}", file=sys.stderr)
                return EXIT_CONFIG
            raise
        return int(getattr(mod, func)(argv) or 0)
    return run


INSTALL_HINTS: dict[str, str] = {
    "torch": "pip install torch==2.13.0 'vap[train]'",
    "ray": "pip install 'vap[cluster]'",
    "tensorrt": "pip install 'vap[tensorrt]' on a machine with an NVIDIA GPU",
}

DELEGATED: dict[str, tuple[str, str, str]] = {
    "train": ("engines.train", "cli", "train the detector on a YOLO-format dataset"),
    "val": ("engines.train", "val_cli", "evaluate a checkpoint (COCO mAP, both heads)"),
    "export": ("engines.export", "cli", "export a checkpoint to ONNX under the engine contract"),
    "data": ("engines.synth", "cli", "synthetic data and dataset checks: vap data synth ..., vap data check DATA.yaml"),
    "track": ("pipeline.track_eval", "cli_track", "run the tracker offline on MOTChallenge detections"),
    "eval": ("pipeline.track_eval", "cli_eval", "tracking metrics: vap eval track GT PRED"),
    "build-engine": ("engines.tensorrt.build", "cli", "build a TensorRT engine from an ONNX model (needs TensorRT)"),
    "quantize": ("engines.quantize", "cli", "CPU INT8: static Q/DQ quantisation with calibration images"),
    "dehaze": ("pipeline.dehaze_cli", "cli", "preview the dehazing stage on an image, folder or video"),
    "cluster": ("pipeline.cluster.cli", "cli", "scale out on Ray: vap cluster plan | up"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module, func, _ = DELEGATED[argv[0]]
        rest = argv[1:]
        if argv[0] == "data" and rest[:1] == ["synth"]:
            rest = rest[1:]
        return _delegate(module, func)(rest)

    parser = argparse.ArgumentParser(prog="vap", description="Streaming video analytics pipeline")
    parser.add_argument("--log-level", default=os.environ.get("VAP_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("run", help="run the pipeline from a deployment YAML")
    p.add_argument("config", type=Path)
    p.add_argument("--quiet", action="store_true", help="no live progress (for services)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

    p = sub.add_parser("demo", help="run the shipped model on synthetic cameras and a file; ends by itself")
    p.add_argument("--out", type=Path, default=Path("vap-demo"), help="folder for events, video and summary")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of live synthetic streams")
    p.add_argument("--cameras", type=int, default=2, help="number of synthetic cameras")
    p.add_argument("--model", type=Path, default=None, help="engine to run (default: the shipped model)")
    p.add_argument("--port", type=int, default=9108, help="metrics/API port (0 = any free port)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("validate", help="check a deployment YAML and print it with every default resolved")
    p.add_argument("config", type=Path)

    p = sub.add_parser("schema", help="print a JSON Schema")
    p.add_argument("which", choices=["config", "event"], nargs="?", default="config")
    p.add_argument("--markdown", action="store_true", help="config reference as Markdown tables")

    p = sub.add_parser("bench", help="measure engine and pipeline throughput and latency on this machine")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--quick", action="store_true", help="short runs (smoke test of the benchmark itself)")
    p.add_argument("--soak-s", type=float, default=0.0, help="also run a multi-stream memory soak this long")
    p.add_argument("--engine-only", action="store_true",
                   help="only the engine: every backend and precision this machine can run, per batch size")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for --engine-only (comma-separated)")
    p.add_argument("--checkpoint", type=Path, default=None, help="--engine-only: .pt for the torch backend "
                   "(default: MODEL.pt next to the model)")
    p.add_argument("--int8", type=Path, default=None, help="--engine-only: INT8 model (default: MODEL.int8.onnx)")

    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)

    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.cmd is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        if args.cmd == "validate":
            return cmd_validate(args.config)
        if args.cmd == "schema":
            return cmd_schema(args.which, args.markdown)
        if args.cmd == "run":
            from pipeline.settings import load_settings
            return run_pipeline(load_settings(args.config), quiet=args.quiet, duration=args.duration)
        if args.cmd == "demo":
            from pipeline.demo import run_demo
            return run_demo(args.out, duration=args.duration, cameras=args.cameras, port=args.port, quiet=args.quiet,
                            model=args.model)
        if args.cmd == "bench" and args.engine_only:
            return cmd_bench_engines(args)
        if args.cmd == "bench":
            from pipeline.bench import run_bench
            return run_bench(args.model, args.out, quick=args.quick, soak_s=args.soak_s)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except _model_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    parser.error(f"unknown command {args.cmd}")
    return EXIT_CONFIG


def _model_errors() -> tuple[type[BaseException], ...]:
    from engines.contract import ModelContractError
    return (ModelContractError,)


def cmd_bench_engines(args: argparse.Namespace) -> int:
    from pipeline.bench_engines import markdown, run_engine_bench
    from pipeline.model_config import SHIPPED_MODEL

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batches must be comma-separated integers, got {args.batches!r}") from None
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batches needs positive batch sizes, got {args.batches!r}")
    model = args.model or SHIPPED_MODEL
    if not model.is_file():
        print(f"error: model {model} not found (pass --model)", file=sys.stderr)
        return EXIT_MODEL
    result = run_engine_bench(model, args.out, batches, 1.0 if args.quick else 4.0, args.checkpoint, args.int8)
    print(markdown(result), end="")
    for s in result["skipped"]:
        print(f"not measured: {s['variant']}: {s['why']}")
    return EXIT_OK


def cmd_validate(path: Path) -> int:
    from pipeline.settings import load_settings, resolved_yaml
    settings = load_settings(path)
    print(f"# {path}: valid ({len(settings.streams)} streams). Resolved with defaults:")
    print(resolved_yaml(settings), end="")
    return EXIT_OK


def cmd_schema(which: str, markdown: bool = False) -> int:
    if markdown:
        from pipeline.docs import config_reference
        print(config_reference(), end="")
    elif which == "event":
        from pipeline.events import load_schema
        print(json.dumps(load_schema(), indent=2))
    else:
        from pipeline.settings import Settings
        print(json.dumps(Settings.model_json_schema(), indent=2))
    return EXIT_OK


def run_pipeline(settings, quiet: bool = False, duration: float | None = None,  # type: ignore[no-untyped-def]
                 prepare: Callable[[Any], None] | None = None, on_done: Callable[[Any], None] | None = None) -> int:
    """Run until files are done, `duration` passes, or SIGINT/SIGTERM; then drain and flush.

    `prepare` gets the pipeline before its first frame (to install result hooks); `on_done` gets
    the stopped pipeline (for summaries).
    """
    from pipeline.api import ApiServer
    from pipeline.progress import Progress
    from pipeline.runtime import Pipeline

    pipeline = Pipeline(settings)
    if prepare:
        prepare(pipeline)
    server = None
    if settings.server.enabled:
        try:
            server = ApiServer(pipeline, settings.server.host, settings.server.port)
        except ConfigError:
            pipeline.stop(timeout=2)  # release the sinks it opened
            raise
        server.start()
        log.info("console on %s/ (also /metrics /healthz /readyz /streams)%s", server.url,
                 "" if server.token else f"; no API token: set ${settings.server.token_env} to require one")
    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            print("\nforced exit: events still in flight may be lost", file=sys.stderr)
            os._exit(EXIT_FORCED)
        log.info("%s received: draining (Ctrl-C again to force)", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    progress = None if quiet else Progress(pipeline)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        pipeline.start()
        while not stop.is_set():
            if pipeline.error is not None or pipeline.files_done():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if progress:
                progress.tick()
            stop.wait(0.2)
    finally:
        clean = pipeline.stop()
        if progress:
            progress.close()
        if server:
            server.close()
        for s, h in old.items():
            signal.signal(s, h)
        if on_done:
            on_done(pipeline)
    if pipeline.error is not None:
        print(f"error: data path failed: {pipeline.error}", file=sys.stderr)
        return EXIT_FAIL
    if not clean:
        print("error: shutdown deadline passed before every event was delivered", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
