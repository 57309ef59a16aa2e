"""The NMS-free detector: CSP backbone, PAN-FPN neck, anchor-free decoupled dual head.

Clean room from the YOLOv8 / YOLOv10 / YOLO26 papers and docs.

* Backbone: strided convs and C2f/C3k2-style CSP blocks, SPPF, and an optional partial
  self-attention block (PSA) at stride 32, where the map is small enough for attention.
* Neck: PAN-FPN (top-down then bottom-up) giving strides 8/16/32.
* Head: per level, a box branch (``4 * reg_max`` channels) and a class branch (``nc`` channels).
  There are two copies (YOLOv10 "consistent dual assignment"): the **one-to-many** head is trained
  with top-10 assignment and gives the backbone a rich signal; the **one-to-one** head is trained
  with a single positive per object, so at inference its top-K needs no NMS. By default the
  one-to-one loss also trains the trunk (YOLOv10 detaches it; here detaching cost 3-4 points
  mAP50-95 at 12 epochs, see DetectionLoss and benchmarks/model.md); ``detach_o2o`` switches it.
* Boxes: ``reg_max == 1`` (default) predicts l, t, r, b distances in stride units through a
  softplus (non-negative, no exp blow-ups, no DFL); ``reg_max > 1`` uses a DFL distribution.
* Inference output (engine contract): ``[B, K, 6]`` rows ``x1, y1, x2, y2, score, class_id`` in
  input pixels, sorted by score, top-K over anchor x class, sigmoid scores, class id as float.

torch is imported at module level: this is the training/export side, not the runtime.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vap_video.engines.nn import PSA, SPPF, C2f, Conv, DWConv, RepConv

# depth multiple, width multiple, max channels (before the width multiple), C3k inner blocks
SCALES: dict[str, tuple[float, float, int, bool]] = {
    "n": (0.33, 0.25, 1024, False),
    "s": (0.33, 0.50, 1024, False),
    "m": (0.67, 0.75, 768, True),
    "l": (1.00, 1.00, 512, True),
    "x": (1.00, 1.25, 512, True),
}
STRIDES: tuple[int, int, int] = (8, 16, 32)


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (saved in checkpoints, so no pickled classes).

    ``depth``/``width`` override the scale's multiples (e.g. a narrower-than-n model for CPU
    training); ``None`` takes the scale's values.
    """

    scale: str = "n"
    nc: int = 80
    reg_max: int = 1
    imgsz: int = 640
    max_det: int = 300
    attention: bool = True
    rep: bool = True
    depth: float | None = None
    width: float | None = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"unknown model scale {self.scale!r}: choose one of {', '.join(SCALES)}")
        if self.nc < 1:
            raise ValueError(f"nc must be >= 1, got {self.nc}")
        if self.reg_max < 1:
            raise ValueError(f"reg_max must be >= 1, got {self.reg_max}")
        if self.imgsz % STRIDES[-1]:
            raise ValueError(f"imgsz must be a multiple of {STRIDES[-1]}, got {self.imgsz}")

    def to_dict(self) -> dict:
        return asdict(self)


def _ch(c: int, width: float, max_ch: int) -> int:
    """Channels after the width multiple, rounded up to a multiple of 8 (hardware friendly)."""
    return max(8, int(math.ceil(min(c, max_ch) * width / 8) * 8))


def _n(n: int, depth: float) -> int:
    return max(round(n * depth), 1)


class Backbone(nn.Module):
    """Stem + four strided stages; returns the stride 8, 16 and 32 maps."""

    def __init__(self, depth: float, width: float, max_ch: int, c3k: bool, attention: bool):
        super().__init__()
        c = [_ch(x, width, max_ch) for x in (64, 128, 256, 512, 1024)]
        self.channels = (c[2], c[3], c[4])
        self.stem = nn.Sequential(Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], _n(3, depth), True))
        self.p3 = nn.Sequential(Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], _n(6, depth), True, c3k=c3k))
        self.p4 = nn.Sequential(Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], _n(6, depth), True, c3k=c3k))
        p5: list[nn.Module] = [Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], _n(3, depth), True, c3k=c3k), SPPF(c[4], c[4])]
        if attention:
            p5.append(PSA(c[4], c[4]))
        self.p5 = nn.Sequential(*p5)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        return [p3, p4, self.p5(p4)]


