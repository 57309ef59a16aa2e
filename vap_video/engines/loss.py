"""Detection loss for the dual-head detector.

Per head: task-aligned assignment (:mod:`vap_video.engines.assign`), then

* classification: BCE with logits against IoU-aware soft targets, summed over all anchors and
  classes and divided by the sum of target scores (so the scale does not depend on how many
  objects are in the batch);
* box: CIoU (1 - CIoU) plus a regression term on the l, t, r, b distances in stride units —
  L1 when ``reg_max == 1`` (no DFL), Distribution Focal Loss when ``reg_max > 1`` — both
  weighted per positive anchor by its target score, so well-aligned anchors count more.

Heads are combined as ``w_o2m(epoch) * L_o2m + w_o2o * L_o2o`` with ``w_o2m`` moving linearly
from 0.8 to 0.1 over training and ``w_o2o = 1.0`` constant: a ProgLoss-like hand-over, in which
the one-to-many signal leads the trunk early and the one-to-one loss, which also trains the trunk
(``o2o_detach_epochs = 0``, the default since 2026-12-04), leads it late. Why the trunk must see the
one-to-one loss: a detached head has to pick the one anchor out of features trained to make ten
neighbours fire; in the 12-epoch ablation (benchmarks/model.md) the detached head trailed the
one-to-many head + NMS by 3.0 to 4.1 points mAP50-95, the undetached one led it by 0.4 and 0.7 at
two seeds, with both heads higher. ``w_o2o`` is not ``1 - w_o2m``: a 0.2 weight early would slow
the inference head's learning 5x, which short CPU runs cannot afford.

The one-to-one head's box terms use the top-10 assignment (``o2o_box_dense``, default) and its
classification one positive per object; it is clipped apart with its own limit (TrainConfig
``o2o_clip_apart``, ``o2o_clip_grad = 40``).

Switches for the head-gap ablation (issue 18):

* ``o2o_match="o2m"``: consistent matching (YOLOv10's "consistent dual assignments"): the
  one-to-one positive of each GT is the one-to-many assigner's best-aligned anchor (same alpha,
  beta and top-k, ranked by the one-to-many head's predictions), instead of the one-to-one
  head's own ranking. Its soft target stays the one-to-one box's own IoU at that anchor, so only
  *which* anchor changes.
* ``o2o_topk``: candidates per GT of the one-to-one assigner before top-1 (own matching only).
* ``o2o_cls``: extra gain on the one-to-one classification term (one positive per object gives
  its classifier a tenth of the positive signal the top-10 head gets).
* ``o2o_detach_epochs``: stop-gradient placement. ``None``: the one-to-one head reads detached
  features in every epoch (YOLOv10's choice, and ours before 2026-12-04); ``0`` (default): never
  detached (its loss also trains the trunk); ``N``:
  detached for the first N epochs only. Applied through :meth:`DetectionLoss.o2o_detached`,
  which the training step sets on the model before its forward pass.
* ``min_half_strides``: the assigners' small-target enlargement, in strides (see assign.py).
* ``o2o_box_dense``: the one-to-one head's box and L1/DFL terms on the one-to-many assignment
  (top-10 per object, ranked by the one-to-one head's own predictions); its classification stays
  one-to-one. Why: duplicates come from the scores, not the boxes, so the box branch can learn
  from every well-aligned anchor (ten times the box signal) without teaching the classifier to
  fire twice; whichever anchor the classifier then keeps carries a better-trained box.
* ``o2o_cls_loss="vfl"``: the one-to-one classification term as Varifocal Loss (Zhang et al.,
  VarifocalNet, 2021; the classification loss of RT-DETR and other one-to-one detectors) instead
  of BCE: a positive is weighted by its soft target q, a negative by ``alpha * p**gamma``. Why:
  with one positive per object, plain BCE spends almost all of its weight on the thousands of easy
  negatives and holds every score down, the positive's too; the focal weight keeps the hard
  negatives (the positive's neighbours, the duplicates) and drops the easy ones.
  Measured (benchmarks/model.md): it cost 6.4 points and tripled the gap by adding duplicates, so
  the easy negatives' share of BCE is what pushes the positive's neighbours down. Off by default.

Not a loss term but coupled to it: ``o2o_clip_apart`` (TrainConfig, on by default;
train_loop.clip_gradients) clips the one-to-one head's gradient on its own. Detached features do
not decouple the heads under one global gradient-norm clip: the head's gradient is most of that
norm, so it sets how far the trunk moves (benchmarks/model.md: apart, both heads gained 4-7 points
mAP50-95 at two seeds). ``o2o_clip_grad`` gives that head its own limit (default 40; null:
``clip_grad``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vap_video.engines.assign import TaskAlignedAssigner, box_iou_pairwise
from vap_video.engines.detector import Detector, ltrb_from_raw, ltrb_to_xyxy

if TYPE_CHECKING:
    from vap_video.engines.train_config import TrainConfig


def bbox_ciou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows (xyxy): IoU minus centre-distance and aspect penalties."""
    w1, h1 = a[..., 2] - a[..., 0], (a[..., 3] - a[..., 1]).clamp(min=eps)
    w2, h2 = b[..., 2] - b[..., 0], (b[..., 3] - b[..., 1]).clamp(min=eps)
    inter = ((torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
             * (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b[..., 0] + b[..., 2] - a[..., 0] - a[..., 2]).pow(2)
            + (b[..., 1] + b[..., 3] - a[..., 1] - a[..., 3]).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def dfl_loss(raw: torch.Tensor, target: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss: cross-entropy to the two bins around the continuous target.

    ``raw`` ``[N, 4 * reg_max]``, ``target`` ``[N, 4]`` in stride units; returns ``[N]``.
    """
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl = target.long()
    tr = tl + 1
    wl = tr.float() - target
    wr = 1 - wl
    logits = raw.view(-1, reg_max)
    loss = (F.cross_entropy(logits, tl.view(-1), reduction="none").view(tl.shape) * wl
            + F.cross_entropy(logits, tr.view(-1), reduction="none").view(tl.shape) * wr)
    return loss.mean(-1)


@dataclass
class LossWeights:
    """Gains of the loss terms (YOLOv8-style defaults: box 7.5, cls 0.5, L1/DFL 1.5)."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    o2m_start: float = 0.8
    o2m_end: float = 0.1
    o2o: float = 1.0
    o2o_cls: float = 1.0


def varifocal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Element-wise Varifocal Loss: BCE against the soft target, weighted by ``target`` where it is
    positive and by ``alpha * p**gamma`` (p = predicted score, detached) where it is zero."""
    p = logits.detach().sigmoid()
    weight = torch.where(target > 0, target, alpha * p.pow(gamma))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def o2m_weight(epoch: int, epochs: int, w: LossWeights) -> float:
    """One-to-many head weight for ``epoch`` (0-based): linear ``o2m_start -> o2m_end``."""
    if epochs <= 1:
        return w.o2m_start
    t = min(max(epoch / (epochs - 1), 0.0), 1.0)
    return w.o2m_start + (w.o2m_end - w.o2m_start) * t


class DetectionLoss:
    """Callable: ``loss(raw_outputs, targets, epoch, epochs) -> (total, parts)``.

    ``targets`` is the collated ``[M, 6]`` tensor ``batch_idx, cls, x1, y1, x2, y2`` (pixels).
    ``total`` is scaled by batch size (the sum over images, as the gradient of a per-image mean
    loss would be too small with SGD's usual learning rates); ``parts`` are detached per-image
    values for logging: box, cls, dfl (L1 or DFL) for each head, and the head weights.
    """

    def __init__(self, model: Detector, weights: LossWeights | None = None, o2o_match: str = "own",
                 o2o_topk: int = 7, o2o_detach_epochs: int | None = 0, min_half_strides: float = 1.0,
                 o2o_box_dense: bool = True, o2o_cls_loss: str = "bce"):
        if o2o_match not in ("own", "o2m"):
            raise ValueError(f"o2o_match must be 'own' or 'o2m', got {o2o_match!r}")
        if o2o_cls_loss not in ("bce", "vfl"):
            raise ValueError(f"o2o_cls_loss must be 'bce' or 'vfl', got {o2o_cls_loss!r}")
        self.o2o_cls_loss = o2o_cls_loss
        self.nc = model.cfg.nc
        self.reg_max = model.cfg.reg_max
        self.w = weights or LossWeights()
        self.o2o_match = o2o_match
        self.o2o_detach_epochs = o2o_detach_epochs
        self.o2o_box_dense = o2o_box_dense
        self.o2m_assigner = TaskAlignedAssigner(self.nc, topk=10, alpha=0.5, beta=6.0,
                                                min_half_strides=min_half_strides)
        self.o2o_assigner = TaskAlignedAssigner(self.nc, topk=o2o_topk, alpha=0.5, beta=6.0, one_to_one=True,
                                                min_half_strides=min_half_strides)
        # consistent matching: the one-to-many assigner's candidates and metric, then its top-1
        self.o2o_from_o2m = TaskAlignedAssigner(self.nc, topk=self.o2m_assigner.topk, alpha=0.5, beta=6.0,
                                                one_to_one=True, min_half_strides=min_half_strides)

    @classmethod
    def from_config(cls, model: Detector, cfg: TrainConfig) -> DetectionLoss:
        """The loss a training recipe (``TrainConfig``) asks for."""
        return cls(model, LossWeights(cfg.box, cfg.cls, cfg.dfl, cfg.o2m_start, cfg.o2m_end, o2o_cls=cfg.o2o_cls),
                   o2o_match=cfg.o2o_match, o2o_topk=cfg.o2o_topk, o2o_detach_epochs=cfg.o2o_detach_epochs,
                   min_half_strides=cfg.min_half_strides, o2o_box_dense=cfg.o2o_box_dense,
                   o2o_cls_loss=cfg.o2o_cls_loss)

    def o2o_detached(self, epoch: int) -> bool:
        """Whether the one-to-one head reads detached neck features in ``epoch`` (0-based)."""
        return self.o2o_detach_epochs is None or epoch < self.o2o_detach_epochs

    @staticmethod
    def _pad_targets(targets: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[M, 6] -> labels [B, Mmax], boxes [B, Mmax, 4], mask [B, Mmax]."""
        dev = targets.device
        if targets.numel() == 0:
            return (torch.zeros(batch, 0, dtype=torch.long, device=dev), torch.zeros(batch, 0, 4, device=dev),
                    torch.zeros(batch, 0, dtype=torch.bool, device=dev))
        bi = targets[:, 0].long()
        counts = torch.bincount(bi, minlength=batch)
        mmax = int(counts.max())
        labels = torch.zeros(batch, mmax, dtype=torch.long, device=dev)
        boxes = torch.zeros(batch, mmax, 4, device=dev)
        mask = torch.zeros(batch, mmax, dtype=torch.bool, device=dev)
        order = torch.argsort(bi, stable=True)
        bi_sorted = bi[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(bi), device=dev) - starts[bi_sorted]
        labels[bi_sorted, slot] = targets[order, 1].long()
        boxes[bi_sorted, slot] = targets[order, 2:6].float()
        mask[bi_sorted, slot] = True
        return labels, boxes, mask

    def _head_loss(self, raw: tuple[torch.Tensor, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
                   labels: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                   assigner: TaskAlignedAssigner, match_on: tuple[torch.Tensor, torch.Tensor] | None = None,
                   cls_gain: float = 1.0, box_assigner: TaskAlignedAssigner | None = None,
                   cls_loss: str = "bce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One head's (box, cls, reg) terms. ``match_on``: another head's detached (scores, boxes) to
        choose the positives from (consistent matching); the soft targets stay this head's own IoU.
        ``box_assigner``: assign the box and reg terms' positives with it (on this head's own
        predictions) instead of with the classification's assignment. ``cls_loss``: ``bce`` or ``vfl``."""
        box_raw, logits = raw
        box_raw, logits = box_raw.float(), logits.float()
        ltrb = ltrb_from_raw(box_raw, self.reg_max)
        pd_boxes = ltrb_to_xyxy(ltrb, anchors, strides)
        if match_on is None:
            asg = assigner(logits.detach().sigmoid(), pd_boxes.detach(), anchors, strides, labels, boxes, mask)
        else:
            asg = assigner(match_on[0], match_on[1], anchors, strides, labels, boxes, mask)
            own_iou = box_iou_pairwise(pd_boxes.detach(), asg.boxes) * asg.fg  # one positive per GT
            asg.scores = torch.zeros_like(asg.scores).scatter_(2, asg.labels.unsqueeze(-1), own_iou.unsqueeze(-1))
        ts_sum = max(float(asg.scores.sum()), 1.0)
        if cls_loss == "vfl":
            l_cls = varifocal_loss(logits, asg.scores).sum() / ts_sum
        else:
            l_cls = F.binary_cross_entropy_with_logits(logits, asg.scores, reduction="sum") / ts_sum
        if box_assigner is not None:
            asg = box_assigner(logits.detach().sigmoid(), pd_boxes.detach(), anchors, strides, labels, boxes, mask)
            ts_sum = max(float(asg.scores.sum()), 1.0)
        fg = asg.fg
        if bool(fg.any()):
            weight = asg.scores.sum(-1)[fg]
            ciou = bbox_ciou(pd_boxes[fg], asg.boxes[fg])
            l_box = ((1.0 - ciou) * weight).sum() / ts_sum
            anc, st = anchors.unsqueeze(0).expand_as(pd_boxes[..., :2])[fg], strides.unsqueeze(0).expand(
                fg.shape[0], -1, -1)[fg]
            tb = asg.boxes[fg]
            t_ltrb = torch.cat((anc - tb[:, :2], tb[:, 2:] - anc), -1) / st
            if self.reg_max == 1:
                l_reg = ((ltrb[fg] - t_ltrb.clamp(min=0)).abs().mean(-1) * weight).sum() / ts_sum
            else:
                l_reg = (dfl_loss(box_raw[fg], t_ltrb, self.reg_max) * weight).sum() / ts_sum
        else:
            l_box = box_raw.sum() * 0.0
            l_reg = box_raw.sum() * 0.0
        return l_box * self.w.box, l_cls * self.w.cls * cls_gain, l_reg * self.w.dfl

    def __call__(self, out: dict, targets: torch.Tensor, epoch: int = 0,
                 epochs: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
        anchors, strides = out["anchors"], out["strides"]
        batch = out["o2o"][0].shape[0]
        labels, boxes, mask = self._pad_targets(targets.to(anchors.device), batch)
        w_o2m = o2m_weight(epoch, epochs, self.w)
        box_assigner = self.o2m_assigner if self.o2o_box_dense else None
        if self.o2o_match == "o2m" and "o2m" in out:
            box_raw, logits = out["o2m"]
            o2m_boxes = ltrb_to_xyxy(ltrb_from_raw(box_raw.detach().float(), self.reg_max), anchors, strides)
            o2o = self._head_loss(out["o2o"], anchors, strides, labels, boxes, mask, self.o2o_from_o2m,
                                  match_on=(logits.detach().float().sigmoid(), o2m_boxes), cls_gain=self.w.o2o_cls,
                                  box_assigner=box_assigner, cls_loss=self.o2o_cls_loss)
        else:
            o2o = self._head_loss(out["o2o"], anchors, strides, labels, boxes, mask, self.o2o_assigner,
                                  cls_gain=self.w.o2o_cls, box_assigner=box_assigner, cls_loss=self.o2o_cls_loss)
        total = self.w.o2o * sum(o2o)
        parts = {"o2o_box": float(o2o[0].detach()), "o2o_cls": float(o2o[1].detach()),
                 "o2o_reg": float(o2o[2].detach())}
        if "o2m" in out:
            o2m = self._head_loss(out["o2m"], anchors, strides, labels, boxes, mask, self.o2m_assigner)
            total = total + w_o2m * sum(o2m)
            parts.update({"o2m_box": float(o2m[0].detach()), "o2m_cls": float(o2m[1].detach()),
                          "o2m_reg": float(o2m[2].detach())})
        parts["w_o2m"] = w_o2m
        parts["w_o2o"] = self.w.o2o
        return total * batch, parts
