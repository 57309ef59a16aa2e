"""``vap dehaze INPUT --out OUTPUT``: preview the dehazing stage on your own pictures or footage.

INPUT is an image (.jpg, .png, .bmp, .tif, .webp), a folder of images, or a video file. Settings come
from the same place as in a deployment: ``--config deploy.yaml [--stream NAME]`` takes that stream's
effective ``dehaze`` section (the stream's override, else the global one); flags override single
keys. The stage is always applied here (a preview), even where the YAML has ``enabled: false``.

Prints, per image (and per second of video), the haze score, the gate state, A and the time per
frame, then a summary. Exit codes: 0 ok, 1 runtime failure, 2 bad usage, config or input.

Examples::

    vap dehaze foggy.jpg --out clear.jpg
    vap dehaze frames/ --out dehazed/ --mode clahe
    vap dehaze cam1.mp4 --out cam1-dehazed.mp4 --config deploy.yaml --stream cam1 --no-gate
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.dehaze import DehazeConfig, Dehazer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".ts", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv"}
# output container -> encoder: each container takes only some codecs (webm: VP8/VP9 only; flv: FLV1,
# and FFmpeg's flv muxer rejects MPEG-4 part 2 with a bare "Invalid argument")
OUTPUT_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".m4v": "libx264",
                 ".avi": "mpeg4", ".ts": "mpeg4", ".mpg": "mpeg1video", ".mpeg": "mpeg1video",
                 ".webm": "libvpx", ".flv": "flv"}

# flag name -> DehazeConfig field (each flag overrides one key of the YAML section)
_FLAGS: dict[str, tuple[str, type]] = {
    "mode": ("mode", str),
    "omega": ("omega", float),
    "t0": ("t0", float),
    "patch": ("patch", int),
    "work_size": ("work_size", int),
    "guided_radius": ("guided_radius", int),
    "guided_eps": ("guided_eps", float),
    "gate_on": ("gate_on", float),
    "gate_off": ("gate_off", float),
    "airlight_alpha": ("airlight_alpha", float),
    "airlight_every": ("airlight_every", int),
    "sky_tolerance": ("sky_tolerance", float),
}


class UsageError(Exception):
    """Bad arguments, config or input; the message says what to do."""


class RunFailure(Exception):
    """The input was fine but processing it failed (exit 1)."""


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative; give 0 (all frames) or a positive count")
    return n


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vap dehaze", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="image, folder of images, or video file")
    ap.add_argument("--out", required=True, help="output image, folder or video (.mp4/.mkv)")
    ap.add_argument("--config", help="deployment YAML to take the dehaze settings from")
    ap.add_argument("--stream", help="stream in --config whose settings to use (default: the global section)")
    ap.add_argument("--gate", dest="gate", action="store_true", default=None, help="use the haze gate")
    ap.add_argument("--no-gate", dest="gate", action="store_false", help="dehaze every frame")
    ap.add_argument("--mode", choices=("dcp", "clahe"))
    ap.add_argument("--omega", type=float)
    ap.add_argument("--t0", type=float)
    ap.add_argument("--patch", type=int, help="dark-channel patch for a 600 px picture")
    ap.add_argument("--work-size", type=int, help="long side of the low-resolution working copy")
    ap.add_argument("--guided-radius", type=int)
    ap.add_argument("--guided-eps", type=float)
    ap.add_argument("--gate-on", type=float)
    ap.add_argument("--gate-off", type=float)
    ap.add_argument("--airlight-alpha", type=float)
    ap.add_argument("--airlight-every", type=int)
    ap.add_argument("--sky-tolerance", type=float)
    ap.add_argument("--max-frames", type=_non_negative, default=0, help="video: stop after N frames (0 = all)")
    ap.add_argument("--side-by-side", action="store_true", help="write input and output next to each other")
    ap.add_argument("--quiet", action="store_true", help="summary only")
    return ap


def resolve_config(args: argparse.Namespace) -> DehazeConfig:
    """The YAML's dehaze section (stream override, else global), then the flags, always enabled."""
    base: dict[str, Any] = {}
    if args.config:
        from vap_video.pipeline.settings import load_settings

        settings = load_settings(args.config)  # ConfigError names the problem
        if args.stream:
            match = [s for s in settings.streams if s.name == args.stream]
            if not match:
                names = ", ".join(s.name for s in settings.streams) or "none"
                raise UsageError(f"--stream {args.stream}: no such stream in {args.config} (streams: {names})")
            base = settings.stream_dehaze(match[0]).model_dump()
        else:
            base = settings.dehaze.model_dump()
    elif args.stream:
        raise UsageError("--stream needs --config (the deployment YAML the stream is defined in)")
    for flag, (key, _) in _FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            base[key] = v
    if args.gate is not None:
        base["gate"] = args.gate
    if args.config and not base.get("enabled", False):
        where = f"stream {args.stream}" if args.stream else "the global dehaze section"
        print(f"note: {where} has enabled: false in {args.config}; previewing with the stage on anyway")
    base["enabled"] = True
    try:
        return DehazeConfig(**base)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'dehaze'}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise UsageError(f"invalid dehaze settings: {problems}") from None


