"""Everything in a run that depends on *when* it is: learning rate, momentum warmup, mosaic, head weights.

Why a function of the absolute epoch and the schedule's own length: a resumed run must land on the
values an uninterrupted run would have had. The length comes from the checkpoint (the ``epochs``
the run was started with), not from the resumed command line, so ``vap train --resume RUN --epochs
N`` trains past the end of the schedule at its final learning rate with mosaic off, instead of
re-entering the cosine at a higher learning rate and turning mosaic back on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """The run's schedule. `epochs`: its length (the run's original --epochs); `iters_per_epoch`:
    optimiser steps per epoch (the global iteration is ``epoch * iters_per_epoch + i``)."""

    epochs: int
    iters_per_epoch: int
    warmup_iters: int
    close_mosaic: int
    lr0: float
    lrf: float
    kind: str
    momentum: float
    warmup_momentum: float
    warmup_bias_lr: float

    @classmethod
    def of(cls, cfg: Any, epochs: int, iters_per_epoch: int) -> Schedule:
        """The schedule of a TrainConfig over `epochs` (the saved length when resuming)."""
        warmup = max(round(cfg.warmup_epochs * iters_per_epoch), 100) if cfg.warmup_epochs > 0 else 0
        return cls(epochs=int(epochs), iters_per_epoch=int(iters_per_epoch), warmup_iters=warmup,
                   close_mosaic=int(cfg.close_mosaic), lr0=cfg.lr0, lrf=cfg.lrf, kind=cfg.schedule,
                   momentum=cfg.momentum, warmup_momentum=cfg.warmup_momentum, warmup_bias_lr=cfg.warmup_bias_lr)

    def mosaic(self, epoch: int) -> bool:
        """Mosaic on, except for the last `close_mosaic` epochs of the schedule and any epoch after it."""
        return not (self.close_mosaic and epoch >= self.epochs - self.close_mosaic)

    def lr(self, epoch: int, i: int) -> float:
        """The decayed learning rate at iteration i of `epoch` (after warmup); lr0 * lrf past the end."""
        from vap_video.engines.optim import lr_factor

        return self.lr0 * lr_factor(epoch + i / max(self.iters_per_epoch, 1), self.epochs, self.lrf, self.kind)

    def apply(self, opt: Any, epoch: int, i: int) -> float:
        """Set lr and momentum on every parameter group for iteration i of `epoch`; returns the lr."""
        from vap_video.engines.optim import apply_schedule

        return apply_schedule(opt, epoch * self.iters_per_epoch + i, self.iters_per_epoch, self.epochs, self.lr0,
                              self.lrf, self.kind, self.momentum, self.warmup_iters, self.warmup_momentum,
                              self.warmup_bias_lr)

    def to_dict(self) -> dict[str, int]:
        """What a checkpoint keeps: the length; the rest follows from the (unchangeable) recipe."""
        return {"epochs": self.epochs}
