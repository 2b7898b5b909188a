"""Conv nets made sensitive to int8 on purpose, from the digits-trained ``conv_net`` (tests/models.py).

``outlier_net``: the first conv gets a ninth channel, a copy of channel 0 scaled x100 (filter, BatchNorm gamma and
beta), that the second conv ignores (zero weights). The float model computes exactly what the trained net computes,
but the first conv's output spans ~100x its useful range, so its one per-tensor int8 grid is far too coarse for the
eight channels that matter. Keeping that layer high recovers it. The second conv, which holds 94% of the MACs, reads
that output: in a TFLite file, where a kept layer is float, it runs float too.

``bridged_outlier_net``: the same, with a 1x1 identity conv (+ ReLU, an identity on ReLU outputs) between the two
convs that drops the outlier channel. The float function is still the trained net's; a TFLite file keeping the
first conv float now runs only it and the cheap bridge float (11% of the MACs), the second conv reading the bridge's
int8 output.
"""

from __future__ import annotations

import torch
from torch import nn

from tests import models

OUTLIER_FACTOR = 100.0
TRAIN_EPOCHS = 15
SENSITIVE = "/0/Conv"  # the first conv (+ BatchNorm + ReLU), as the legacy exporter names it
HIDDEN = "/2/Relu_output_0"  # its output: the tensor with the outlier channel


def outlier_net() -> nn.Module:
    """conv_net with a ninth first-layer channel (the factory the pipeline tests load)."""
    net = models.conv_net()
    net[0], net[1], net[3] = nn.Conv2d(1, 9, 3, padding=1), nn.BatchNorm2d(9), nn.Conv2d(9, 16, 3, padding=1)
    return net


def outlier_state(conv_net_state: dict) -> dict:
    """The trained conv_net's weights plus the outlier channel 8 = 100 x channel 0, which conv 2 does not read."""
    state = {k: v.clone() for k, v in conv_net_state.items()}
    for key in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        state[key] = torch.cat([state[key], state[key][:1]])
    for key in ("1.weight", "1.bias"):  # BN(x) = gamma (x - mean) / std + beta: x100 on gamma and beta
        state[key] = torch.cat([state[key], state[key][:1] * OUTLIER_FACTOR])
    state["3.weight"] = torch.cat([state["3.weight"], torch.zeros_like(state["3.weight"][:, :1])], dim=1)
    return state


def bridged_outlier_net() -> nn.Module:
    """outlier_net with conv(9 -> 8, 1x1) + ReLU after the first ReLU; its layers shift by two (the dense is /11)."""
    net = outlier_net()
    layers = list(net)
    layers[3] = nn.Conv2d(8, 16, 3, padding=1)
    return nn.Sequential(*layers[:3], nn.Conv2d(9, 8, 1), nn.ReLU(), *layers[3:])


def bridged_outlier_state(conv_net_state: dict) -> dict:
    """The bridge passes channels 0-7 through unchanged and drops channel 8; the later layers keep their weights."""
    state = outlier_state(conv_net_state)
    state["3.weight"] = state["3.weight"][:, :8]  # conv 2 reads the bridge's 8 channels
    shifted = {k: v for k, v in state.items() if not k.split(".")[0].isdigit() or int(k.split(".")[0]) < 3}
    shifted |= {f"{int(k.split('.')[0]) + 2}.{k.split('.', 1)[1]}": v for k, v in state.items() if k not in shifted}
    bridge = torch.zeros(8, 9, 1, 1)
    bridge[torch.arange(8), torch.arange(8)] = 1.0
    return shifted | {"3.weight": bridge, "3.bias": torch.zeros(8)}
