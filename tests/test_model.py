"""Detector, blocks, assigner, loss and optimisers on small random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from vap_video.engines.assign import TaskAlignedAssigner, box_iou_pairwise
from vap_video.engines.detector import (DetectorConfig, build_detector, count_params, make_anchors, model_info,
                                        topk_end2end)
from vap_video.engines.loss import DetectionLoss, LossWeights, bbox_ciou, o2m_weight
from vap_video.engines.nn import Conv, RepConv, fuse_conv_bn
from vap_video.engines.optim import (ModelEMA, MuSGD, apply_schedule, build_optimizer, lr_factor,
                                     newton_schulz_orthogonalize)

torch.set_num_threads(1)


def tiny(nc: int = 3, reg_max: int = 1, imgsz: int = 64) -> torch.nn.Module:
    """A very narrow model so tests stay fast on a shared CPU."""
    return build_detector(DetectorConfig(scale="n", nc=nc, reg_max=reg_max, imgsz=imgsz, width=0.125, max_det=50))


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so fusion is actually exercised (fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def test_train_mode_returns_both_heads_and_anchors():
    torch.manual_seed(0)
    m = tiny(nc=3).train()
    out = m(torch.rand(2, 3, 64, 96))
    a = 8 * 12 + 4 * 6 + 2 * 3
    assert out["anchors"].shape == (a, 2) and out["strides"].shape == (a, 1)
    for head in ("o2o", "o2m"):
        box, cls = out[head]
        assert box.shape == (2, a, 4) and cls.shape == (2, a, 3)


def test_eval_output_follows_engine_contract():
    torch.manual_seed(0)
    m = tiny(nc=3).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, 50, 6)
    scores = y[..., 4]
    assert torch.all(scores[:, :-1] >= scores[:, 1:]), "rows must be sorted by score"
    assert torch.all((scores >= 0) & (scores <= 1))
    cls = y[..., 5]
    assert y.dtype == torch.float32 and torch.equal(cls, cls.round()) and cls.max() < 3
    assert torch.all(y[..., 2] >= y[..., 0]) and torch.all(y[..., 3] >= y[..., 1])


def test_topk_over_anchor_times_class_allows_same_box_twice():
    boxes = torch.tensor([[[0, 0, 10, 10], [5, 5, 20, 20.0]]])
    scores = torch.tensor([[[0.9, 0.8], [0.1, 0.2]]])
    y = topk_end2end(boxes, scores, max_det=6)
    assert y.shape == (1, 6, 6)
    assert torch.allclose(y[0, 0], torch.tensor([0, 0, 10, 10, 0.9, 0]))
    assert torch.allclose(y[0, 1], torch.tensor([0, 0, 10, 10, 0.8, 1]))
    assert torch.allclose(y[0, 2, 4:], torch.tensor([0.2, 1]))
    assert torch.all(y[0, 4:] == 0), "fewer than K candidates are padded with zero rows"


def test_anchor_centres_are_cell_centres():
    pts, st = make_anchors([(2, 3)], (8,), torch.device("cpu"), torch.float32)
    assert torch.allclose(pts[0], torch.tensor([4.0, 4.0]))
    assert torch.allclose(pts[-1], torch.tensor([20.0, 12.0]))
    assert torch.all(st == 8)


@pytest.mark.parametrize("reg_max", [1, 8])
def test_fused_model_matches_unfused(reg_max):
    torch.manual_seed(1)
    m = tiny(nc=4, reg_max=reg_max)
    randomize_bn(m)
    m.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        n_rep = sum(isinstance(k, RepConv) for k in m.modules())
        m.fuse()
        got = m(x)
    assert n_rep > 0
    assert not any(isinstance(k, torch.nn.BatchNorm2d) for k in m.modules()), "all BN folded"
    assert all(k.fused is not None for k in m.modules() if isinstance(k, RepConv))
    assert torch.allclose(ref, got, atol=1e-4), (ref - got).abs().max()


def test_repconv_reparam_is_exact_with_identity_branch():
    torch.manual_seed(0)
    block = RepConv(8, 8)
    randomize_bn(block, 3)
    block.eval()
    assert block.idbn is not None
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        ref = block(x)
        block.fuse()
        assert torch.allclose(ref, block(x), atol=1e-5)


def test_conv_bn_fusion_exact():
    torch.manual_seed(0)
    c = Conv(3, 5, 3, 2)
    randomize_bn(c)
    c.eval()
    x = torch.randn(2, 3, 11, 11)
    with torch.no_grad():
        ref = c(x)
        c.fuse()
        assert torch.allclose(ref, c(x), atol=1e-5)
    assert isinstance(fuse_conv_bn(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2).eval()), torch.nn.Conv2d)


@pytest.mark.parametrize("padding", [(2, 1), "same"])
def test_conv_bn_fusion_keeps_stride_dilation_and_padding(padding):
    """The fused conv copies every geometric attribute of the original (as 2-tuples or 'same')."""
    torch.manual_seed(0)
    stride = (2, 1) if padding != "same" else 1
    conv = torch.nn.Conv2d(3, 4, (3, 5), stride=stride, padding=padding, dilation=(2, 1), bias=True)
    bn = torch.nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    conv.eval()
    bn.eval()
    x = torch.randn(1, 3, 13, 12)
    with torch.no_grad():
        assert torch.allclose(bn(conv(x)), fuse_conv_bn(conv, bn)(x), atol=1e-5)


def test_conv_bn_fusion_needs_running_statistics():
    bn = torch.nn.BatchNorm2d(2, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        fuse_conv_bn(torch.nn.Conv2d(2, 2, 1), bn)


def test_one_to_one_head_reads_detached_features():
    torch.manual_seed(0)
    m = tiny(nc=2).train()
    out = m(torch.rand(1, 3, 64, 64))
    (out["o2o"][0].sum() + out["o2o"][1].sum()).backward()
    trunk = [p.grad for p in m.backbone.parameters()] + [p.grad for p in m.neck.parameters()]
    assert all(g is None for g in trunk), "one-to-one loss must not reach the backbone/neck"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.o2o.parameters())
    m.zero_grad(set_to_none=True)
    out = m(torch.rand(1, 3, 64, 64))
    out["o2m"][1].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())


def test_drop_one_to_many_leaves_fewer_params():
    m = tiny()
    full = count_params(m)
    head = count_params(m.o2m)
    m.drop_one_to_many()
    assert count_params(m) == full - head
    assert m.o2m is None


def test_scales_grow_and_info_counts_flops():
    infos = [model_info(s, imgsz=64, nc=4) for s in "ns"]
    assert infos[0]["params"] < infos[1]["params"] and infos[0]["gflops"] < infos[1]["gflops"]
    assert infos[0]["gflops"] > 0
    with pytest.raises(ValueError, match="unknown model scale"):
        DetectorConfig(scale="q")
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectorConfig(imgsz=100)


# --------------------------------------------------------------------------------- assigner


def _anchors(size: int = 64):
    return make_anchors([(size // 8, size // 8), (size // 16, size // 16), (size // 32, size // 32)], (8, 16, 32),
                        torch.device("cpu"), torch.float32)


def test_assigner_one_to_one_gives_single_positive_per_gt():
    anchors, strides = _anchors()
    a = anchors.shape[0]
    torch.manual_seed(0)
    gt_boxes = torch.tensor([[[4.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]]])
    gt_labels = torch.tensor([[0, 1]])
    mask = torch.tensor([[True, True]])
    # predictions: every anchor predicts a box around itself of half the GT size, random scores
    pd_boxes = torch.cat([anchors - 8, anchors + 8], -1).unsqueeze(0)
    pd_scores = torch.rand(1, a, 2)
    o2o = TaskAlignedAssigner(2, topk=7, one_to_one=True)(pd_scores, pd_boxes, anchors, strides, gt_labels, gt_boxes,
                                                          mask)
    o2m = TaskAlignedAssigner(2, topk=10)(pd_scores, pd_boxes, anchors, strides, gt_labels, gt_boxes, mask)
    assert int(o2o.fg.sum()) == 2
    assert sorted(o2o.gt_idx[o2o.fg].tolist()) == [0, 1]
    assert 2 < int(o2m.fg.sum()) <= 20
    # positives carry their GT's class and box; soft targets peak at the best IoU of that GT
    for asg in (o2o, o2m):
        fg = asg.fg[0]
        assert torch.equal(asg.labels[0][fg], gt_labels[0][asg.gt_idx[0][fg]])
        assert torch.all(asg.scores[0][~fg] == 0)
        for j in range(2):
            sel = fg & (asg.gt_idx[0] == j)
            ious = box_iou_pairwise(pd_boxes[0][sel], gt_boxes[0, j])
            assert math.isclose(float(asg.scores[0][sel].max()), float(ious.max()), rel_tol=1e-4)


def test_assigner_small_target_still_gets_a_positive():
    anchors, strides = _anchors()
    # 2.5 px box lying between all anchor centres (stride 8: 12, 20; 16: 8, 24; 32: 16, 48)
    gt = torch.tensor([[[13.0, 13.0, 15.5, 15.5]]])
    inside = (anchors[:, 0] > 13) & (anchors[:, 0] < 15.5) & (anchors[:, 1] > 13) & (anchors[:, 1] < 15.5)
    assert not inside.any()
    pd_boxes = torch.cat([anchors - strides / 4, anchors + strides / 4], -1).unsqueeze(0)
    pd_scores = torch.full((1, anchors.shape[0], 1), 0.5)
    asg = TaskAlignedAssigner(1, topk=10)(pd_scores, pd_boxes, anchors, strides, torch.tensor([[0]]), gt,
                                          torch.tensor([[True]]))
    assert int(asg.fg.sum()) >= 1, "an enlarged tiny box must still get positives"
    best = int(asg.scores[0, :, 0].argmax())
    assert float(strides[best]) == 8 and torch.equal(anchors[best], torch.tensor([12.0, 12.0]))
    plain = TaskAlignedAssigner(1, topk=10)
    # the enlargement is bounded by one stride: a box further than that from every anchor gets none
    far = torch.tensor([[[100.0, 100.0, 102.0, 102.0]]])
    none = plain(pd_scores, pd_boxes, anchors, strides, torch.tensor([[0]]), far, torch.tensor([[True]]))
    assert not none.fg.any()


def test_assigner_handles_no_ground_truth():
    anchors, strides = _anchors()
    asg = TaskAlignedAssigner(2)(torch.rand(2, anchors.shape[0], 2), torch.rand(2, anchors.shape[0], 4), anchors,
                                 strides, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4),
                                 torch.zeros(2, 0, dtype=torch.bool))
    assert not asg.fg.any() and asg.scores.sum() == 0


# --------------------------------------------------------------------------------- loss


def test_ciou_is_one_for_identical_boxes_and_lower_otherwise():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert torch.allclose(bbox_ciou(a, a), torch.ones(1), atol=1e-5)
    far = torch.tensor([[20.0, 20.0, 25.0, 40.0]])
    assert float(bbox_ciou(a, far)) < 0


def test_o2m_weight_moves_linearly():
    w = LossWeights()
    assert o2m_weight(0, 11, w) == pytest.approx(0.8)
    assert o2m_weight(10, 11, w) == pytest.approx(0.1)
    assert o2m_weight(5, 11, w) == pytest.approx(0.45)


@pytest.mark.parametrize("reg_max", [1, 8])
def test_loss_is_finite_and_decreases_when_overfitting_one_batch(reg_max):
    torch.manual_seed(0)
    m = tiny(nc=2, reg_max=reg_max).train()
    crit = DetectionLoss(m)
    x = torch.rand(2, 3, 64, 64)
    t = torch.tensor([[0, 0, 8.0, 8.0, 40.0, 50.0], [1, 1, 20.0, 16.0, 60.0, 44.0], [1, 0, 2.0, 30.0, 14.0, 40.0]])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, parts = crit(m(x), t)
        assert math.isfinite(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert set(parts) >= {"o2o_box", "o2o_cls", "o2o_reg", "o2m_box", "o2m_cls", "o2m_reg", "w_o2m"}
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_with_empty_targets_only_has_class_term():
    m = tiny(nc=2).train()
    loss, parts = DetectionLoss(m)(m(torch.rand(1, 3, 64, 64)), torch.zeros(0, 6))
    assert math.isfinite(float(loss)) and parts["o2o_box"] == 0 and parts["o2o_cls"] > 0
    loss.backward()


# --------------------------------------------------------------------------------- optimisers


def test_newton_schulz_gives_near_orthogonal_matrix():
    torch.manual_seed(0)
    g = torch.randn(16, 40)
    o = newton_schulz_orthogonalize(g, steps=5)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.3, s


@pytest.mark.parametrize("name", ["sgd", "adamw", "musgd"])
def test_optimizers_reduce_a_simple_loss(name):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 6 * 6, 1))
    opt = build_optimizer(net, name, lr=0.01 if name != "adamw" else 3e-3, momentum=0.9, weight_decay=1e-4)
    assert [g["name"] for g in opt.param_groups] == ["weights", "norm", "bias"]
    assert opt.param_groups[1]["weight_decay"] == 0 and opt.param_groups[2]["weight_decay"] == 0
    x, y = torch.randn(32, 3, 8, 8), torch.randn(32, 1)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(net(x), y)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first
    if name == "musgd":
        assert isinstance(opt, MuSGD)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(net, "lion", 0.1, 0.9, 0.0)


def test_schedule_warmup_then_decay():
    net = torch.nn.Linear(2, 2)
    opt = build_optimizer(net, "sgd", 0.1, 0.9, 0.0)
    kw = dict(iters_per_epoch=10, epochs=10, lr=0.1, lrf=0.01, schedule="cosine", momentum=0.9, warmup_iters=20,
              warmup_momentum=0.8, warmup_bias_lr=0.1)
    apply_schedule(opt, 0, **kw)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["weights"]["lr"] == 0 and groups["bias"]["lr"] == pytest.approx(0.1)
    assert groups["weights"]["momentum"] == pytest.approx(0.8)
    apply_schedule(opt, 50, **kw)
    assert groups["weights"]["lr"] == pytest.approx(0.1 * lr_factor(5, 10, 0.01, "cosine"))
    assert groups["weights"]["momentum"] == pytest.approx(0.9)
    assert lr_factor(10, 10, 0.01, "linear") == pytest.approx(0.01)
    assert lr_factor(0, 10, 0.01, "cosine") == pytest.approx(1.0)


def test_ema_tracks_weights():
    net = torch.nn.Linear(2, 2)
    ema = ModelEMA(net, decay=0.9, tau=1.0)
    with torch.no_grad():
        net.weight.add_(1.0)
    for _ in range(100):
        ema.update(net)
    assert torch.allclose(ema.ema.weight, net.weight, atol=1e-3)


@pytest.mark.parametrize("one_to_one", [False, True])
def test_tiny_objects_get_positive_anchors(one_to_one):
    """A 4 px object has IoU^6 ~ 1e-10 with every early prediction; it must still get positives."""
    from vap_video.engines.assign import TaskAlignedAssigner
    from vap_video.engines.detector import make_anchors

    anchors, strides = make_anchors([(40, 40), (20, 20), (10, 10)], (8, 16, 32), torch.device("cpu"), torch.float32)
    a = anchors.shape[0]
    half = 10.5  # an untrained head predicts ~21 px boxes around every anchor
    pd_boxes = torch.cat([anchors - half, anchors + half], dim=1).unsqueeze(0)
    pd_scores = torch.full((1, a, 4), 0.01)
    gt_boxes = torch.tensor([[[100.0, 100.0, 104.0, 104.0], [200.0, 40.0, 206.0, 46.0]]])
    out = TaskAlignedAssigner(4, topk=7 if one_to_one else 10, one_to_one=one_to_one)(
        pd_scores, pd_boxes, anchors, strides, torch.tensor([[1, 3]]), gt_boxes, torch.tensor([[True, True]]))
    for g in range(2):
        assert int(((out.gt_idx[0] == g) & out.fg[0]).sum()) >= 1, f"GT {g} got no positive anchor"
