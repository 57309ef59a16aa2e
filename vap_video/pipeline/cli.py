"""`vap` command line.

Exit codes (documented in the README): 0 done (files processed, duration reached, or a clean
shutdown on SIGINT/SIGTERM); 1 runtime failure (a data-path thread died, or the shutdown deadline
passed with work undelivered); 2 bad usage or config; 3 the model cannot be used (file missing,
contract violated); 4 finished, but some inputs were not processed to their end (a file failed to
open or decode, or was truncated; each is named on stderr); 130 a second Ctrl-C forced an
immediate exit; 141 the reader of the output went away (`vap schema config | head`), the status a
tool killed by SIGPIPE reports to the shell.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any
from collections.abc import Callable

from vap_video.pipeline.config import ConfigError

from vap_video.pipeline.run import (EXIT_CONFIG, EXIT_FAIL, EXIT_FORCED, EXIT_INPUTS, EXIT_MODEL,  # noqa: F401 (re-exported)
                          EXIT_OK, EXIT_PIPE, run_pipeline)

log = logging.getLogger("vap")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _delegate(module: str, func: str, command: str = "") -> Callable[[list[str]], int]:
    """Commands implemented in `engines` (training, export, data) keep their own argument parsing.

    An optional package missing on import, or imported lazily once the command runs, ends in a
    message naming the extra that installs it (exit 2), never a ModuleNotFoundError traceback.
    """
    def missing(exc: ModuleNotFoundError) -> int | None:
        root = (exc.name or "").split(".")[0]
        if root not in INSTALL_HINTS:
            return None
        print(f"error: vap {command or module} needs {root}, which is not installed: {INSTALL_HINTS[root]}",
              file=sys.stderr)
        return EXIT_CONFIG

    def run(argv: list[str]) -> int:
        import importlib
        try:
            mod = importlib.import_module(module)
            return int(getattr(mod, func)(argv) or 0)
        except ModuleNotFoundError as exc:
            code = missing(exc)
            if code is None:
                raise
            return code
    return run


INSTALL_HINTS: dict[str, str] = {
    "torch": "pip install torch==2.13.0 'vap-video[train]'",
    "onnx": "pip install 'vap-video[onnx]' (also part of 'vap-video[train]')",
    "matplotlib": "pip install 'vap-video[train]'",
    "ray": "pip install 'vap-video[cluster]'",
    "tensorrt": "pip install 'vap-video[tensorrt]' on a machine with an NVIDIA GPU",
    "pycuda": "pip install 'vap-video[tensorrt]' on a machine with an NVIDIA GPU",
    "pycocotools": "pip install pycocotools (or 'vap-video[dev]')",
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(value: str) -> str:
    """argparse type for --log-level: one of LOG_LEVELS, any case; anything else is a usage error."""
    if value.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {value!r}; use one of {', '.join(LOG_LEVELS)}")
    return value.lower()

DELEGATED: dict[str, tuple[str, str, str]] = {
    "train": ("vap_video.engines.train", "cli", "train the detector on a YOLO-format dataset"),
    "val": ("vap_video.engines.val_cli", "cli",
            "COCO mAP of a checkpoint (both heads) or an engine (.onnx, INT8, TensorRT)"),
    "export": ("vap_video.engines.export", "cli", "export a checkpoint to ONNX under the engine contract"),
    "data": ("vap_video.engines.synth", "cli",
             "synthetic data and dataset checks: vap data synth ..., vap data check DATA.yaml"),
    "track": ("vap_video.pipeline.tools.track_eval", "cli_track", "run the tracker offline on MOTChallenge detections"),
    "eval": ("vap_video.pipeline.tools.track_eval", "cli_eval", "tracking metrics: vap eval track GT PRED"),
    "build-engine": ("vap_video.engines.tensorrt.build", "cli",
                     "build a TensorRT engine from an ONNX model (needs TensorRT)"),
    "quantize": ("vap_video.engines.quantize", "cli", "CPU INT8: static Q/DQ quantisation with calibration images"),
    "dehaze": ("vap_video.pipeline.tools.dehaze_preview", "cli",
               "preview the dehazing stage on an image, folder or video"),
    "cluster": ("vap_video.pipeline.cluster.cli", "cli", "scale out on Ray: vap cluster plan | config | up | status"),
}


def main(argv: list[str] | None = None) -> int:
    """The `vap` entry point: runs a command, and ends quietly when the reader of its output leaves.

    Why here, once, and not `signal(SIGPIPE, SIG_DFL)`: the default action would also kill a
    running pipeline whenever an HTTP client or a broker closes a socket mid-write. Python ignores
    SIGPIPE and raises BrokenPipeError instead, from `print` or from the final flush at exit; both
    happen inside this guard (stdout is flushed before returning), so every command that prints,
    delegated ones included, gets the same behaviour.
    """
    try:
        try:
            return _main(argv)
        finally:  # also after SystemExit (--help): a reader that left shows here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        if not _output_gone():
            raise  # a pipe other than our own output broke: a real error, shown as such
        _silence_output()
        return EXIT_PIPE


def _output_gone() -> bool:
    """True when stdout or stderr is a pipe or socket whose reader has closed it."""
    import select

    poller = select.poll()
    fds = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fds.append(stream.fileno())
        except (AttributeError, OSError, ValueError):
            continue
    for fd in fds:
        poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null, so the interpreter's flush at exit finds nothing to fail on."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    os.close(devnull)


def _main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command: delegated ones first (they parse their own
    arguments), then the built-in ones through `COMMANDS`; config and model errors become one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _run_delegated(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.cmd is None:
        parser.print_help()
        return EXIT_CONFIG
    command = COMMANDS.get(args.cmd)
    if command is None:  # a delegated name after a global option (`vap --log-level debug train`)
        parser.error(f"unknown command {args.cmd}")
        return EXIT_CONFIG
    try:
        return command(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except _model_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL


def _run_delegated(argv: list[str]) -> int:
    """`vap train ...`, `vap data synth ...` and the other `DELEGATED` commands."""
    module, func, _ = DELEGATED[argv[0]]
    rest = argv[1:]
    if argv[0] == "data" and rest[:1] == ["synth"]:
        rest = rest[1:]
    return _delegate(module, func, argv[0])(rest)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the built-in commands; delegated ones are listed for `--help` only."""
    from vap_video.pipeline import __version__

    parser = argparse.ArgumentParser(prog="vap", description="Streaming video analytics pipeline")
    parser.add_argument("--version", action="version", version=f"vap {__version__}")
    # argparse runs `type` on a string default too, so a bad $VAP_LOG_LEVEL is refused like the flag
    parser.add_argument("--log-level", type=_log_level, default=os.environ.get("VAP_LOG_LEVEL", "info"),
                        help=f"{', '.join(LOG_LEVELS)} (default: $VAP_LOG_LEVEL or info)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    _add_run_parser(sub)
    _add_demo_parser(sub)
    p = sub.add_parser("validate", help="check a deployment YAML and print it with every default resolved")
    p.add_argument("config", type=Path)
    p = sub.add_parser("schema", help="print a JSON Schema")
    p.add_argument("which", choices=["config", "event"], nargs="?", default="config")
    p.add_argument("--markdown", action="store_true", help="the reference as Markdown tables (config or event)")
    _add_bench_parser(sub)
    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a deployment YAML, or sources directly: vap run clip.mp4 --save out/",
                       description="vap run CONFIG.yaml runs a deployment. vap run SOURCE [SOURCE ...] runs "
                       "videos, folders, globs, rtsp/http URLs or /dev/videoN directly with the shipped model "
                       "(or --model); --save DIR writes DIR/events.jsonl and an annotated DIR/<stream>.mp4. "
                       "The options below also override a YAML's values.")
    p.add_argument("inputs", nargs="+", metavar="CONFIG_OR_SOURCE",
                   help="one .yaml/.yml deployment file, or one or more sources")
    p.add_argument("--model", type=Path, default=None, help="engine file (default: the shipped vap-synth-n.onnx)")
    p.add_argument("--save", type=Path, default=None, metavar="DIR",
                   help="write DIR/events.jsonl and an annotated DIR/<stream>.mp4 per stream")
    p.add_argument("--conf", type=float, default=None, help="score threshold for every class (0..1)")
    p.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="keep only these classes (names of the model's classes; commas also separate)")
    p.add_argument("--port", type=int, default=None,
                   help="sources: serve /metrics and the API on this port (default: no server)")
    p.add_argument("--quiet", action="store_true", help="no live progress (for services)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


def _add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the shipped model on synthetic cameras and a file; ends by itself")
    p.add_argument("--out", type=Path, default=Path("vap-demo"), help="folder for events, video and summary")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of live synthetic streams")
    p.add_argument("--cameras", type=int, default=2, help="number of synthetic cameras")
    p.add_argument("--model", type=Path, default=None, help="engine to run (default: the shipped model)")
    p.add_argument("--port", type=int, default=9108, help="metrics/API port (0 = any free port)")
    p.add_argument("--quiet", action="store_true")


def _add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure engine and pipeline throughput and latency on this machine")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks"))
    p.add_argument("--quick", action="store_true", help="short runs (smoke test of the benchmark itself)")
    p.add_argument("--soak-s", type=float, default=0.0, help="also run a multi-stream memory soak this long")
    p.add_argument("--stages", action="store_true", help="per-frame CPU budget of every stage, full-frame vs "
                   "one-pass decoding, and the batch size x intra-op threads grid (benchmarks/pipeline.md)")
    p.add_argument("--engine-only", action="store_true",
                   help="only the engine: every backend and precision this machine can run, per batch size")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for --engine-only (comma-separated)")
    p.add_argument("--checkpoint", type=Path, default=None, help="--engine-only: .pt for the torch backend "
                   "(default: MODEL.pt next to the model)")
    p.add_argument("--int8", type=Path, default=None, help="--engine-only: INT8 model (default: MODEL.int8.onnx)")


