"""ResNets of He et al. 2016: the CIFAR ones (ResNet-20, -56, any depth 6n+2) and ImageNet's
ResNet-18."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_choice, image_shape, init_weights
from .registry import ModelError, register_model
from .summary import SummaryMixin

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ImageNetResNet",
    "PadShortcut",
    "resnet",
    "resnet18",
    "resnet20",
    "resnet56",
]

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels.

    Parameter-free, so a learning rule has nothing to convert here. The padding is split
    evenly before and after the existing channels (``planes // 4`` each side when the width
    doubles, as in the common CIFAR ResNet code).
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H / s, W / s)
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))  # (N, planes, ...)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "A",
        *,
        conv_layer: type[nn.Module] = nn.Conv2d,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv_layer(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv_layer(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        else:  # "B": 1x1 projection
            self.shortcut = nn.Sequential(
                conv_layer(in_planes, planes, 1, stride=stride, bias=False), norm_layer(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # not in place: custom backwards save tensors


class CifarResNet(SummaryMixin, nn.Module):
    """He et al. 2016, "Deep residual learning for image recognition", Section 4.2.

    ``depth = 6n + 2``: a 3x3 conv to 16 channels, three stages of ``n`` basic blocks with
    16, 32 and 64 channels (stride 2 at the start of stages 2 and 3), global average pool, FC.
    ``shortcut="A"`` (the paper's CIFAR choice) uses parameter-free zero-padding shortcuts
    (ResNet-20: 269,722 parameters, ResNet-56: 853,018); ``"B"`` uses 1x1 projections
    (ResNet-20: 272,474). Convolutions have no bias.

    Submodules: ``conv1, bn1, relu``, ``layer1..layer3`` (``layerS.i.conv1 / bn1 / relu1 /
    conv2 / bn2 / shortcut / relu2``), ``avgpool, flatten, fc``.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_shape: Sequence[int] = (3, 32, 32),
        shortcut: str = "A",
        *,
        conv_layer: type[nn.Module] = nn.Conv2d,
        linear_layer: type[nn.Module] = nn.Linear,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or depth % 6 != 2:
            raise ModelError(f"model 'resnet': depth must be 6n+2 with n >= 1, got {depth!r}")
        check_choice("resnet", "shortcut", shortcut, SHORTCUTS)
        c, h, w = image_shape("resnet", in_shape)
        n = (depth - 2) // 6
        self.depth = depth
        self.in_shape = (c, h, w)
        self.num_classes = num_classes
        self.conv1 = conv_layer(c, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU()
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(
                    BasicBlock(
                        in_planes,
                        planes,
                        stride if i == 0 else 1,
                        shortcut,
                        conv_layer=conv_layer,
                        norm_layer=norm_layer,
                    )
                )
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = linear_layer(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        x = self.layer1(x)  # (N, 16, 32, 32)
        x = self.layer2(x)  # (N, 32, 16, 16)
        x = self.layer3(x)  # (N, 64, 8, 8)
        x = self.flatten(self.avgpool(x))  # (N, 64)
        return self.fc(x)


class ImageNetResNet(SummaryMixin, nn.Module):
    """He et al. 2016, "Deep residual learning for image recognition", Section 3.4 and Table 1:
    the ImageNet ResNets of basic blocks (ResNet-18: ``blocks=(2, 2, 2, 2)``).

    A 7x7 stride-2 conv to 64 channels, BN, ReLU, 3x3 stride-2 max pool; four stages of basic
    blocks with 64, 128, 256 and 512 channels (stride 2 at the start of stages 2-4, 1x1
    projection shortcuts "B" where the shape changes); global average pool; FC. Convolutions
    have no bias. ResNet-18 for 1000 classes has 11,689,512 parameters (torchvision's count).
    Any input side works (the pool is global); 224 gives 7x7 maps before it.

    Submodules: ``conv1, bn1, relu, maxpool``, ``layer1..layer4`` (``layerS.i.conv1 / bn1 /
    relu1 / conv2 / bn2 / shortcut / relu2``), ``avgpool, flatten, fc``.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_shape: Sequence[int] = (3, 224, 224),
        *,
        conv_layer: type[nn.Module] = nn.Conv2d,
        linear_layer: type[nn.Module] = nn.Linear,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
            raise ModelError(f"ImageNet ResNet: blocks must be four positive ints, got {blocks!r}")
        c, h, w = image_shape("resnet18", in_shape)
        self.blocks = tuple(blocks)
        self.in_shape = (c, h, w)
        self.num_classes = num_classes
        self.conv1 = conv_layer(c, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        in_planes = 64
        for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), self.blocks, strict=True):
            stage = []
            for i in range(n):
                stage.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, "B",
                                        conv_layer=conv_layer, norm_layer=norm_layer))  # fmt: skip
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = linear_layer(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 64, 112, 112) from 224x224
        x = self.maxpool(x)  # (N, 64, 56, 56)
        x = self.layer1(x)  # (N, 64, 56, 56)
        x = self.layer2(x)  # (N, 128, 28, 28)
        x = self.layer3(x)  # (N, 256, 14, 14)
        x = self.layer4(x)  # (N, 512, 7, 7)
        x = self.flatten(self.avgpool(x))  # (N, 512)
        return self.fc(x)


@register_model("resnet18")
def resnet18(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    init: str = "kaiming",
) -> ImageNetResNet:
    """ResNet-18 for ImageNet (11.7M parameters at 1000 classes); 224x224 RGB by default.
    BioTorch trained it with ``init="xavier"``."""
    model = ImageNetResNet(
        (2, 2, 2, 2),
        num_classes=num_classes if num_classes is not None else 1000,
        in_shape=in_shape if in_shape is not None else (3, 224, 224),
    )
    init_weights(model, init, "resnet18")
    return model


def _build(
    depth: int,
    num_classes: int | None,
    in_shape: tuple[int, ...] | None,
    shortcut: str,
    init: str,
    name: str,
) -> CifarResNet:
    check_choice(name, "shortcut", shortcut, SHORTCUTS)
    model = CifarResNet(
        depth=depth,
        num_classes=num_classes if num_classes is not None else 10,
        in_shape=in_shape if in_shape is not None else (3, 32, 32),
        shortcut=shortcut,
    )
    init_weights(model, init, name)
    return model


@register_model("resnet")
def resnet(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    depth: int = 20,
    shortcut: str = "A",
    init: str = "kaiming",
) -> CifarResNet:
    """CIFAR ResNet of depth 6n+2; Kaiming-normal init as the common CIFAR ResNet code."""
    return _build(depth, num_classes, in_shape, shortcut, init, "resnet")


@register_model("resnet20")
def resnet20(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    shortcut: str = "A",
    init: str = "kaiming",
) -> CifarResNet:
    """ResNet-20 (0.27M parameters). BioTorch trained it with ``init="xavier"``."""
    return _build(20, num_classes, in_shape, shortcut, init, "resnet20")


@register_model("resnet56")
def resnet56(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    shortcut: str = "A",
    init: str = "kaiming",
) -> CifarResNet:
    """ResNet-56 (0.85M parameters)."""
    return _build(56, num_classes, in_shape, shortcut, init, "resnet56")
