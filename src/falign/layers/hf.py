"""Hugging Face's ``Conv1D`` (GPT-2's projections), with a learning rule.

``transformers.pytorch_utils.Conv1D`` is a linear layer whose weight is stored transposed, (in,
out), and applied as ``x W + b``.  :class:`FeedbackConv1D` keeps the same parameters (objects,
names, shapes: a Hugging Face state dict loads as is) and computes the same, with the product a
:class:`~falign.layers.feedback.FeedbackSlot` on W's transpose: B has the (out, in) shape of
the canonical weight.  It is recognised without importing transformers (a module named
``Conv1D`` with ``nf`` outputs and a 2-D weight of shape (in, nf)).

Also here: where direct feedback (DFA) takes its error in a Hugging Face model with a
language-model or classification head (:func:`find_hf_tap`): the last hidden state, the output
of the module that feeds the head, by default; the logits on request.
"""

from __future__ import annotations

import torch
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
    new._plain_type = type(module)  # what falign.export makes of it again
    return new


# -- where direct feedback taps a Hugging Face model ----------------------------------------------

#: attribute names of Hugging Face's classification heads (``get_output_embeddings()`` names a
#: language model's vocabulary projection)
CLASSIFICATION_HEADS = ("classifier", "score", "qa_outputs")
#: the rule option ``output`` that asks for the logits (the head's output) of a Hugging Face model
LOGITS = "logits"


def is_hf_model(model: nn.Module) -> bool:
    """A ``transformers.PreTrainedModel`` (recognised without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def hf_head(model: nn.Module) -> str | None:
    """The qualified name of the module that makes a Hugging Face model's logits: its
    language-model head (``get_output_embeddings()``) or its classification head; None when
    the model has neither (a base model)."""
    names = {id(m): n for n, m in model.named_modules() if n}
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and id(head) in names:
        return names[id(head)]
    for name in CLASSIFICATION_HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def _example_call(model: nn.Module, example) -> tuple[tuple, dict]:
    """(args, kwargs) of one forward: the example given, else inputs made from the config (an
    image of the configured size for an image model, Hugging Face's dummy token ids else)."""
    if example is not None:
        if isinstance(example, dict):
            return (), dict(example)
        return (example if isinstance(example, tuple) else (example,)), {}
    config = getattr(model, "config", None)
    if getattr(model, "main_input_name", "") == "pixel_values" and hasattr(config, "image_size"):
        size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
        hw = (size, size) if isinstance(size, int) else size
        param = next(model.parameters())
        channels = getattr(config, "num_channels", 3)
        image = torch.zeros(2, channels, *hw, dtype=param.dtype, device=param.device)
        return (), {"pixel_values": image}
    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, dict) and dummy:
        device = next(model.parameters()).device
        return (), {k: v.to(device) for k, v in dummy.items()}
    raise ValueError(f"falign.convert: cannot make an input for {type(model).__name__} to find where DFA "
                     "taps it: pass example_input=, or output='<module name>'")


def find_hf_tap(model: nn.Module, *, logits: bool = False, example_input=None) -> str:
    """The module whose output is direct feedback's tap in a Hugging Face model with a
    language-model or classification head.

    By default the last hidden state (Launay et al. 2020): the module whose output feeds the
    head -- GPT-2's ``transformer.ln_f``, BERT's ``dropout`` before its ``classifier`` -- found by
    running the plain model once (no gradient, eval mode, the random state restored) on
    ``example_input`` or on inputs made from its config, and taking the last module to finish
    before the head whose output holds the head's input (the same storage: a slice or view of
    it counts).  E then has the hidden width D.  ``logits=True``: the head itself (E = the
    number of classes or the vocabulary).  A model where neither is found is an error naming the
    candidates."""
    head = hf_head(model)
    kind = type(model).__name__
    if head is None:
        raise ValueError(f"falign.convert: {kind} has no language-model or classification head for DFA "
                         f"to tap; pass output= one of {_candidates(model, example_input)}")
    if logits:
        return head
    head_module = model.get_submodule(head)
    finished: list[tuple[str, Tensor]] = []  # modules that returned a tensor, in order
    fed: list[tuple[Tensor, int]] = []  # the head's input, and how many had finished by then
    hooks = [head_module.register_forward_pre_hook(
        lambda m, args: fed.append((args[0], len(finished))) if not fed and args else None)]
    for name, module in model.named_modules():
        if name and module is not head_module:
            hooks.append(module.register_forward_hook(_recorder(finished, name)))
    _run_plain(model, example_input, hooks)
    if not fed or not isinstance(fed[0][0], Tensor):
        raise ValueError(f"falign.convert: the head '{head}' of {kind} did not run on a tensor; pass "
                         f"output= one of {_names(finished)}")
    x, upto = fed[0]
    before = finished[:upto]
    same = [n for n, out in before if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()]
    if not same:
        raise ValueError(f"falign.convert: no module's output feeds the head '{head}' of {kind} directly "
                         f"(a functional op between them?); pass output= one of {_names(before)} or "
                         f"'{LOGITS}'")
    return same[-1]


def _run_plain(model: nn.Module, example, hooks: list) -> None:
    modes = {m: m.training for m in model.modules()}
    try:
        args, kwargs = _example_call(model, example)
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                model(*args, **kwargs)
        except Exception as err:
            raise ValueError(f"falign.convert: running {type(model).__name__} to find where DFA taps "
                             f"it failed ({type(err).__name__}: {err}); pass example_input=, or "
                             "output='<module name>'") from err
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)


def _recorder(finished: list[tuple[str, Tensor]], name: str):
    """A forward hook that records (name, output) where the output is a tensor."""
    def record(module, args, out):
        if isinstance(out, Tensor):
            finished.append((name, out))

    return record


def _candidates(model: nn.Module, example) -> list[str]:
    finished: list[tuple[str, Tensor]] = []
    hooks = [m.register_forward_hook(_recorder(finished, name)) for name, m in model.named_modules() if name]
    try:
        _run_plain(model, example, hooks)
    except ValueError:
        return [n for n, _ in list(model.named_children())[-5:]]
    return _names(finished)


def _names(finished: list[tuple[str, Tensor]], last: int = 5) -> list[str]:
    """The last modules to finish, most recent last, each once."""
    out: list[str] = []
    for name, _ in reversed(finished):
        if name not in out:
            out.append(name)
        if len(out) == last:
            break
    return out[::-1]
