"""Task-aligned label assignment (TOOD / YOLOv8 / YOLOv10), with a small-target rule.

For each ground-truth box the assigner ranks candidate anchors by the *alignment metric*
``t = s^alpha * IoU^beta`` (s = predicted score of the GT's class, IoU of the predicted box with
the GT), which rewards anchors that are already good at both classification and localisation, so
the two branches are trained towards the same anchors. ``alpha = 0.5, beta = 6`` as in the papers.

Candidates are anchors whose centre lies inside the GT box. Small-target rule: tiny boxes may
contain no anchor centre at all (a 5 px object between stride-8 centres), so for candidate
selection each GT is enlarged to at least one anchor stride per side (relative to that anchor's
level); this guarantees a few candidates at the finest level, while the IoU^6 factor still keeps
the coarse levels from winning such objects. ``min_half_strides`` sets that enlargement (1.0 by
default; 0 turns the rule off, >1 gives small objects more candidates, as STAL does in spirit).

One-to-many (training signal for the trunk): top-k 10 per GT. One-to-one (the NMS-free head):
top-k 7 candidates, conflicts resolved, then only the single best anchor per GT (top-1) is kept.

Classification targets are IoU-aware soft labels: the alignment metric normalised per GT so its
best anchor's target equals that anchor's IoU with the GT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def box_iou_pairwise(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of matching rows of ``a`` and ``b`` (``[..., 4]`` xyxy, broadcastable)."""
    ix1 = torch.maximum(a[..., 0], b[..., 0])
    iy1 = torch.maximum(a[..., 1], b[..., 1])
    ix2 = torch.minimum(a[..., 2], b[..., 2])
    iy2 = torch.minimum(a[..., 3], b[..., 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return inter / (area_a + area_b - inter + eps)


@dataclass
class Assignment:
    """Per-anchor targets. ``fg`` marks positives; ``gt_idx`` the GT each anchor is assigned to."""

    labels: torch.Tensor  # [B, A] long
    boxes: torch.Tensor  # [B, A, 4] xyxy pixels
    scores: torch.Tensor  # [B, A, C] soft targets
    fg: torch.Tensor  # [B, A] bool
    gt_idx: torch.Tensor  # [B, A] long


class TaskAlignedAssigner:
    """Assign GT boxes to anchors by the task-alignment metric (see module docstring)."""

    def __init__(self, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 one_to_one: bool = False, eps: float = 1e-9, min_half_strides: float = 1.0):
        self.nc, self.topk, self.alpha, self.beta = num_classes, topk, alpha, beta
        self.one_to_one, self.eps = one_to_one, eps
        self.min_half_strides = min_half_strides

    @torch.no_grad()
    def __call__(self, pd_scores: torch.Tensor, pd_boxes: torch.Tensor, anchors: torch.Tensor,
                 strides: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                 gt_mask: torch.Tensor) -> Assignment:
        """Assign.

        Args:
            pd_scores: sigmoid scores ``[B, A, C]`` (detached).
            pd_boxes: predicted boxes ``[B, A, 4]`` xyxy pixels (detached).
            anchors: anchor centres ``[A, 2]`` pixels; strides: ``[A, 1]``.
            gt_labels: ``[B, M]`` long; gt_boxes: ``[B, M, 4]`` xyxy pixels; gt_mask: ``[B, M]`` bool
                (padding rows False).
        """
        b, a, c = pd_scores.shape
        m = gt_boxes.shape[1]
        dev = pd_scores.device
        if m == 0 or not bool(gt_mask.any()):
            return Assignment(
                labels=torch.zeros(b, a, dtype=torch.long, device=dev),
                boxes=torch.zeros(b, a, 4, device=dev, dtype=pd_boxes.dtype),
                scores=torch.zeros(b, a, c, device=dev, dtype=pd_scores.dtype),
                fg=torch.zeros(b, a, dtype=torch.bool, device=dev),
                gt_idx=torch.zeros(b, a, dtype=torch.long, device=dev),
            )
        pd_scores, pd_boxes, gt_boxes = pd_scores.float(), pd_boxes.float(), gt_boxes.float()
        # candidates: anchor centre inside the (small-target enlarged) GT box   [B, M, A]
        cx = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2
        cy = (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2
        hw = ((gt_boxes[..., 2] - gt_boxes[..., 0]) / 2).unsqueeze(-1)
        hh = ((gt_boxes[..., 3] - gt_boxes[..., 1]) / 2).unsqueeze(-1)
        s = strides.view(1, 1, a).float() * self.min_half_strides
        hw, hh = torch.maximum(hw, s), torch.maximum(hh, s)
        dx = (anchors[:, 0].view(1, 1, a) - cx.unsqueeze(-1)).abs()
        dy = (anchors[:, 1].view(1, 1, a) - cy.unsqueeze(-1)).abs()
        in_gt = (dx < hw) & (dy < hh) & gt_mask.unsqueeze(-1)

        # alignment metric for candidates
        ious = box_iou_pairwise(gt_boxes.unsqueeze(2), pd_boxes.unsqueeze(1)) * in_gt  # [B, M, A]
        lab = gt_labels.long().clamp(0, c - 1)
        score_of_gt = pd_scores.gather(2, lab.unsqueeze(1).expand(b, a, m)).transpose(1, 2)  # [B, M, A]
        align = score_of_gt.pow(self.alpha) * ious.pow(self.beta) * in_gt

        # top-k anchors per GT among candidates
        k = min(self.topk, a)
        top_vals, top_idx = align.topk(k, dim=-1)
        pos = torch.zeros_like(align, dtype=torch.bool)
        # Keep the top-k candidates whatever their metric: a tiny GT starts with IoU^6 ~ 1e-10 for
        # every anchor, and a value cut-off would leave it without positives (so it never learns).
        # Candidates whose metric is 0 get a zero soft target and zero box weight, so they are harmless.
        pos.scatter_(-1, top_idx, True)
        pos &= in_gt

        # an anchor claimed by several GTs keeps the one it overlaps most
        multi = pos.sum(1) > 1  # [B, A]
        if bool(multi.any()):
            best_gt = ious.argmax(1)  # [B, A]
            best = torch.zeros_like(pos).scatter_(1, best_gt.unsqueeze(1), True)
            pos = torch.where(multi.unsqueeze(1), best & pos.any(1, keepdim=True), pos)
        if self.one_to_one:
            masked = align * pos
            best_a = masked.argmax(-1, keepdim=True)  # [B, M, 1]
            keep = torch.zeros_like(pos).scatter_(-1, best_a, True)
            pos &= keep

        fg = pos.any(1)  # [B, A]
        gt_idx = pos.float().argmax(1)  # [B, A]
        batch_off = torch.arange(b, device=dev).unsqueeze(-1) * m
        flat = (gt_idx + batch_off).view(-1)
        t_labels = lab.view(-1)[flat].view(b, a)
        t_boxes = gt_boxes.view(-1, 4)[flat].view(b, a, 4)

        # IoU-aware soft targets: align / max_align(per GT) * max_iou(per GT)
        align = align * pos
        max_align = align.amax(-1, keepdim=True)
        max_iou = (ious * pos).amax(-1, keepdim=True)
        norm = (align * max_iou / (max_align + self.eps)).amax(1)  # [B, A]
        t_scores = torch.zeros(b, a, c, device=dev, dtype=pd_scores.dtype)
        t_scores.scatter_(2, t_labels.unsqueeze(-1), norm.unsqueeze(-1))
        t_scores *= fg.unsqueeze(-1)
        return Assignment(labels=t_labels, boxes=t_boxes, scores=t_scores, fg=fg, gt_idx=gt_idx)
