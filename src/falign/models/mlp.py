"""Fully connected network: the DynamicModel of the DFA framework report."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ._common import check_choice, init_weights, make_activation, prod
from .registry import CompareDefaults, ModelError, register_model
from .summary import SummaryMixin

__all__ = ["MLP", "OUTPUTS", "mlp"]

DEFAULT_SIZES = (784, 1000, 10)
OUTPUTS = (None, "identity", "sigmoid", "softmax", "log_softmax")


def _output_module(name: str | None) -> nn.Module:
    check_choice("mlp", "output", name, OUTPUTS)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=1)
    if name == "log_softmax":
        return nn.LogSoftmax(dim=1)
    return nn.Identity()


class MLP(SummaryMixin, nn.Module):
    """Stack of Linear layers, ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    The DynamicModel of the DFA framework report: ``activation`` after every hidden layer,
    ``output`` after the last one (``None`` leaves logits). The input is flattened from dim 1.
    Submodules: ``flatten``, ``layers.i`` (Linear), ``acts.i`` (hidden activations),
    ``out_act`` (output non-linearity, Identity when ``output`` is None).
    """

    def __init__(
        self,
        sizes: Sequence[int] = DEFAULT_SIZES,
        activation: str = "relu",
        output: str | None = None,
        bias: bool = True,
        in_shape: Sequence[int] | None = None,
        *,
        linear_layer: type[nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ModelError(f"model 'mlp': sizes needs >= 2 positive ints, got {sizes}")
        in_shape = tuple(in_shape) if in_shape is not None else (sizes[0],)
        flat = prod(in_shape)
        if flat != sizes[0]:
            raise ModelError(f"model 'mlp': sizes[0]={sizes[0]} but in_shape {in_shape} has {flat}")
        self.sizes = sizes
        self.in_shape = in_shape
        self.num_classes = sizes[-1]
        self.flatten = nn.Flatten(1)
        self.layers = nn.ModuleList(
            linear_layer(n_in, n_out, bias=bias) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.acts = nn.ModuleList(make_activation("mlp", activation) for _ in sizes[1:-1])
        self.out_act = _output_module(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (N, sizes[0])
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return self.out_act(x)  # (N, sizes[-1])


# `falign compare` without a config: tanh units, and two hidden layers of 256 on the 28x28 images
_MNIST_LIKE = {"sizes": [784, 256, 256, 10]}


@register_model("mlp", compare=CompareDefaults({"activation": "tanh"},
                                               {"mnist": _MNIST_LIKE, "fashion-mnist": _MNIST_LIKE}))
def mlp(
    *,
    num_classes: int | None = None,
    in_shape: tuple[int, ...] | None = None,
    sizes: Sequence[int] | None = None,
    activation: str = "relu",
    output: str | None = None,
    bias: bool = True,
    init: str = "default",
) -> MLP:
    """MLP; without ``sizes``, 784-1000-10 adapted to ``in_shape`` and ``num_classes``."""
    if sizes is None:
        sizes = [
            prod(in_shape) if in_shape is not None else DEFAULT_SIZES[0],
            *DEFAULT_SIZES[1:-1],
            num_classes if num_classes is not None else DEFAULT_SIZES[-1],
        ]
    elif isinstance(sizes, (str, bytes)) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in sizes
    ):
        raise ModelError(f"model 'mlp': sizes must be a list of ints, got {sizes!r}")
    elif num_classes is not None and sizes[-1] != num_classes:
        raise ModelError(f"model 'mlp': sizes[-1]={sizes[-1]} but num_classes={num_classes}")
    if not isinstance(bias, bool):
        raise ModelError(f"model 'mlp': bias must be True or False, got {bias!r}")
    model = MLP(sizes, activation=activation, output=output, bias=bias, in_shape=in_shape)
    init_weights(model, init, "mlp")
    return model
