"""The small CIFAR-10 CNN "Arch 1" of Moskovitz et al. 2018, as used by Lance & Kieu 2026."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ._common import after, image_shape, init_weights
from .registry import register_model
from .summary import SummaryMixin

__all__ = ["Arch1", "arch1"]


class Arch1(SummaryMixin, nn.Module):
    """Moskovitz et al. 2018, "Feedback alignment in deep convolutional networks", Arch 1.

    Exactly the network of Lance & Kieu 2026 on 3x24x24 crops: conv 3->64 5x5 (no padding) +
    ReLU, max-pool 2; conv 64->64 5x5 + ReLU, max-pool 2; FC 576->384 + ReLU, 384->192 + ReLU,
    192->num_classes. Layer names ``conv1, conv2, fc1, fc2, fc3`` are the ones the analysis
    code refers to; activations are ``relu1..relu4``, pools ``pool1, pool2``. Another
    ``in_shape`` changes the input channels and the size of fc1's input, nothing else.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (3, 24, 24),
        *,
        conv_layer: type[nn.Module] = nn.Conv2d,
        linear_layer: type[nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        c, h, w = image_shape("arch1", in_shape)
        ops = (("conv", 5), ("pool", 2), ("conv", 5), ("pool", 2))
        flat = 64 * after("arch1", h, *ops) * after("arch1", w, *ops)  # 576 for 24x24
        self.in_shape = (c, h, w)
        self.num_classes = num_classes
        self.conv1 = conv_layer(c, 64, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = conv_layer(64, 64, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten(1)
        self.fc1 = linear_layer(flat, 384)
        self.relu3 = nn.ReLU()
        self.fc2 = linear_layer(384, 192)
        self.relu4 = nn.ReLU()
        self.fc3 = linear_layer(192, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))  # (N, 64, 10, 10) for 24x24
        x = self.pool2(self.relu2(self.conv2(x)))  # (N, 64, 3, 3)
        x = self.flatten(x)  # (N, 576)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


@register_model("arch1")
def arch1(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    init: str = "default",
) -> Arch1:
    """Arch 1 of Moskovitz et al. 2018 (Lance & Kieu 2026), input (3, 24, 24)."""
    model = Arch1(
        num_classes=num_classes if num_classes is not None else 10,
        in_shape=in_shape if in_shape is not None else (3, 24, 24),
    )
    init_weights(model, init, "arch1")
    return model
