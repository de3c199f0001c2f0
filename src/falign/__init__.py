"""falign: learning rules without weight transport for PyTorch.

    import falign
    model = falign.convert(model, "fa")          # or "dfa", "usf", "frsf", "kp", ...
    falign.rules()                                # every rule with its citation
    with falign.exact_backward(model): ...        # true backprop, temporarily
    falign.set_step(model, targets=y)             # the step's labels (DRTP), loss scale, ...
    plain = falign.export(model)                  # the plain architecture, trained weights, no feedback
"""

from .errors import FalignError
from .layers import (
    ConversionReport,
    FeedbackConv1d,
    FeedbackConv2d,
    FeedbackConv3d,
    FeedbackLinear,
    convert,
    exact_backward,
    export,
    feedback_layers,
    set_step,
)
from .rules import Rule, RuleError, get_rule, register_rule, rules

__version__ = "0.2.0.dev0"

__all__ = [
    "ConversionReport",
    "FalignError",
    "FeedbackConv1d",
    "FeedbackConv2d",
    "FeedbackConv3d",
    "FeedbackLinear",
    "Rule",
    "RuleError",
    "convert",
    "create_model",
    "exact_backward",
    "export",
    "feedback_layers",
    "get_rule",
    "register_rule",
    "rules",
    "set_step",
]


def __getattr__(name):  # lazy: models import torch layers only when asked for
    if name == "create_model":
        from .models import create_model

        return create_model
    raise AttributeError(f"module 'falign' has no attribute {name!r}")
