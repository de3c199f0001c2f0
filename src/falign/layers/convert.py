"""One-line conversion of any model, the registry of converted layers, and ``exact_backward``."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..rules import DirectRule, Rule, get_rule
from .attention import convert_attention
from .feedback import LAYER_TYPES, FeedbackLayer, from_plain
from .hf import LOGITS, convert_hf_conv1d, find_hf_tap, is_hf_conv1d, is_hf_model
from .pathways import Pathway, StepContext
from .recurrent import RECURRENT_TYPES, convert_recurrent
from .scope import eval_mode


class ConversionWarning(UserWarning):
    """Parts of a model that ``convert`` could not reach."""


#: what :func:`convert` replaces, by exact type (a subclass has a forward of its own: reported,
#: not converted); Hugging Face's ``Conv1D`` is recognised by :func:`is_hf_conv1d` besides
CONVERTERS: dict[type[nn.Module], Callable[[nn.Module, Rule, str], nn.Module]] = {
    **dict.fromkeys(LAYER_TYPES, from_plain),
    nn.MultiheadAttention: convert_attention,
    **dict.fromkeys(RECURRENT_TYPES, convert_recurrent),
}

#: normalisations: their backward is exact and their scale and shift act elementwise
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),  # torch >= 2.4
)


@dataclass
class ConversionReport:
    """What :func:`convert` did.  ``unreachable`` lists weights that still learn by backprop
    although they multiply an activation; ``exact`` lists what carries no transported weight and
    learns by its own exact gradient (norms, whose scale and shift act elementwise; embeddings,
    whose input needs no gradient; positional embeddings and class tokens, which are added),
    with the reason.  A rule's own feedback B (Kolen-Pollack's trained B) is in neither."""

    rule: str
    converted: list[tuple[str, str]] = field(default_factory=list)  # (name, plain type)
    excluded: list[str] = field(default_factory=list)  # by include/exclude
    unreachable: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    exact: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def __str__(self) -> str:
        lines = [f"falign.convert(rule={self.rule!r}): converted {len(self.converted)} layers"]
        lines += [f"  converted   {n} ({t})" for n, t in self.converted]
        lines += [f"  excluded    {n}" for n in self.excluded]
        lines += [f"  unreachable {n}: {why}" for n, why in self.unreachable]
        lines += [f"  exact       {n}: {why}" for n, why in self.exact]
        return "\n".join(lines)


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def convert(model: nn.Module, rule: str | type[Rule] | Rule, *, inplace: bool = False,
            include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
            warn: bool = True, example_input: Any = None, **options: Any) -> nn.Module:
    """Replace every layer of ``model`` that a rule can reach by its feedback twin:
    ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``, ``nn.MultiheadAttention`` (its
    q, k, v and output projections), ``nn.RNN``, ``nn.LSTM``, ``nn.GRU``, ``nn.RNNCell``,
    ``nn.LSTMCell``, ``nn.GRUCell`` (matched by exact type) and Hugging Face's ``Conv1D``.

    ``include`` / ``exclude`` are shell-style patterns on qualified module names.  Weights are
    kept (shared, when ``inplace``).  Each layer's B comes from the rule option ``seed`` (0 when
    none is given) and the layer's qualified name, whatever the global random state.

    The report is ``model.falign_conversion`` (a :class:`ConversionReport`): what was
    converted; what stays exact (norms, embeddings, added positions and class tokens); and what
    could not be reached, which is also warned: weights used functionally (``F.linear`` on a raw
    parameter) and subclasses of the layer types above with a forward of their own.  A rule's
    own B (Kolen-Pollack's trained B) is in none of these lists.

    ``example_input``: a batch (a tuple of forward arguments, or a dict of keyword arguments)
    run once, in eval mode, so that every B whose shape the pathway learns only at the first
    forward exists now (dense conv FA, direct feedback).  Rules that *train* such a B (direct
    Kolen-Pollack) need it: an optimizer built afterwards over ``model.parameters()`` then holds
    B; B is not trained by one built before.  BN statistics, the RNG and the rules' step state
    are left as they were.

    Direct feedback (DFA and its relatives) on a Hugging Face model with a language-model or
    classification head taps, unless the rule option ``output`` names a module, the last hidden
    state (the output of the module that feeds the head, e.g. GPT-2's ``transformer.ln_f``;
    Launay et al. 2020), or with ``output="logits"`` the head's output; rules that project the
    target (DRTP) tap the logits, where the labels live.  Other models keep the model output as
    the tap (see :func:`falign.layers.hf.find_hf_tap`).
    """
    the_rule = get_rule(rule, **options)
    if the_rule.seed is None:  # B from (0, layer name), as convert has always made it
        the_rule = get_rule(the_rule, seed=0)
    if not inplace:
        model = copy.deepcopy(model)
    the_rule = _hf_tap(model, the_rule, example_input)
    if isinstance(model, FeedbackLayer) or any(
        isinstance(m, FeedbackLayer) for m in model.modules()
    ):
        raise ValueError("model is already converted (convert the original model instead)")
    report = ConversionReport(rule=the_rule.name)
    converted: list[FeedbackLayer] = []
    owned: set[int] = set()

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}{child_name}"
            converter = _converter(child)
            if converter is not None:
                if (include and not _matches(name, include)) or _matches(name, exclude):
                    report.excluded.append(name)
                    continue
                new = converter(child, the_rule, name)
                setattr(parent, child_name, new)
                layers = [m for m in new.modules() if isinstance(m, FeedbackLayer)]
                converted.extend(layers)
                # W and the rule's own B (a parameter where the rule trains it): neither is left over
                owned.update(id(p) for p in new.parameters())
                report.converted.append((name, type(child).__name__))
            elif isinstance(child, tuple(LAYER_TYPES)):
                report.unreachable.append((name, f"{type(child).__name__} subclasses a torch "
                                           "layer with its own forward; not converted"))
            else:
                visit(child, name + ".")

    if _converter(model) is not None:
        raise ValueError("convert a model that contains layers; for one layer use "
                         "falign.layers.FeedbackLinear / FeedbackConv2d directly")
    visit(model, "")
    excluded = set(report.excluded)
    for m_name, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            owned.update(id(p) for p in m.parameters(recurse=False))
            report.exact.append((m_name, f"{type(m).__name__}: its input (indices) needs no "
                                 "gradient, so it sends no signal; it learns by its own exact gradient"))
        elif isinstance(m, NORM_TYPES):
            owned.update(id(p) for p in m.parameters(recurse=False))  # (a LayerNorm's may be N-D)
            report.exact.append((m_name, f"{type(m).__name__}: a normalisation with an exact "
                                 "backward; its scale and shift (if any) act elementwise, so no "
                                 "weight to transport"))
    leftover = [(n, p) for n, p in model.named_parameters()
                if p.dim() >= 2 and id(p) not in owned and n.rpartition(".")[0] not in excluded
                and not any(n.startswith(u + ".") for u, _ in report.unreachable)]
    multiplied = _multiplied_parameters(model, example_input, [p for _, p in leftover])
    for pname, p in leftover:
        if multiplied is not None:
            if id(p) in multiplied:
                report.unreachable.append((pname, "multiplies an activation outside the converted "
                                           "layers (a functional F.linear?); it still learns by backprop"))
            else:
                report.exact.append((pname, "traced: added or used elementwise, never multiplied "
                                     "by an activation; no weight to transport"))
        elif p.shape[0] == 1:  # (1, ..., D): broadcast and added (a class token, positions)
            report.exact.append((pname, f"shape {tuple(p.shape)}: broadcast over the batch, so "
                                 "added rather than multiplied; no weight to transport"))
        else:
            report.unreachable.append((pname, "a weight outside the converted layers (used "
                                       "functionally?); it still learns by backprop -- convert "
                                       "with example_input to trace how it is used"))

    if converted:
        converted[0].pathway.attach(model, converted)  # the pathway's wiring (hooks), if any
        model.falign_pathway = converted[0].pathway

    model.falign_conversion = report
    if example_input is not None and converted:
        _make_lazy_feedback(model, example_input)
    if warn and report.unreachable:
        warnings.warn(
            f"falign.convert: {len(report.unreachable)} part(s) not converted, they still use "
            "backprop: " + "; ".join(f"{n} ({why})" for n, why in report.unreachable),
            ConversionWarning, stacklevel=2,
        )
    if not converted:
        warnings.warn("falign.convert: no nn.Linear / nn.ConvNd layer found to convert",
                      ConversionWarning, stacklevel=2)
    return model


def _hf_tap(model: nn.Module, rule: Rule, example: Any) -> Rule:
    """A direct rule with its tap resolved on a Hugging Face model (the last hidden state, or
    the logits where asked or where the rule projects the target); any other rule as it is."""
    if not isinstance(rule, DirectRule) or rule.output not in ("", LOGITS) or not is_hf_model(model) \
            or isinstance(model, FeedbackLayer):
        return rule
    logits = rule.output == LOGITS or rule.needs_targets
    return get_rule(rule, output=find_hf_tap(model, logits=logits, example_input=example))


def _call(model: nn.Module, example: Any) -> Any:
    """``model`` on an example input: a tuple of arguments, a dict of keyword arguments, or one."""
    if isinstance(example, dict):
        return model(**example)
    return model(*(example if isinstance(example, tuple) else (example,)))


def _converter(module: nn.Module) -> Callable[[nn.Module, Rule, str], nn.Module] | None:
    """The converter that takes ``module`` (exact types: a subclass has its own forward)."""
    if type(module) in CONVERTERS:
        return CONVERTERS[type(module)]
    if is_hf_conv1d(module):
        return convert_hf_conv1d
    return None

_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "addmv", "mv",
            "_scaled_dot_product_flash_attention", "einsum"}


def _multiplied_parameters(model: nn.Module, example: Any, params: list) -> set[int] | None:
    """ids of ``params`` that a traced forward of ``example`` feeds to a matrix product
    (None without an example)."""
    if example is None or not params:
        return None if example is None else set()
    from torch.utils._python_dispatch import TorchDispatchMode

    storages = {p.untyped_storage().data_ptr(): id(p) for p in params}
    found: set[int] = set()

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in _MATMULS:
                for a in (*args, *(kwargs or {}).values()):
                    if isinstance(a, Tensor) and a.untyped_storage().data_ptr() in storages:
                        found.add(storages[a.untyped_storage().data_ptr()])
            return func(*args, **(kwargs or {}))

    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]), Spy():
        _call(model, example)
    return found


def _make_lazy_feedback(model: nn.Module, example: Any) -> None:
    """One eval-mode forward with gradients on (so each layer's input needs a gradient exactly
    where it will in training) that makes the lazily shaped B; nothing else changes."""
    with eval_mode(model), torch.random.fork_rng(devices=[]), torch.enable_grad():
        _call(model, example)


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    """The converted layers of ``model`` as (qualified_name, layer) pairs."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayer)]


def learned_feedback(model: nn.Module) -> list[nn.Parameter]:
    """The trained feedback B of every converted layer whose rule trains it (kp, dkp): the
    ``nn.Parameter`` named ``feedback``, in module order, each once -- what an optimizer of B's
    own steps (``optim.feedback``), and what W's optimizer then leaves out."""
    seen, out = set(), []
    for _, m in feedback_layers(model):
        b = m.feedback
        if m.rule.learned and isinstance(b, nn.Parameter) and id(b) not in seen:
            seen.add(id(b))
            out.append(b)
    return out


@contextlib.contextmanager
def exact_backward(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily restore true backpropagation in every converted layer (DFA included).

    The layers run the plain torch op, so their rules' state is neither used nor advanced.
    The flags are restored on exit, also after an exception, and blocks nest.  The mode is read
    at forward time: run the forward inside the block.
    """
    layers = [m for _, m in feedback_layers(model)]
    previous = [m.exact for m in layers]
    try:
        for m in layers:
            m.exact = True
        yield model
    finally:
        for m, was in zip(layers, previous, strict=True):
            m.exact = was


_DEFAULT_PATHWAY = Pathway()


def train_step(model: nn.Module, net: nn.Module, x: Tensor, y: Tensor,
               ctx: StepContext) -> tuple[Tensor, Tensor]:
    """One training step's gradients into ``.grad``, as the model's pathway makes them: forward,
    loss and backward, or a pathway's own step (the DFA report's averaged loops).  ``net`` is
    ``model`` or its DDP / compiled wrapper.  Returns (output, loss)."""
    pathway = getattr(model, "falign_pathway", None) or _DEFAULT_PATHWAY
    return pathway.train_step(model, net, x, y, ctx)
