"""falign: learning rules without weight transport for PyTorch.

    import falign
    model = falign.convert(model, "fa")          # or "dfa", "usf", "frsf", "kp", ...
    falign.rules()                                # every rule with its citation
    with falign.exact_backward(model): ...        # true backprop, temporarily
    falign.set_step(model, targets=y)             # the step's labels (DRTP), loss scale, ...
    plain = falign.export(model)                  # the plain architecture, trained weights, no feedback
"""

import importlib.abc as _abc
import importlib.util as _util
import sys as _sys
import warnings as _warnings

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
from .rules import Hardware, Rule, RuleError, get_rule, register_rule, rules

__version__ = "0.2.0.dev0"

__all__ = [
    "ConversionReport",
    "FalignError",
    "FeedbackConv1d",
    "FeedbackConv2d",
    "FeedbackConv3d",
    "FeedbackLinear",
    "Hardware",
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


#: modules that moved, old name -> new name: the old import still works, with one warning
_MOVED = {"falign.layers.alignment": "falign.analysis.alignment"}


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """``import falign.layers.alignment`` gives ``falign.analysis.alignment`` (where the
    alignment measures and the step probe live now) and warns once."""

    def find_spec(self, name, path=None, target=None):
        return _util.spec_from_loader(name, self) if name in _MOVED else None

    def create_module(self, spec):
        _warnings.warn(f"{spec.name} moved to {_MOVED[spec.name]}; import it from there",
                       DeprecationWarning, stacklevel=3)
        import importlib

        module = importlib.import_module(_MOVED[spec.name])
        self._own_spec = module.__spec__  # the import system writes the old name's over it
        return module

    def exec_module(self, module):
        module.__spec__ = self._own_spec


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())
