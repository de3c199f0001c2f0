"""Small helpers shared by the reference models: option checks, activations, initialisation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from .registry import InputTooSmallError, ModelError, suggest

INITS = ("default", "xavier", "kaiming", "fan_sum_normal")

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def check_choice(model: str, option: str, value: Any, choices: Iterable[Any]) -> None:
    """ModelError naming ``model`` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value in choices:
        return
    names = [str(c) for c in choices]
    hint = suggest(str(value), names)
    raise ModelError(f"model {model!r}: {option}={value!r} is not one of {', '.join(names)}{hint}")


def make_activation(model: str, name: str) -> nn.Module:
    check_choice(model, "activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def image_shape(model: str, in_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from ``in_shape``, or a ModelError."""
    if len(in_shape) != 3:
        raise ModelError(f"model {model!r} needs in_shape=(C, H, W), got {tuple(in_shape)}")
    c, h, w = (int(d) for d in in_shape)
    return c, h, w


def after(model: str, size: int, *ops: tuple[str, int]) -> int:
    """Spatial size after ``("conv", k)`` (valid conv) / ``("pool", k)`` (floor) ops."""
    out = size
    for op, k in ops:
        out = out - k + 1 if op == "conv" else out // k
        if out < 1:
            raise InputTooSmallError(f"model {model!r}: an input side of {size} is too small for its "
                                     "layers")
    return out


def init_weights(model: nn.Module, scheme: str, name: str = "model") -> None:
    """Re-initialise every Linear / Conv weight in place.

    ``default``: keep PyTorch's own initialisation. ``xavier``: Glorot-uniform weights and zero
    biases, as BioTorch (Sanfiz & Akrout 2021) does. ``kaiming``: He-normal weights (fan-in,
    gain sqrt(2)), biases untouched, as the common CIFAR ResNet code does. ``fan_sum_normal``:
    weights and biases ~ N(0, 1 / (fan_in + fan_out)), as the fully connected networks of Akrout
    et al. 2019's code. Norm layers keep weight 1 and bias 0.
    """
    check_choice(name, "init", scheme, INITS)
    if scheme == "default":
        return
    for module in model.modules():
        if not isinstance(module, (nn.Linear, _ConvNd)):
            continue
        if scheme == "xavier":
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif scheme == "fan_sum_normal":
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
            std = math.sqrt(1.0 / (fan_in + fan_out))
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.normal_(module.bias, 0.0, std)
        else:
            nn.init.kaiming_normal_(module.weight)


def prod(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)