def cmd_demo(args: argparse.Namespace) -> int:
    from vap_video.pipeline.tools.demo import run_demo
    return run_demo(args.out, duration=args.duration, cameras=args.cameras, port=args.port, quiet=args.quiet,
                    model=args.model)


def cmd_bench(args: argparse.Namespace) -> int:
    """`vap bench`: the engine grid (--engine-only), the stage budget (--stages) or the pipeline."""
    if args.engine_only:
        return cmd_bench_engines(args)
    if args.stages:
        from vap_video.pipeline.tools.bench_stages import run_stages
        return run_stages(args.model, args.out, quick=args.quick)
    from vap_video.pipeline.tools.bench import run_bench
    return run_bench(args.model, args.out, quick=args.quick, soak_s=args.soak_s)


def cmd_run(args: argparse.Namespace) -> int:
    """`vap run CONFIG.yaml` (a deployment) or `vap run SOURCE [SOURCE ...]` (no YAML needed)."""
    from vap_video.pipeline.preflight import check_streams_present
    from vap_video.pipeline.quickrun import is_config_path, source_settings
    from vap_video.pipeline.settings import load_settings

    classes = [c.strip() for arg in args.classes for c in arg.split(",") if c.strip()] if args.classes else None
    if is_config_path(args.inputs):
        source = args.inputs[0]
        settings = load_settings(args.inputs[0])
        _override(settings, args.model, args.save, args.conf, classes)
    else:
        source = "command line"
        settings = source_settings(args.inputs, args.model, args.save, args.conf, classes, args.port)
        if args.save is None:
            events = getattr(settings.sinks[0], "path", "the configured sinks")
            print(f"events go to {events} (--save DIR writes events and annotated videos to DIR)", file=sys.stderr)
    check_streams_present(settings, source)
    code = run_pipeline(settings, quiet=args.quiet, duration=args.duration)
    if args.save is not None and code in (EXIT_OK, EXIT_INPUTS):
        print(f"saved: {args.save / 'events.jsonl'} and the annotated videos in {settings.annotate.dir}/",
              file=sys.stderr)
    return code


