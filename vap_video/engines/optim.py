"""Optimisers, learning-rate / momentum schedules and the weight EMA used by training.

* SGD (Nesterov) and AdamW from torch, with three parameter groups: conv/linear weights (with
  weight decay), BatchNorm weights and biases (no decay — decaying them only fights BN's scale
  invariance and the bias priors of the head).
* MuSGD: Muon's orthogonalised update (Newton–Schulz iteration on the momentum matrix) for
  weights with >= 2 dims, blended with a plain SGD-momentum step; 1-D parameters get plain SGD.
  The orthogonalised direction equalises the update across singular directions, which speeds
  early training; the SGD share keeps the well-understood behaviour of SGD with BN.
* Warmup: learning rate ramps linearly from 0 (biases from ``warmup_bias_lr``) and momentum from
  ``warmup_momentum`` over the first iterations, then cosine or linear decay to ``lr * lrf``.
* EMA of weights (decay ramping up over the first ~2000 updates); the EMA model is what is
  validated, checkpointed as "best" and exported.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

_NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton–Schulz coefficients from the Muon write-up


def newton_schulz_orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor U V^T of ``g`` (2-D) by a quintic Newton–Schulz iteration.

    Cheaper than an SVD and stable in low precision; the result's singular values land near 1.
    """
    a, b, c = _NS_COEFFS
    x = g.float()
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        am = x @ x.T
        bm = b * am + c * am @ am
        x = a * x + bm @ x
    if transpose:
        x = x.T
    return x.to(g.dtype)


class MuSGD(torch.optim.Optimizer):
    """Muon + SGD hybrid (see module docstring).

    For a >= 2-D parameter with momentum buffer ``m`` (Nesterov):
    ``update = muon_weight * NS(m) * muon_scale + sgd_weight * m``.
    ``muon_scale`` (0.2 * sqrt(max(rows, cols))) brings the orthogonal update's RMS close to that
    of a typical SGD step so the same learning rate works for both parts.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = True, muon_weight: float = 0.5, sgd_weight: float = 0.5, ns_steps: int = 5):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        muon_weight=muon_weight, sgd_weight=sgd_weight, ns_steps=ns_steps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(mom).add_(g)
                d = g.add(buf, alpha=mom) if group["nesterov"] else buf
                if p.ndim >= 2:
                    mat = d.reshape(d.shape[0], -1)
                    ortho = newton_schulz_orthogonalize(mat, group["ns_steps"])
                    rows, cols = mat.shape
                    ortho = ortho * 0.2 * math.sqrt(max(rows, cols))
                    d = group["muon_weight"] * ortho.view_as(p) + group["sgd_weight"] * d
                p.add_(d, alpha=-lr)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: decayed weights / BN weights / biases (the last two without decay)."""
    decay, no_decay_bn, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                no_decay_bn.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "weights"},
        {"params": no_decay_bn, "weight_decay": 0.0, "name": "norm"},
        {"params": bias, "weight_decay": 0.0, "name": "bias"},
    ]


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
                    ) -> torch.optim.Optimizer:
    """``name`` in {"sgd", "adamw", "musgd"}; ``momentum`` is beta1 for AdamW."""
    groups = param_groups(model, weight_decay)
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    if name == "musgd":
        return MuSGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}: choose sgd, adamw or musgd")


def lr_factor(epoch_frac: float, epochs: int, lrf: float, schedule: str) -> float:
    """Decay multiplier at (fractional) epoch ``epoch_frac``: 1 -> ``lrf`` by cosine or linearly."""
    t = min(max(epoch_frac / max(epochs, 1), 0.0), 1.0)
    if schedule == "cosine":
        return lrf + (1 - lrf) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1 - (1 - lrf) * t
    raise ValueError(f"unknown lr schedule {schedule!r}: choose cosine or linear")


def apply_schedule(opt: torch.optim.Optimizer, it: int, iters_per_epoch: int, epochs: int, lr: float, lrf: float,
                   schedule: str, momentum: float, warmup_iters: int, warmup_momentum: float,
                   warmup_bias_lr: float) -> float:
    """Set lr (and momentum during warmup) on every group for global iteration ``it``; returns lr.

    A pure function of ``it`` so a resumed run lands on exactly the same values.
    """
    target = lr * lr_factor(it / max(iters_per_epoch, 1), epochs, lrf, schedule)
    for g in opt.param_groups:
        if it < warmup_iters:
            f = it / max(warmup_iters, 1)
            start = warmup_bias_lr if g.get("name") == "bias" else 0.0
            g["lr"] = start + (target - start) * f
            m = warmup_momentum + (momentum - warmup_momentum) * f
        else:
            g["lr"] = target
            m = momentum
        if "betas" in g:
            g["betas"] = (m, g["betas"][1])
        elif "momentum" in g:
            g["momentum"] = m
    return target


class ModelEMA:
    """Exponential moving average of model weights (and BN buffers).

    decay_t = decay * (1 - exp(-updates / tau)): small early so the EMA follows the fast-moving
    weights, approaching ``decay`` later so it smooths out SGD noise.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        self.ema.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])
