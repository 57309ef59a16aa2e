"""`vap data synth ...` and `vap data check DATA.yaml`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from vap_video.engines.synth.images import write_yolo_dataset
from vap_video.engines.synth.video import write_video


def _check_cli(argv: list[str]) -> int:
    """`vap data check DATA.yaml`: validate a YOLO dataset and print what is wrong with it."""
    from vap_video.engines.dataset import DatasetError, load_data_yaml, validate_dataset

    ap = argparse.ArgumentParser(prog="vap data check",
                                 description="Validate a YOLO dataset: every image and label of each split.")
    ap.add_argument("data", type=Path, help="data.yaml")
    ap.add_argument("--examples", type=int, default=5, help="example paths shown per problem")
    args = ap.parse_args(argv)
    try:
        spec = load_data_yaml(args.data)
    except DatasetError as e:
        print(f"vap data check: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.data}: {len(spec.names)} classes ({', '.join(spec.names)}), root {spec.root}")
    rc = 0
    for split in ("train", "val"):
        if not getattr(spec, split):
            print(f"{split}: none")
            continue
        try:
            print(validate_dataset(spec, split, max_examples=args.examples).summary())
        except DatasetError as e:
            print(f"vap data check: error: {e}", file=sys.stderr)
            rc = 2
    return rc


def cli(argv: list[str]) -> int:
    """`vap data synth ...` (write a synthetic YOLO dataset or video) and `vap data check DATA.yaml`."""
    argv = list(argv)
    try:
        if argv[:1] == ["check"]:
            return _check_cli(argv[1:])
        if argv[:1] == ["synth"]:
            argv = argv[1:]
        return _synth_cli(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2


def _synth_cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="vap data synth",
        description="Write deterministic synthetic data: a YOLO dataset (--dataset) or a video with "
        "MOTChallenge ground truth (--video).",
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", type=Path, metavar="OUT", help="folder for a YOLO dataset")
    what.add_argument("--video", type=Path, metavar="OUT.mp4", help="video file (.mp4, .mkv, .ts)")
    ap.add_argument("--train", type=int, default=2000, help="training images (dataset)")
    ap.add_argument("--val", type=int, default=300, help="validation images (dataset)")
    ap.add_argument("--imgsz", type=int, default=320, help="typical image long side (dataset)")
    ap.add_argument("--frames", type=int, default=250, help="frames (video)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--objects", type=int, default=6, help="objects in view at once (video)")
    ap.add_argument("--codec", default="h264", help="video codec (default h264)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--haze", type=float, default=0.0,
                    help="dataset: fraction of hazy images; video: haze thickness 0..1")
    ap.add_argument("--workers", type=int, default=1, help="processes writing the dataset")
    args = ap.parse_args(argv)
    try:
        if args.dataset is not None:
            yaml_path = write_yolo_dataset(args.dataset, args.train, args.val, args.imgsz, args.seed, args.haze,
                                           workers=args.workers)
            print(f"wrote {args.train} train + {args.val} val images; data config: {yaml_path}")
        else:
            out = write_video(args.video, args.seed, args.frames, args.width, args.height, args.fps,
                              args.objects, args.haze, args.codec)
            print(f"wrote {out} ({args.frames} frames) and ground truth "
                  f"{out.with_name(out.stem + '.gt.txt')}")
    except (ValueError, OSError) as e:
        print(f"vap data synth: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # PyAV raises its own errors (unknown codec, bad container)
        if type(e).__module__.startswith("av"):
            print(f"vap data synth: video error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
