"""The exact pathway: the plain torch op and autograd's own backward (B = W, backprop)."""

from __future__ import annotations

from .base import Pathway, register_pathway
from .kernel import kernel_input_grad


@register_pathway
class Exact(Pathway):
    name = "exact"

    def forward(self, layer, x, plain):
        return plain(x)

    def effective(self, layer):
        return layer.weight.detach()

    def reference_input_grad(self, layer, x, g, e, targets=None):
        return kernel_input_grad(layer, x, layer.effective_feedback(), g)  # backprop: B = W