class Neck(nn.Module):
    """PAN-FPN: top-down fusion (semantics to fine maps), then bottom-up (localisation to coarse)."""

    def __init__(self, ch: tuple[int, int, int], depth: float, c3k: bool, rep: bool):
        super().__init__()
        c3, c4, c5 = ch
        n = _n(3, depth)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(c5 + c4, c4, n, c3k=c3k, rep=rep)
        self.td3 = C2f(c4 + c3, c3, n, c3k=c3k, rep=rep)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bu4 = C2f(c3 + c4, c4, n, c3k=c3k, rep=rep)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bu5 = C2f(c4 + c5, c5, n, c3k=c3k, rep=rep)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = feats
        h4 = self.td4(torch.cat((self.up(p5), p4), 1))
        o3 = self.td3(torch.cat((self.up(h4), p3), 1))
        o4 = self.bu4(torch.cat((self.down3(o3), h4), 1))
        o5 = self.bu5(torch.cat((self.down4(o4), p5), 1))
        return [o3, o4, o5]


class DetectHead(nn.Module):
    """Decoupled anchor-free head: a box branch and a class branch per level.

    Returns raw outputs concatenated over levels: box ``[B, A, 4 * reg_max]`` and class logits
    ``[B, A, nc]`` (A = anchors over all levels), leaving decoding to the detector.
    """

    def __init__(self, ch: tuple[int, ...], nc: int, reg_max: int):
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        cb = max(16, ch[0] // 4, 4 * reg_max)
        cc = max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, cb, 3), Conv(cb, cb, 3), nn.Conv2d(cb, 4 * reg_max, 1)) for c in ch
        )
        self.cls = nn.ModuleList(
            nn.Sequential(DWConv(c, c, 3), Conv(c, cc, 1), DWConv(cc, cc, 3), Conv(cc, cc, 1), nn.Conv2d(cc, nc, 1))
            for c in ch
        )

    def init_bias(self, imgsz: int) -> None:
        """Start with low class scores (prior ~5 objects per image) and ~1-stride boxes.

        Without this the first iterations are dominated by the loss on thousands of background
        anchors, which slows early training badly.
        """
        for box, cls, s in zip(self.box, self.cls, STRIDES):
            _out_bias(box).fill_(1.0)
            _out_bias(cls).fill_(math.log(5 / self.nc / (imgsz / s) ** 2))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, logits = [], []
        for f, box, cls in zip(feats, self.box, self.cls):
            boxes.append(box(f).flatten(2))
            logits.append(cls(f).flatten(2))
        return torch.cat(boxes, 2).transpose(1, 2), torch.cat(logits, 2).transpose(1, 2)


def _out_bias(branch: nn.Module) -> torch.Tensor:
    """Bias of a head branch's last layer (a plain Conv2d with a bias, by construction)."""
    last = list(branch.children())[-1]
    if not isinstance(last, nn.Conv2d) or last.bias is None:
        raise TypeError(f"a head branch must end in a Conv2d with a bias, got {type(last).__name__}")
    return last.bias.data


