"""The head-gap switches of the loss and assigner (issue 18): each must change what it claims to.

Each test compares a switch against today's default on the same tensors, so it fails if the
switch is not wired through (the default and the switched run would agree).
"""

from __future__ import annotations

import pytest
import torch

from vap_video.engines.assign import TaskAlignedAssigner, box_iou_pairwise
from vap_video.engines.detector import DetectorConfig, build_detector, make_anchors
from vap_video.engines.loss import DetectionLoss, LossWeights
from vap_video.engines.train_config import ConfigFileError, TrainConfig, load_config

torch.set_num_threads(1)

TARGETS = torch.tensor([[0, 0, 8.0, 8.0, 40.0, 50.0], [1, 1, 20.0, 16.0, 60.0, 44.0], [1, 0, 2.0, 30.0, 14.0, 40.0]])


def tiny(nc: int = 2) -> torch.nn.Module:
    return build_detector(DetectorConfig(scale="n", nc=nc, imgsz=64, width=0.125, max_det=50))


def anchors64():
    return make_anchors([(8, 8), (4, 4), (2, 2)], (8, 16, 32), torch.device("cpu"), torch.float32)


def test_defaults_are_todays_behaviour():
    cfg = TrainConfig(data="d.yaml")
    crit = DetectionLoss.from_config(tiny(), cfg)
    assert crit.o2o_match == "own" and crit.o2o_assigner.topk == 7 and crit.o2m_assigner.topk == 10
    assert crit.w.o2o_cls == 1.0 and crit.o2m_assigner.min_half_strides == 1.0
    # since 2026-12-04 (two seeds, benchmarks/model.md): the one-to-one loss also trains the trunk, its box terms
    # use the top-10 assignment, and its own clip is 40
    assert not any(crit.o2o_detached(e) for e in range(50))
    assert crit.o2o_box_dense is True and cfg.o2o_clip_grad == 40.0 and crit.o2o_cls_loss == "bce"
    assert cfg.o2o_clip_apart is True  # the default since the 12-epoch, two-seed runs in benchmarks/model.md


def test_a_run_saved_before_clip_apart_existed_resumes_with_the_shared_clip(tmp_path):
    """Flipping a default must not change a resumed run: a checkpoint without the key trained with one clip."""
    from vap_video.engines.train_checkpoint import resume_config, save_checkpoint

    for name, saved, expected in (("old", {}, False), ("new", {"o2o_clip_apart": True}, True),
                                  ("off", {"o2o_clip_apart": False}, False)):
        save_checkpoint(tmp_path / f"{name}.pt", {"model_cfg": {}, "ema": {}, "train_cfg": {"data": "d.yaml", **saved}})
        assert resume_config(tmp_path / f"{name}.pt").o2o_clip_apart is expected, name
    old = resume_config(tmp_path / "old.pt")
    assert old.o2o_box_dense is False and old.o2o_clip_grad is None  # both new on 2026-12-04, defaults since
    save_checkpoint(tmp_path / "det.pt", {"model_cfg": {}, "ema": {}, "train_cfg": {"data": "d.yaml",
                                                                                      "o2o_detach_epochs": None}})
    assert resume_config(tmp_path / "det.pt").o2o_detach_epochs is None


