"""Hugging Face's ``Conv1D`` (GPT-2's projections), with a learning rule.

``transformers.pytorch_utils.Conv1D`` is a linear layer whose weight is stored transposed, (in,
out), and applied as ``x W + b``.  :class:`FeedbackConv1D` keeps the same parameters (objects,
names, shapes: a Hugging Face state dict loads as is) and computes the same, with the product a
:class:`~falign.layers.feedback.FeedbackSlot` on W's transpose: B has the (out, in) shape of
the canonical weight.  It is recognised without importing transformers (a module named
``Conv1D`` with ``nf`` outputs and a 2-D weight of shape (in, nf)).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..rules import Rule
from .feedback import FeedbackSlot


def is_hf_conv1d(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int)
            and isinstance(w, nn.Parameter) and w.dim() == 2 and w.shape[1] == module.nf)


class FeedbackConv1D(nn.Module):
    """``x W + b`` with W stored (in, out), learning with a rule."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.falign_slot(x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.weight.shape[0]}, rule={self.falign_slot.rule.name}"


def convert_hf_conv1d(module: nn.Module, rule: Rule, name: str) -> FeedbackConv1D:
    new = FeedbackConv1D.__new__(FeedbackConv1D)
    new.__dict__.update(module.__dict__)
    for attr in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        new.__dict__[attr] = type(module.__dict__[attr])(module.__dict__[attr])
    if "bias" not in new._parameters:
        new.bias = None
    new.falign_slot = FeedbackSlot(module.weight, rule, f"{name}.falign_slot" if name else "falign_slot",
                                   transposed=True)
    return new
