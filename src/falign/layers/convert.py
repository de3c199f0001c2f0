"""One-line conversion of any model, the registry of converted layers, and ``exact_backward``."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..rules import Rule, get_rule
from .feedback import LAYER_TYPES, FeedbackLayer, from_plain
from .pathways import Pathway, StepContext


class ConversionWarning(UserWarning):
    """Parts of a model that ``convert`` could not reach."""


@dataclass
class ConversionReport:
    """What :func:`convert` did.  ``unreachable`` lists weights that still learn by backprop."""

    rule: str
    converted: list[tuple[str, str]] = field(default_factory=list)  # (name, plain type)
    excluded: list[str] = field(default_factory=list)  # by include/exclude
    unreachable: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def __str__(self) -> str:
        lines = [f"falign.convert(rule={self.rule!r}): converted {len(self.converted)} layers"]
        lines += [f"  converted   {n} ({t})" for n, t in self.converted]
        lines += [f"  excluded    {n}" for n in self.excluded]
        lines += [f"  unreachable {n}: {why}" for n, why in self.unreachable]
        return "\n".join(lines)


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def convert(model: nn.Module, rule: str | type[Rule] | Rule, *, inplace: bool = False,
            include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
            warn: bool = True, example_input: Any = None, **options: Any) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` of ``model`` by its feedback twin.

    ``include`` / ``exclude`` are shell-style patterns on qualified module names.  Weights are
    kept (shared, when ``inplace``).  The report of what was converted and what could not be
    reached (functional calls, ``nn.MultiheadAttention`` projections, subclasses of the torch
    layers, raw parameters) is ``model.falign_conversion``; anything unreachable is also warned.

    ``example_input``: a batch (or a tuple of forward arguments) run once, in eval mode, so
    that every B whose shape the pathway learns only at the first forward exists now (dense
    conv FA, direct feedback).  Rules that *train* such a B (direct Kolen-Pollack) need it: an
    optimizer built afterwards over ``model.parameters()`` then holds B; B is not trained by
    one built before.  BN statistics, the RNG and the rules' step state are left as they were.
    """
    the_rule = get_rule(rule, **options)
    if not inplace:
        model = copy.deepcopy(model)
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
            if type(child) in LAYER_TYPES:
                if (include and not _matches(name, include)) or _matches(name, exclude):
                    report.excluded.append(name)
                    continue
                new = from_plain(child, the_rule, name)
                setattr(parent, child_name, new)
                converted.append(new)
                owned.update(id(p) for p in new.parameters(recurse=False))
                report.converted.append((name, type(child).__name__))
            elif isinstance(child, nn.MultiheadAttention):
                report.unreachable.append((name, "nn.MultiheadAttention calls its projections "
                                           "functionally (F.multi_head_attention_forward)"))
            elif isinstance(child, tuple(LAYER_TYPES)):
                report.unreachable.append((name, f"{type(child).__name__} subclasses a torch "
                                           "layer with its own forward; not converted"))
            else:
                visit(child, name + ".")

    if type(model) in LAYER_TYPES:
        raise ValueError("convert a model that contains layers; for one layer use "
                         "falign.layers.FeedbackLinear / FeedbackConv2d directly")
    visit(model, "")
    excluded = set(report.excluded)
    # Embeddings send no signal to their (integer) input: nothing to convert there.
    owned.update(id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                 for p in m.parameters(recurse=False))
    for pname, p in model.named_parameters():
        mod_name = pname.rpartition(".")[0]
        if p.dim() >= 2 and id(p) not in owned and mod_name not in excluded and not any(
            mod_name == n or mod_name.startswith(n + ".") for n, _ in report.unreachable
        ):
            report.unreachable.append((pname, "a weight outside nn.Linear/nn.ConvNd (used "
                                       "functionally?); it still learns by backprop"))

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


def _make_lazy_feedback(model: nn.Module, example: Any) -> None:
    """One eval-mode forward with gradients on (so each layer's input needs a gradient exactly
    where it will in training) that makes the lazily shaped B; nothing else changes."""
    args = example if isinstance(example, tuple) else (example,)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model(*args)
    finally:
        for m, mode in modes.items():
            m.train(mode)


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    """The converted layers of ``model`` as (qualified_name, layer) pairs."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayer)]


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
