"""The exact pathway: the plain torch op and autograd's own backward (B = W, backprop)."""

from __future__ import annotations

from .base import Pathway, register_pathway


@register_pathway
class Exact(Pathway):
    name = "exact"

    def forward(self, layer, x, plain):
        return plain(x)

    def effective(self, layer):
        return layer.weight.detach()
