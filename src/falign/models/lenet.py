"""The LeNet networks of the BioTorch benchmark (Sanfiz & Akrout 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ._common import after, check_choice, image_shape, init_weights
from .registry import register_model
from .summary import SummaryMixin

__all__ = ["LENET_VARIANTS", "LeNet", "lenet"]

# variant -> (conv channels, kernel size, hidden FC width)
LENET_VARIANTS: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "mnist": ((6, 16, 120), 5, 84),
    "cifar": ((32, 64, 128), 3, 256),
}


class LeNet(SummaryMixin, nn.Module):
    """LeNet of BioTorch (Sanfiz & Akrout 2021, "Benchmarking the accuracy and robustness of
    feedback alignment algorithms"), from ``biotorch/models/le_net.py`` of
    github.com/jsalbert/biotorch (commit b07962b0), whose benchmark uses two networks:

    - ``variant="mnist"`` (``le_net_mnist``, MNIST / Fashion-MNIST at 1x32x32): conv 6@5x5 +
      ReLU, max-pool 2; conv 16@5x5 + ReLU, max-pool 2; conv 120@5x5 + ReLU (1x1 map for a
      32x32 input); flatten; FC 120->84 + ReLU; FC 84->num_classes.
    - ``variant="cifar"`` (``le_net_cifar``, CIFAR-10 at 3x32x32): conv 32@3x3 + ReLU, max-pool
      2; conv 64@3x3 + ReLU, max-pool 2; conv 128@3x3 + ReLU; global average pool; FC
      128->256 + ReLU; FC 256->num_classes.

    No padding anywhere, biases everywhere. ``variant=None`` picks "mnist" for one input
    channel and "cifar" otherwise. Deviations from BioTorch: the input channels come from
    ``in_shape`` (BioTorch hard-codes 1 and 3), ``num_classes`` is honoured (BioTorch always
    builds 10 outputs), and for the "mnist" variant fc1's input is ``120 * H' * W'`` so other
    input sizes work (120 at 32x32, as in BioTorch).

    Submodules: ``conv1..conv3``, ``relu1..relu4``, ``pool1, pool2``, ``avgpool`` (Identity
    for "mnist"), ``flatten``, ``fc1, fc2``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (3, 32, 32),
        variant: str | None = None,
        *,
        conv_layer: type[nn.Module] = nn.Conv2d,
        linear_layer: type[nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        c, h, w = image_shape("lenet", in_shape)
        if variant is None:
            variant = "mnist" if c == 1 else "cifar"
        check_choice("lenet", "variant", variant, [None, *LENET_VARIANTS])
        (c1, c2, c3), k, hidden = LENET_VARIANTS[variant]
        ops = (("conv", k), ("pool", 2), ("conv", k), ("pool", 2), ("conv", k))
        h3, w3 = after("lenet", h, *ops), after("lenet", w, *ops)
        self.in_shape = (c, h, w)
        self.num_classes = num_classes
        self.variant = variant
        self.conv1 = conv_layer(c, c1, kernel_size=k)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = conv_layer(c1, c2, kernel_size=k)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = conv_layer(c2, c3, kernel_size=k)
        self.relu3 = nn.ReLU()
        if variant == "cifar":
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d(1)
            flat = c3
        else:
            self.avgpool = nn.Identity()
            flat = c3 * h3 * w3
        self.flatten = nn.Flatten(1)
        self.fc1 = linear_layer(flat, hidden)
        self.relu4 = nn.ReLU()
        self.fc2 = linear_layer(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))  # mnist: (N, 6, 14, 14); cifar: (N, 32, 15, 15)
        x = self.pool2(self.relu2(self.conv2(x)))  # mnist: (N, 16, 5, 5); cifar: (N, 64, 6, 6)
        x = self.relu3(self.conv3(x))  # mnist: (N, 120, 1, 1); cifar: (N, 128, 4, 4)
        x = self.flatten(self.avgpool(x))  # (N, 120) / (N, 128)
        x = self.relu4(self.fc1(x))
        return self.fc2(x)


@register_model("lenet")
def lenet(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    variant: str | None = None,
    init: str = "default",
) -> LeNet:
    """BioTorch LeNet; input (3, 32, 32) by default, (1, 32, 32) for MNIST."""
    check_choice("lenet", "variant", variant, [None, *LENET_VARIANTS])
    model = LeNet(
        num_classes=num_classes if num_classes is not None else 10,
        in_shape=in_shape if in_shape is not None else (3, 32, 32),
        variant=variant,
    )
    init_weights(model, init, "lenet")
    return model
