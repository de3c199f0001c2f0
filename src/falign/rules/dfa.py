from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._direct import DirectRule
from .registry import register_rule


@register_rule
@dataclass
class DFA(DirectRule):
    """Direct feedback alignment (Nokland 2016): every converted layer's input receives
    B_i e, with e the gradient of the loss at the network's logits (the input of a trailing
    Softmax / LogSoftmax / Sigmoid / Tanh, or the output of the module named by ``output``).
    B_i ~ N(0, scale^2) has the full shape of the layer input times e.  The default scale is
    the Xavier std of B seen as an (input numel, e numel) matrix, as BioTorch's DFA; the DFA
    framework report used N(0, 1) on its MLP (``scale=1``, its shipped config).  N(0, 1) is
    far too large for convolutional feature maps: LeNet on MNIST with it stays at chance.

    ``average``: the DFA report's training loops -- ``"sample"`` (per-sample errors, what
    ``loss.backward()`` gives), ``"batch"`` (one update from batch-averaged activations and
    error, the report's "master error") or ``"class"`` (the same per class in the batch, summed).
    ``average_step``: ``"mean"`` (the report's update) or ``"sum"`` (each averaged update times
    the number of samples averaged: the step size of the summed per-sample update).  The
    averaged loops need an MLP of converted Linear layers (``falign.create_model("mlp")``)."""

    name: ClassVar[str] = "dfa"
    description: ClassVar[str] = "direct feedback alignment: input gradient B_i e from the output error"
    citation: ClassVar[str] = "Nokland 2016, NeurIPS"
    weighs_signal: ClassVar[bool] = False  # e carries a sample's weight and the loss scale
    _average_choices: ClassVar[tuple[str, ...]] = ("sample", "batch", "class")
    _average_step_choices: ClassVar[tuple[str, ...]] = ("mean", "sum")

    average: str = "sample"
    average_step: str = "mean"

    def direct_signal(self, error, targets, weight):
        """What B_i multiplies: e itself (the loss's own scale already in it)."""
        return error
