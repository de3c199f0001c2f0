"""The CIFAR-10 network of Webster, Choi & Ahn 2020 (direct Kolen-Pollack)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ._common import after, image_shape, init_weights
from .registry import register_model
from .summary import SummaryMixin

__all__ = ["DKPNet", "dkp_cnn"]


class DKPNet(SummaryMixin, nn.Module):
    """Webster, Choi & Ahn 2020, "Learning the connections in direct feedback alignment": the
    two-conv, two-FC network of their public code (github.com/webstah/dkp-gist,
    ``networks/conv.py``, ``ConvNetwork``).

    conv 3->32 3x3 (stride 1, no padding) + batch norm + ReLU; conv 32->32 3x3 + batch norm +
    ReLU; max-pool 2; flatten; FC 6272->128 + ReLU; FC 128->num_classes, on 3x32x32 inputs
    (30x30, then 28x28, then 14x14 maps). Biases everywhere; PyTorch's default initialisation,
    as theirs. Submodules ``conv1, bn1, relu1, conv2, bn2, relu2, pool, flatten, fc1, relu3,
    fc2``. Another ``in_shape`` changes the input channels and fc1's input size, nothing else.

    Their DFA / DKP hooks sit after each ReLU, so conv2's feedback arrives before the pool
    (a 32x28x28 B); falign's direct pathway feeds each converted layer's input, so fc1's input,
    after the pool, receives it (a 32x14x14 B) and the pool's backward routes it to conv2.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (3, 32, 32),
        *,
        conv_layer: type[nn.Module] = nn.Conv2d,
        linear_layer: type[nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        c, h, w = image_shape("dkp_cnn", in_shape)
        ops = (("conv", 3), ("conv", 3), ("pool", 2))
        flat = 32 * after("dkp_cnn", h, *ops) * after("dkp_cnn", w, *ops)  # 6272 for 32x32
        self.in_shape = (c, h, w)
        self.num_classes = num_classes
        self.conv1 = conv_layer(c, 32, kernel_size=3)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.conv2 = conv_layer(32, 32, kernel_size=3)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten(1)
        self.fc1 = linear_layer(flat, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = linear_layer(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))  # (N, 32, 30, 30) for 32x32
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))  # (N, 32, 14, 14)
        x = self.relu3(self.fc1(self.flatten(x)))  # (N, 128)
        return self.fc2(x)


@register_model("dkp_cnn")
def dkp_cnn(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    init: str = "default",
) -> DKPNet:
    """The CIFAR-10 network of Webster, Choi & Ahn 2020, input (3, 32, 32)."""
    model = DKPNet(
        num_classes=num_classes if num_classes is not None else 10,
        in_shape=in_shape if in_shape is not None else (3, 32, 32),
    )
    init_weights(model, init, "dkp_cnn")
    return model
