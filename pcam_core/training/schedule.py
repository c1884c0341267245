"""The learning rate as a pure function of the step: a resumed run repeats the uninterrupted one exactly."""

from __future__ import annotations

import math

from pcam_core.runs.config import TrainConfig


def lr_factor(step: int, total: int, schedule: str, warmup_frac: float) -> float:
    """Learning-rate multiplier at `step` of `total`: one-cycle (linear warm-up, cosine down) or cosine."""
    warm = int(total * warmup_frac) if schedule == "onecycle" else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def scheduled_lr(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at `step`: one schedule over the run, or one per phase under head_then_full."""
    start, end, scale = 0, cfg.epochs, 1.0
    if cfg.finetune == "head_then_full":
        head = step < cfg.head_epochs * steps_per_epoch
        start, end = (0, cfg.head_epochs) if head else (cfg.head_epochs, cfg.epochs)
        scale = 1.0 if head else cfg.unfreeze_lr_factor
    return cfg.lr * scale * lr_factor(step - start * steps_per_epoch, (end - start) * steps_per_epoch,
                                      cfg.schedule, cfg.warmup_frac)