def make_anchors(shapes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres in input pixels ``[A, 2]`` (cell centre = (i + 0.5) * stride) and strides ``[A, 1]``."""
    points, stride_t = [], []
    for (h, w), s in zip(shapes, strides):
        sy = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        sx = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).reshape(-1, 2))
        stride_t.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_t)


def ltrb_from_raw(raw: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Raw box channels -> non-negative l, t, r, b distances in stride units.

    reg_max == 1: softplus (smooth, non-negative, linear for large values so no exp overflow).
    reg_max > 1: expectation of a softmax over ``reg_max`` bins (DFL).
    """
    if reg_max == 1:
        return F.softplus(raw)
    b, a, _ = raw.shape
    prob = raw.view(b, a, 4, reg_max).softmax(-1)
    bins = torch.arange(reg_max, device=raw.device, dtype=raw.dtype)
    return (prob * bins).sum(-1)


def ltrb_to_xyxy(ltrb: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Distances (stride units) around anchor centres (pixels) -> x1, y1, x2, y2 pixels."""
    lt, rb = ltrb.split(2, -1)
    return torch.cat((anchors - lt * strides, anchors + rb * strides), -1)


def topk_end2end(boxes: torch.Tensor, scores: torch.Tensor, max_det: int) -> torch.Tensor:
    """Top-K over anchor x class, the NMS-free output ``[B, K, 6]`` (padded with zero rows).

    A box may appear once per class it scores high on; the consumer thresholds by score only.
    """
    b, a, nc = scores.shape
    k = min(max_det, a * nc)
    top, idx = scores.flatten(1).topk(k, dim=1)
    anchor_idx = torch.div(idx, nc, rounding_mode="floor")
    cls = idx - anchor_idx * nc
    sel = boxes.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
    out = torch.cat((sel, top.unsqueeze(-1), cls.to(boxes.dtype).unsqueeze(-1)), -1)
    if k < max_det:
        out = F.pad(out, (0, 0, 0, max_det - k))
    return out


class Detector(nn.Module):
    """The whole model. ``train()`` mode returns raw head outputs for the loss; ``eval()`` mode
    returns the engine contract ``[B, K, 6]`` from the one-to-one head."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        depth, width, max_ch, c3k = SCALES[cfg.scale]
        depth = cfg.depth if cfg.depth is not None else depth
        width = cfg.width if cfg.width is not None else width
        self.backbone = Backbone(depth, width, max_ch, c3k, cfg.attention)
        ch = self.backbone.channels
        self.neck = Neck(ch, depth, c3k, cfg.rep)
        self.o2o = DetectHead(ch, cfg.nc, cfg.reg_max)
        self.o2o.init_bias(cfg.imgsz)
        self.o2m: DetectHead | None = copy.deepcopy(self.o2o)
        self.strides = STRIDES
        self.max_det = cfg.max_det
        # stop-gradient placement (a training switch, not part of the architecture or checkpoints):
        # True = the one-to-one head reads detached neck features; the training step sets it every
        # batch from DetectionLoss.o2o_detached (the recipe's o2o_detach_epochs), so this is only the
        # value outside training, where it changes nothing
        self.detach_o2o = True

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.backbone(x))

    def forward_raw(self, x: torch.Tensor) -> dict[str, object]:
        """Raw outputs of both heads plus anchors, for the loss and for two-head validation.

        Returns ``{"o2o": (box_raw, logits), "o2m": (box_raw, logits) (if present),
        "anchors": [A, 2], "strides": [A, 1]}``.
        """
        feats = self.features(x)
        anchors, strides = make_anchors([(f.shape[2], f.shape[3]) for f in feats], self.strides, x.device,
                                        torch.float32)
        out: dict[str, object] = {"anchors": anchors, "strides": strides,
                                  "o2o": self.o2o([f.detach() for f in feats] if self.detach_o2o else feats)}
        if self.o2m is not None:
            out["o2m"] = self.o2m(feats)
        return out

    def decode(self, raw: tuple[torch.Tensor, torch.Tensor], anchors: torch.Tensor,
               strides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head output -> (boxes xyxy pixels ``[B, A, 4]``, sigmoid scores ``[B, A, nc]``)."""
        box_raw, logits = raw
        boxes = ltrb_to_xyxy(ltrb_from_raw(box_raw, self.cfg.reg_max), anchors, strides)
        return boxes, logits.sigmoid()

    def forward(self, x: torch.Tensor):
        if self.training:
            return self.forward_raw(x)
        feats = self.features(x)
        anchors, strides = make_anchors([(f.shape[2], f.shape[3]) for f in feats], self.strides, x.device,
                                        torch.float32)
        boxes, scores = self.decode(self.o2o(feats), anchors, strides)
        return topk_end2end(boxes, scores, self.max_det)

    @torch.no_grad()
    def fuse(self) -> Detector:
        """Inference form: re-parameterise RepConvs, fold every BN into its conv (eval only).

        Output is unchanged up to float rounding (tested at atol 1e-4).
        """
        self.eval()
        for m in [m for m in self.modules() if isinstance(m, RepConv)]:
            m.fuse()
        for c in [c for c in self.modules() if isinstance(c, Conv)]:
            c.fuse()
        return self

    def drop_one_to_many(self) -> Detector:
        """Remove the training-only one-to-many head (before export)."""
        self.o2m = None
        return self


def build_detector(cfg: DetectorConfig | dict) -> Detector:
    """Build a detector from a config object or its dict form (as stored in checkpoints)."""
    if isinstance(cfg, dict):
        cfg = DetectorConfig(**cfg)
    return Detector(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_info(scale: str, imgsz: int = 640, nc: int = 80, fused: bool = True) -> dict[str, float]:
    """Parameters and FLOPs of the inference model (one-to-one head only) for one image.

    FLOPs are counted by ``torch.utils.flop_counter`` on a real forward pass (convs and matmuls;
    1 multiply-add = 2 FLOPs, the convention used in YOLO papers' GFLOPs columns).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = build_detector(DetectorConfig(scale=scale, nc=nc, imgsz=imgsz)).drop_one_to_many()
    model.eval()
    if fused:
        model.fuse()
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return {"scale": scale, "imgsz": imgsz, "params": count_params(model), "gflops": fc.get_total_flops() / 1e9}
