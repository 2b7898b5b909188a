"""Shared by the pruning and sparsity tests: a quickly trained conv_net, and one torch thread on shared cores."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests import models


def quick_conv_net_weights(folder: Path, epochs: int) -> dict[str, torch.Tensor]:
    """conv_net trained a few epochs on digits: trained-like weight magnitudes in seconds (accuracy ~0.7 at 3)."""
    return torch.load(models.train_and_save("conv_net", folder / "conv_net.pt", epochs=epochs), weights_only=True)


def conv_net_with(weights: dict[str, torch.Tensor]) -> nn.Module:
    model = models.conv_net()
    model.load_state_dict(weights)
    return model.eval()