def _override(settings: Any, model: Path | None, save: Path | None, conf: float | None,
              classes: list[str] | None) -> None:
    """Command-line options over a YAML's values (validated like the YAML: ConfigError on a bad one)."""
    from pydantic import ValidationError

    from vap_video.pipeline.settings import format_validation_error
    from vap_video.pipeline.sinks import JsonlSinkConfig
    try:
        if model is not None:
            settings.model.path = model
        if conf is not None:
            settings.model.conf = conf
        if classes:
            settings.model.classes = classes
        if save is not None:
            settings.sinks = [*settings.sinks, JsonlSinkConfig(name="save", path=save / "events.jsonl")]
            settings.annotate.dir = save
            settings.annotate.enabled = True
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "command line")) from None


def _model_errors() -> tuple[type[BaseException], ...]:
    from vap_video.engines.contract import ModelContractError
    return (ModelContractError,)


def cmd_bench_engines(args: argparse.Namespace) -> int:
    from vap_video.pipeline.tools.bench_engines import markdown, run_engine_bench
    from vap_video.pipeline.model_config import SHIPPED_MODEL

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
    """Everything knowable before a run: the YAML, the model (it loads, its class names match the
    config's), and that every input file opens. A config this calls valid also starts."""
    from vap_video.pipeline.preflight import (check_class_names, check_input_files, check_streams_present,
                                              load_model_names)
    from vap_video.pipeline.settings import load_settings, resolved_yaml
    settings = load_settings(path)
    check_streams_present(settings, str(path))
    names, kind = load_model_names(settings)
    if names is not None:
        check_class_names(settings, names)
    problems = check_input_files(settings)
    classes = f"{len(names)} classes: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}" \
        if names is not None else "class names not checked (TensorRT models are opened by the run)"
    print(f"# {path}: valid ({len(settings.streams)} streams). Model {settings.model.path} ({kind}, {classes}).")
    print("# Resolved with defaults:")
    print(resolved_yaml(settings), end="")
    if problems:
        # The config itself is valid (it may be meant for another machine), but a run here would
        # end with these inputs failed: the same exit code as that run.
        print(f"warning: {path}: {len(problems)} input file(s) cannot be used here (exit {EXIT_INPUTS}):",
              file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_INPUTS
    return EXIT_OK


def cmd_schema(which: str, markdown: bool = False) -> int:
    if markdown and which == "event":
        from vap_video.pipeline.tools.docs import event_reference
        print(event_reference(), end="")
    elif markdown:
        from vap_video.pipeline.tools.docs import config_reference
        print(config_reference(), end="")
    elif which == "event":
        from vap_video.pipeline.events import load_schema
        print(json.dumps(load_schema(), indent=2))
    else:
        from vap_video.pipeline.settings import Settings
        print(json.dumps(Settings.model_json_schema(), indent=2))
    return EXIT_OK


# The built-in commands, by name (`build_parser` defines their arguments).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "demo": cmd_demo,
    "validate": lambda args: cmd_validate(args.config),
    "schema": lambda args: cmd_schema(args.which, args.markdown),
    "bench": cmd_bench,
}


if __name__ == "__main__":
    sys.exit(main())
