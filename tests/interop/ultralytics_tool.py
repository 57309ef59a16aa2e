"""Test tool, run by the Python of a separate venv that has Ultralytics (AGPL-3.0) installed.

vap never imports Ultralytics; the interop tests start this script in a subprocess to (1) build
detectors from Ultralytics' own model YAMLs with random weights and export them with Ultralytics'
exporter, and (2) run Ultralytics' predictor on a frame, so vap's results can be compared with
theirs. Nothing may be downloaded: every network connection attempt is refused and reported, and
the script fails if there was one (a weights or font download would show up here).

    python ultralytics_tool.py export OUT_DIR IMAGE IMGSZ [IMGSZ ...] [--variants a,b] -> OUT_DIR/manifest.json
    python ultralytics_tool.py predict MODEL IMAGE IMGSZ CONF IOU   -> JSON rows on stdout
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ATTEMPTS: list[str] = []
_connect = socket.socket.connect


def _refuse(self: socket.socket, address: object) -> None:  # type: ignore[override]
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    ATTEMPTS.append(repr(address))
    raise OSError(f"network disabled by the vap interop test tool (tried {address!r})")


socket.socket.connect = _refuse  # type: ignore[method-assign]

# (model YAML, variant name, export arguments). end-to-end = nms=False in Ultralytics 8.4
VARIANTS = [
    ("yolo26n.yaml", "e2e-dynamic", {"nms": False, "dynamic": True, "simplify": False}),  # symbolic output dims
    ("yolo26n.yaml", "e2e-static", {"nms": False}),
    ("yolo26n.yaml", "o2m-static", {}),
    ("yolo11n.yaml", "o2m-dynamic", {"dynamic": True}),
    ("yolo11n.yaml", "o2m-batch4", {"batch": 4}),
    ("yolo11n.yaml", "nms-static", {"nms": True}),
]


def randomise(model: object, seed: int, calib: object) -> None:
    """Random weights with some spread. Ultralytics' initialisation makes every anchor score the same
    (a class prior in the head's bias, small weights), which would make any comparison trivial;
    He-normal convolutions, normalised on `calib` (a [N, 3, H, W] batch like the test frames), give
    each box its own score and size, as a trained model's do."""
    import math

    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.model.modules():  # type: ignore[attr-defined]
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:  # not DFL's fixed arange conv
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
        # Data-dependent normalisation: batch-norm statistics measured on random images, so every
        # layer's activations stay at unit scale through the whole depth (scores and boxes vary).
        bns = [m for m in model.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # type: ignore[attr-defined]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.model.train()  # type: ignore[attr-defined]
        model.model(calib)  # type: ignore[attr-defined]
        model.model.eval()  # type: ignore[attr-defined]
        for bn in bns:
            bn.momentum = 0.03
        # The head's last convolutions (plain Conv2d with a bias, no norm after them) are set to
        # give each channel zero mean and a small spread on the calibration frames: class scores
        # spread around 0.5 (not saturated), box outputs centred on a positive distance.
        heads = {name: m for name, m in model.model.named_modules()  # type: ignore[attr-defined]
                 if isinstance(m, torch.nn.Conv2d) and m.bias is not None and m.weight.requires_grad}
        stats: dict[str, torch.Tensor] = {}

        def record(name: str):  # type: ignore[no-untyped-def]
            def hook(_mod, _inp, out):  # type: ignore[no-untyped-def]
                stats[name] = out.detach()
            return hook

        hooks = [m.register_forward_hook(record(n)) for n, m in heads.items()]
        model.model(calib)  # type: ignore[attr-defined]
        for h in hooks:
            h.remove()
        for name, m in heads.items():
            if name not in stats:
                continue
            out = stats[name]
            mean = out.mean(dim=(0, 2, 3))
            std = out.std().clamp_min(1e-6)
            box = re.search(r"(^|\.)(one2one_)?cv2\.", name) is not None
            # activations on real frames are heavy-tailed (edges against flat areas): small spreads keep
            # the top class scores apart instead of all at 1.0, and boxes near their anchors
            scale = 0.3 if box else 0.05
            m.weight.mul_(scale / std)
            m.bias.copy_(-mean * scale / std + (1.5 if box else 0.0))


def _calibration_batch(image: Path) -> object:
    """The image (and its mirror images) as a float RGB batch at 256 x 256."""
    import cv2
    import numpy as np
    import torch

    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    views = [rgb, rgb[:, ::-1], rgb[::-1], rgb[::-1, ::-1]]
    return torch.from_numpy(np.stack(views).transpose(0, 3, 1, 2).copy())


def export(out: Path, image: Path, sizes: list[int], only: set[str] | None = None) -> None:
    from ultralytics import YOLO

    calib = _calibration_batch(image)

    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for imgsz in sizes:
        for arch, variant, kwargs in VARIANTS:
            if only is not None and variant not in only:
                continue
            model = YOLO(arch)
            randomise(model, seed=imgsz, calib=calib)
            produced = Path(model.export(format="onnx", imgsz=imgsz, **kwargs))
            dst = out / f"{arch.removesuffix('.yaml')}-{variant}-{imgsz}.onnx"
            produced.replace(dst)
            manifest.append({"file": dst.name, "arch": arch, "variant": variant, "imgsz": imgsz, "args": kwargs})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def predict(model: str, image: str, imgsz: int, conf: float, iou: float) -> None:
    from ultralytics import YOLO

    res = YOLO(model, task="detect").predict(image, imgsz=imgsz, conf=conf, iou=iou, max_det=300, verbose=False)[0]
    b = res.boxes
    rows = [[*map(float, xyxy), float(c), int(k)] for xyxy, c, k in zip(b.xyxy.tolist(), b.conf.tolist(),
                                                                         b.cls.tolist())]
    print(json.dumps({"rows": rows, "names": res.names}))


def main() -> int:
    cmd, *args = sys.argv[1:]
    if cmd == "export":
        only = None
        if "--variants" in args:  # a subset of VARIANTS by name (e.g. e2e-static,o2m-static)
            i = args.index("--variants")
            only, args = set(args[i + 1].split(",")), args[:i] + args[i + 2:]
        export(Path(args[0]), Path(args[1]), [int(a) for a in args[2:]], only)
    elif cmd == "predict":
        predict(args[0], args[1], int(args[2]), float(args[3]), float(args[4]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    if ATTEMPTS:
        print(f"NETWORK ATTEMPTS: {ATTEMPTS}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