def test_recipe_rejects_an_unknown_matching_mode(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: d.yaml\no2o_match: both\n")
    with pytest.raises(ConfigFileError, match="o2o_match"):
        load_config(recipe, {})
    with pytest.raises(ValueError, match="o2o_match"):
        DetectionLoss(tiny(), o2o_match="both")


def test_o2o_cls_gain_scales_only_the_one_to_one_class_term():
    torch.manual_seed(0)
    m = tiny().train()
    out = m(torch.rand(2, 3, 64, 64))
    _, base = DetectionLoss(m)(out, TARGETS)
    _, gained = DetectionLoss.from_config(m, TrainConfig(data="d", o2o_cls=2.5))(out, TARGETS)
    assert gained["o2o_cls"] == pytest.approx(2.5 * base["o2o_cls"], rel=1e-5)
    for k in ("o2o_box", "o2o_reg", "o2m_cls", "o2m_box"):
        assert gained[k] == pytest.approx(base[k], rel=1e-6)


def test_dense_box_terms_train_the_one_to_one_box_on_many_anchors_and_leave_its_classes_alone():
    """o2o_box_dense: the one-to-one box branch gets a gradient at the top-10 anchors per object,
    not at one; the classification term (the part that decides duplicates) is unchanged."""
    torch.manual_seed(0)
    m = tiny().train()
    out = m(torch.rand(2, 3, 64, 64))
    grads = {}
    for dense in (False, True):
        box_raw = out["o2o"][0].detach().requires_grad_(True)
        crit = DetectionLoss.from_config(m, TrainConfig(data="d", o2o_box_dense=dense))
        total, parts = crit({**out, "o2o": (box_raw, out["o2o"][1].detach()), "o2m": (out["o2m"][0].detach(),
                             out["o2m"][1].detach())}, TARGETS)
        total.backward()
        grads[dense] = (int((box_raw.grad.abs().sum(-1) > 0).sum()), parts)
    (sparse_n, sparse), (dense_n, dense) = grads[False], grads[True]
    assert sparse_n <= len(TARGETS) < dense_n  # one anchor per object (or fewer on a tie) vs many
    assert dense["o2o_cls"] == pytest.approx(sparse["o2o_cls"], rel=1e-6)
    assert dense["o2o_box"] != pytest.approx(sparse["o2o_box"], rel=1e-3)
    assert dense["o2m_box"] == pytest.approx(sparse["o2m_box"], rel=1e-6)


def test_varifocal_weights_hard_negatives_and_positives_by_their_target():
    from vap_video.engines.loss import varifocal_loss

    logits = torch.logit(torch.tensor([0.01, 0.9, 0.6, 0.6]))
    target = torch.tensor([0.0, 0.0, 0.8, 0.4])
    vfl = varifocal_loss(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # an easy negative (p 0.01) all but vanishes, a confident false positive (p 0.9) keeps 0.75 * 0.81 of its BCE
    assert vfl[0] / bce[0] == pytest.approx(0.75 * 0.01**2, rel=1e-4)
    assert vfl[1] / bce[1] == pytest.approx(0.75 * 0.9**2, rel=1e-4)
    assert torch.allclose(vfl[2:] / bce[2:], target[2:])  # positives: weighted by their IoU target


def test_varifocal_switch_changes_only_the_one_to_one_class_term():
    torch.manual_seed(0)
    m = tiny().train()
    out = m(torch.rand(2, 3, 64, 64))
    _, bce = DetectionLoss(m)(out, TARGETS)
    _, vfl = DetectionLoss.from_config(m, TrainConfig(data="d", o2o_cls_loss="vfl"))(out, TARGETS)
    assert vfl["o2o_cls"] < 0.5 * bce["o2o_cls"]  # the easy negatives' share is gone
    for k in ("o2o_box", "o2o_reg", "o2m_cls", "o2m_box"):
        assert vfl[k] == pytest.approx(bce[k], rel=1e-6)
    with pytest.raises(ValueError, match="o2o_cls_loss"):
        DetectionLoss(m, o2o_cls_loss="focal")


def test_consistent_matching_takes_the_one_to_many_heads_best_anchor():
    """o2o_match=o2m: one positive per GT, among the o2m assigner's positives, the one with the
    highest o2m alignment metric s^0.5 * IoU^6 (YOLOv10's consistent dual assignment)."""
    anchors, strides = anchors64()
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(1)
    gt_boxes = torch.tensor([[[4.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]]])
    gt_labels, mask = torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    jitter = torch.rand(1, a, 4, generator=g) * 6
    pd_boxes = torch.cat([anchors - 12, anchors + 12], -1).unsqueeze(0) + jitter
    pd_scores = torch.rand(1, a, 2, generator=g)
    crit = DetectionLoss(tiny(), o2o_match="o2m")
    o2m = crit.o2m_assigner(pd_scores, pd_boxes, anchors, strides, gt_labels, gt_boxes, mask)
    o2o = crit.o2o_from_o2m(pd_scores, pd_boxes, anchors, strides, gt_labels, gt_boxes, mask)
    assert int(o2o.fg.sum()) == 2 and bool((o2o.fg <= o2m.fg).all())
    for j in range(2):
        cand = torch.nonzero(o2m.fg[0] & (o2m.gt_idx[0] == j)).flatten()
        metric = (pd_scores[0, cand, j].pow(0.5) * box_iou_pairwise(pd_boxes[0, cand], gt_boxes[0, j]).pow(6))
        chosen = torch.nonzero(o2o.fg[0] & (o2o.gt_idx[0] == j)).flatten()
        assert chosen.tolist() == [int(cand[metric.argmax()])]


def test_consistent_matching_changes_the_one_to_one_loss_when_the_heads_differ():
    torch.manual_seed(0)
    m = tiny().train()
    with torch.no_grad():  # the two heads start as copies; make the one-to-many head rank anchors differently
        for p in m.o2m.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    out = m(torch.rand(2, 3, 64, 64))
    _, own = DetectionLoss(m)(out, TARGETS)
    _, cons = DetectionLoss(m, o2o_match="o2m")(out, TARGETS)
    assert (own["o2o_cls"], own["o2o_box"]) != pytest.approx((cons["o2o_cls"], cons["o2o_box"]), rel=1e-4)
    assert own["o2m_cls"] == pytest.approx(cons["o2m_cls"], rel=1e-6)  # the o2m head's own loss is unchanged


def test_o2o_topk_changes_who_wins_a_shared_best_anchor():
    """Two nearly identical GTs whose best anchor is the same: with top-1 candidates the loser of the
    conflict has nothing left; with today's 7 it falls back to its next candidate."""
    anchors, strides = anchors64()
    gt_boxes = torch.tensor([[[20.0, 20.0, 52.0, 52.0], [21.0, 21.0, 53.0, 53.0]]])  # both best at anchor (36, 36)
    pd_boxes = torch.cat([anchors - 16, anchors + 16], -1).unsqueeze(0)
    pd_scores = torch.full((1, anchors.shape[0], 2), 0.5)
    args = (pd_scores, pd_boxes, anchors, strides, torch.tensor([[0, 1]]), gt_boxes, torch.tensor([[True, True]]))
    wide = DetectionLoss.from_config(tiny(), TrainConfig(data="d")).o2o_assigner(*args)
    narrow = DetectionLoss.from_config(tiny(), TrainConfig(data="d", o2o_topk=1)).o2o_assigner(*args)
    assert int(wide.fg.sum()) == 2
    assert int(narrow.fg.sum()) == 1


def test_detach_schedule_and_the_gradient_reaching_the_trunk():
    crit = DetectionLoss.from_config(tiny(), TrainConfig(data="d", o2o_detach_epochs=3))
    assert [crit.o2o_detached(e) for e in range(5)] == [True, True, True, False, False]
    assert not DetectionLoss(tiny(), o2o_detach_epochs=0).o2o_detached(0)
    torch.manual_seed(0)
    m = tiny().train()
    x = torch.rand(1, 3, 64, 64)
    for detached in (True, False):
        m.zero_grad(set_to_none=True)
        m.detach_o2o = detached
        out = m(x)
        (out["o2o"][0].sum() + out["o2o"][1].sum()).backward()
        reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
        assert reached is (not detached)


def test_training_step_applies_the_detach_schedule(monkeypatch):
    """The training step sets the model's detach flag from the loss's schedule before its forward."""
    from types import SimpleNamespace

    from vap_video.engines import train_loop

    m = tiny().train()
    crit = DetectionLoss(m, o2o_detach_epochs=1)
    seen = []
    real_forward = m.forward_raw
    m.forward_raw = lambda x: (seen.append(m.detach_o2o), real_forward(x))[1]
    opt = torch.optim.SGD(m.parameters(), lr=1e-4)
    st = SimpleNamespace(device=torch.device("cpu"), use_amp=False, amp_dtype=torch.float16, net=m, model=m,
                         crit=crit, world=1, opt=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                         cfg=SimpleNamespace(clip_grad=10.0, o2o_clip_apart=True, o2o_clip_grad=None),
                         ema=SimpleNamespace(update=lambda model: None), schedule=SimpleNamespace(epochs=4))
    for epoch in (0, 1):
        train_loop._step(st, torch.rand(2, 3, 64, 64), TARGETS, epoch, 0)
    assert seen == [True, False]


def test_small_target_enlargement_is_configurable():
    anchors, strides = anchors64()
    pd_scores = torch.full((1, anchors.shape[0], 1), 0.5)
    tiny_box = torch.tensor([[[13.0, 13.0, 15.5, 15.5]]])  # between all anchor centres
    # centre (90, 31): more than one stride from every anchor of its level, within two of the stride-32 one at 48
    near = torch.tensor([[[89.0, 30.0, 91.0, 32.0]]])
    lab, msk = torch.tensor([[0]]), torch.tensor([[True]])

    def n_pos(gt, k, half):
        pd_boxes = torch.cat([anchors - half, anchors + half], -1).unsqueeze(0)  # overlapping gt: nonzero metric
        return int(TaskAlignedAssigner(1, topk=10, min_half_strides=k)(pd_scores, pd_boxes, anchors, strides, lab,
                                                                        gt, msk).fg.sum())

    assert n_pos(tiny_box, 0.0, strides / 4) == 0 and n_pos(tiny_box, 1.0, strides / 4) >= 1
    assert n_pos(near, 1.0, strides * 2) == 0 and n_pos(near, 2.0, strides * 2) >= 1
    crit = DetectionLoss.from_config(tiny(1), TrainConfig(data="d", min_half_strides=2.0))
    assert crit.o2m_assigner.min_half_strides == crit.o2o_assigner.min_half_strides == 2.0


def test_loss_weights_keep_their_positional_order():
    """Callers that build LossWeights positionally (box, cls, dfl, o2m_start, o2m_end) are unaffected."""
    w = LossWeights(7.5, 0.5, 1.5, 0.8, 0.1)
    assert (w.o2o, w.o2o_cls) == (1.0, 1.0)


def test_clipping_the_one_to_one_head_apart_keeps_the_trunks_gradient():
    """With a shared clip a large one-to-one gradient shrinks the trunk's; clipped apart it does not."""
    from vap_video.engines.train_loop import clip_gradients

    torch.manual_seed(0)
    m = tiny().train()
    loss, _ = DetectionLoss(m, LossWeights(o2o_cls=1000.0))(m(torch.rand(2, 3, 64, 64)), TARGETS)
    loss.backward()
    raw = [p.grad.clone() for p in m.parameters()]
    trunk = [i for i, (n, _) in enumerate(m.named_parameters()) if not n.startswith(("o2o.", "o2m."))]
    rest = float(torch.sqrt(sum((g ** 2).sum() for (n, _), g in zip(m.named_parameters(), raw)
                                if not n.startswith("o2o."))))
    limit = 1.01 * rest  # the rest is not clipped on its own; the head's gradient is far above it

    def trunk_norm(apart):
        for p, g in zip(m.parameters(), raw):
            p.grad = g.clone()
        clip_gradients(m, limit, apart)
        grads = [p.grad for p in m.parameters()]
        return float(torch.sqrt(sum((grads[i] ** 2).sum() for i in trunk))), grads

    shared, _ = trunk_norm(False)
    apart, grads = trunk_norm(True)
    raw_trunk = float(torch.sqrt(sum((raw[i] ** 2).sum() for i in trunk)))
    assert apart == pytest.approx(raw_trunk, rel=1e-5) and shared < 0.5 * raw_trunk
    head = torch.sqrt(sum((p.grad ** 2).sum() for p in m.o2o.parameters()))
    assert float(head) == pytest.approx(limit, rel=1e-3)


def test_the_one_to_one_head_has_its_own_clip_when_asked():
    """o2o_clip_grad sets the head's limit alone: the trunk keeps clip_grad's."""
    from vap_video.engines.train_loop import clip_gradients

    torch.manual_seed(0)
    m = tiny().train()
    loss, _ = DetectionLoss(m)(m(torch.rand(2, 3, 64, 64)), TARGETS)
    loss.backward()
    norm = lambda ps: float(torch.sqrt(sum((p.grad ** 2).sum() for p in ps)))
    rest = [p for n, p in m.named_parameters() if not n.startswith("o2o.")]
    head0, rest0 = norm(m.o2o.parameters()), norm(rest)
    clip_gradients(m, 0.5 * rest0, True, 0.25 * head0)
    assert norm(m.o2o.parameters()) == pytest.approx(0.25 * head0, rel=1e-4)
    assert norm(rest) == pytest.approx(0.5 * rest0, rel=1e-4)