def _read_image(path: Path) -> np.ndarray:
    """RGB (or grey) uint8; grey files stay single-channel so the stage's grey path is previewable."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UsageError(f"{path}: not a readable image (supported: {', '.join(sorted(IMAGE_SUFFIXES))})")
    if raw.dtype == np.uint16:  # full scale is 65535, not the image's maximum (a dim picture stays dim)
        raw = (raw.astype(np.float32) * np.float32(255.0 / 65535.0) + np.float32(0.5)).astype(np.uint8)
    elif raw.dtype != np.uint8:
        raise UsageError(f"{path}: {raw.dtype} pixels are not supported; give an 8- or 16-bit image")
    if raw.ndim == 2:
        return raw
    if raw.shape[2] == 4:
        raw = raw[:, :, :3]
    return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)


def _write_image(path: Path, img: np.ndarray) -> None:
    bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise UsageError(f"{path}: cannot write (check the folder exists and the suffix is an image type)")


def _line(name: str, d: Dehazer) -> str:
    info = d.last
    a = "-" if info.airlight is None else "(" + ", ".join(f"{v:.3f}" for v in info.airlight.tolist()) + ")"
    return (f"{name}: haze score {info.score:.3f}, gate {'on' if info.active else 'off'}, A {a}, "
            f"{info.seconds * 1000:.1f} ms")


def _compose(src: np.ndarray, out: np.ndarray, side_by_side: bool) -> np.ndarray:
    return np.hstack([src, out]) if side_by_side else out


def _summary(times: list[float], scores: list[float], on: list[bool]) -> str:
    t = np.asarray(times) * 1000
    return (f"{len(times)} frame(s): mean haze score {np.mean(scores):.3f}, gate on for "
            f"{100 * np.mean(on):.0f}%, {np.median(t):.1f} ms/frame median, {np.percentile(t, 95):.1f} ms p95")


def run_images(paths: list[Path], out: Path, cfg: DehazeConfig, out_is_dir: bool, side_by_side: bool,
               quiet: bool) -> int:
    """Each picture is its own scene: a fresh state per image (no A or gate carried between them)."""
    times, scores, on = [], [], []
    skipped: list[str] = []
    for p in paths:
        try:
            img = _read_image(p)
        except UsageError as exc:
            if len(paths) == 1:
                raise
            skipped.append(p.name)  # one broken file in a folder must not stop the preview of the rest
            print(f"skipped {exc}", file=sys.stderr)
            continue
        d = Dehazer(cfg)
        res = d.process(img)
        target = out / p.name if out_is_dir else out
        _write_image(target, _compose(img, res, side_by_side))
        times.append(d.last.seconds)
        scores.append(d.last.score)
        on.append(d.last.active)
        if not quiet:
            print(_line(p.name, d) + f" -> {target}")
    if not times:
        raise UsageError(f"none of the {len(paths)} image(s) could be read")
    print(_summary(times, scores, on) + (f"; {len(skipped)} unreadable image(s) skipped: {', '.join(skipped)}"
                                         if skipped else ""))
    return 0


def run_video(src: Path, out: Path, cfg: DehazeConfig, max_frames: int, side_by_side: bool, quiet: bool) -> int:
    """One stream: the gate and smoothed A carry from frame to frame, as in the runtime."""
    import av
    from av.video.stream import VideoStream  # also in PyAV 12 (av.VideoStream is newer)

    try:
        inp = av.open(str(src))
    except Exception as exc:  # PyAV raises several error types for unreadable input
        raise UsageError(f"{src}: cannot open as a video ({type(exc).__name__}: {exc})") from None
    d = Dehazer(cfg)
    times, scores, on = [], [], []
    try:
        if not inp.streams.video:
            raise UsageError(f"{src}: has no video stream")
        vs = inp.streams.video[0]
        rate = vs.average_rate or Fraction(25)
        fps = float(rate)
        with av.open(str(out), mode="w") as outc:
            enc: VideoStream | None = None
            for i, frame in enumerate(inp.decode(vs)):
                if max_frames and i >= max_frames:
                    break
                img = frame.to_ndarray(format="rgb24")
                res = _compose(img, d.process(img), side_by_side)
                if enc is None:
                    codec = OUTPUT_CODECS[out.suffix.lower()]
                    try:
                        stream = outc.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
                    except (ValueError, av.error.FFmpegError) as exc:  # encoder missing from this FFmpeg build
                        raise UsageError(f"--out {out}: cannot write {out.suffix} here ({codec}: {exc}); "
                                         "use .mp4 or .mkv") from None
                    if not isinstance(stream, VideoStream):
                        raise UsageError(f"--out {out}: {codec} is not a video encoder; use .mp4 or .mkv")
                    enc = stream
                    enc.width, enc.height = res.shape[1] // 2 * 2, res.shape[0] // 2 * 2
                    enc.pix_fmt = "yuv420p"
                res = np.ascontiguousarray(res[:enc.height, :enc.width])
                for pkt in enc.encode(av.VideoFrame.from_ndarray(res, format="rgb24")):
                    outc.mux(pkt)
                times.append(d.last.seconds)
                scores.append(d.last.score)
                on.append(d.last.active)
                if not quiet and i % max(1, round(fps)) == 0:
                    print(_line(f"frame {i}", d), flush=True)
            if enc is None:
                raise UsageError(f"{src}: no frames could be decoded")
            for pkt in enc.encode():
                outc.mux(pkt)
    except av.error.FFmpegError as exc:
        raise RunFailure(f"{src} -> {out}: video error: {exc}") from None
    finally:
        inp.close()
    print(_summary(times, scores, on) + f" -> {out}")
    return 0


def cli(argv: list[str]) -> int:
    """Entry point of ``vap dehaze``; returns the exit code."""
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage problem
        return int(exc.code or 0) and 2
    src, out = Path(args.input), Path(args.out)
    try:
        cfg = resolve_config(args)
        if not src.exists():
            raise UsageError(f"{src}: no such file or folder")
        if src.is_dir():
            paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise UsageError(f"{src}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out {out}: is a file; a folder input needs an output folder")
            if out.resolve() == src.resolve():
                raise UsageError("--out must differ from the input folder (the originals would be overwritten)")
            out.mkdir(parents=True, exist_ok=True)
            return run_images(paths, out, cfg, True, args.side_by_side, args.quiet)
        suffix = src.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            out_is_dir = out.is_dir()
            if not out_is_dir and out.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(f"--out {out}: give an image file name ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                                 "or an existing folder")
            return run_images([src], out, cfg, out_is_dir, args.side_by_side, args.quiet)
        if suffix in VIDEO_SUFFIXES:
            if out.suffix.lower() not in OUTPUT_CODECS:
                raise UsageError(f"--out {out}: give a video file name ({', '.join(sorted(OUTPUT_CODECS))})")
            if out.resolve() == src.resolve():
                raise UsageError("--out must differ from the input video")
            return run_video(src, out, cfg, args.max_frames, args.side_by_side, args.quiet)
        raise UsageError(f"{src}: unsupported input; give an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         f"a folder of images, or a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    except (UsageError, ConfigError) as exc:
        print(f"vap dehaze: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vap dehaze: interrupted", file=sys.stderr)
        return 1
    except (RunFailure, OSError) as exc:
        print(f"vap dehaze: {exc}", file=sys.stderr)
        return 1


def main() -> int:
    return cli(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
