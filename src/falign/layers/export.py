"""``falign.export``: a converted model as the plain architecture it was converted from.

Every feedback layer becomes its torch type again (``nn.Linear``, ``nn.ConvNd``,
``nn.MultiheadAttention``, ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and their cells) or Hugging
Face's ``Conv1D``, holding the trained W and biases; B, the rules' step state (``feedback``,
``feedback_step``, ``feedback_seed``), the per-weight slots, the feedback points and the hooks
of direct feedback are dropped.  The result's ``state_dict`` has exactly the keys of the
unconverted model and its forward is the plain one, so the model can be handed on to code that
knows nothing of falign (a Hugging Face model's ``save_pretrained`` writes a checkpoint its own
class loads).
"""

from __future__ import annotations

import copy

from torch import nn

from .feedback import FeedbackLayer

#: what falign adds to a converted layer's attributes (``FeedbackLayer._setup_feedback``, a
#: convolution's padding plan, direct feedback's wiring, a Conv1D's original type)
FALIGN_ATTRIBUTES = frozenset({
    "rule", "pathway", "layer_name", "exact", "_seed", "_step", "_state_step", "_seen",
    "pathway_state", "backward_rule", "feedback_std", "spec", "_prepad", "_pad_mode", "_plain_type",
})
#: the buffers and parameter of B and the step state
FALIGN_TENSORS = ("feedback", "feedback_step", "feedback_seed")
#: child modules falign adds: the per-weight slots and a direct-feedback point
FALIGN_CHILDREN = ("falign_slots", "falign_slot", "falign_point")


def export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (converted by :func:`falign.convert`, or built from falign's layers)
    as the plain architecture, with the trained weights and no feedback: its ``state_dict``
    loads strictly into the unconverted model, which then computes the same outputs.  The model
    given is left as it is.  A model with nothing converted comes back as a copy."""
    model = copy.deepcopy(model)
    pathway = getattr(model, "falign_pathway", None)
    if pathway is None:  # built from falign's layers: the pathway of any of them
        pathway = next((m.pathway for m in model.modules() if isinstance(m, FeedbackLayer)), None)
    if pathway is not None:
        pathway.detach(model)
    if _is_converted(model):
        model = _plain(model)
    _visit(model)
    for m in model.modules():
        for key in [k for k in vars(m) if k.startswith("falign_") and k not in m._modules]:
            del m.__dict__[key]  # the conversion report, the pathway, a model spec
    return model


def _is_converted(module: nn.Module) -> bool:
    return isinstance(module, FeedbackLayer) or any(k in module._modules for k in FALIGN_CHILDREN[:2])


def _visit(parent: nn.Module) -> None:
    for name, child in list(parent._modules.items()):
        if child is None:
            continue
        if _is_converted(child):
            parent._modules[name] = _plain(child)
        else:
            _visit(child)


def _plain_type(module: nn.Module) -> type[nn.Module]:
    """The class a converted module was made from: the torch layer it subclasses, or the
    ``Conv1D`` it replaced."""
    recorded = module.__dict__.get("_plain_type")
    if recorded is not None:
        return recorded
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn.modules") and cls is not nn.Module:
            return cls
    from transformers.pytorch_utils import Conv1D  # a FeedbackConv1D built before the type was recorded

    return Conv1D


def _plain(module: nn.Module) -> nn.Module:
    """``module`` as its plain type: the same parameters and attributes, less falign's."""
    cls = _plain_type(module)
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in FALIGN_ATTRIBUTES})
    for attr in ("_parameters", "_buffers", "_modules"):
        new.__dict__[attr] = type(module.__dict__[attr])(module.__dict__[attr])
    new._non_persistent_buffers_set = set(module._non_persistent_buffers_set) - set(FALIGN_TENSORS)
    for name in FALIGN_TENSORS:
        new._parameters.pop(name, None)
        new._buffers.pop(name, None)
    for name in FALIGN_CHILDREN:
        new._modules.pop(name, None)
    if isinstance(new, nn.MultiheadAttention) and _is_converted(new.out_proj):
        from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

        out = _plain(new.out_proj)  # torch's own type for attention's output projection
        linear = NonDynamicallyQuantizableLinear.__new__(NonDynamicallyQuantizableLinear)
        linear.__dict__.update(out.__dict__)
        new._modules["out_proj"] = linear
    _visit(new)
    return new
