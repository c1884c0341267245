"""An exponential moving average of a model's weights, kept beside training and saved in its checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class ModelEMA:
    """Exponential moving average of all float weights and buffers; warms up as timm's ModelEmaV2 does."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k].lerp_(v, 1 - decay)
            else:
                self.state[k].copy_(v)
