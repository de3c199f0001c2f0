"""The pathway base class and registry."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...errors import FalignError
from ...registry import Registry
from ..hardware import set_sample_index
from ._ops import outside_compile


class PathwayError(FalignError, ValueError):
    """An unknown pathway name, or an import path that names no :class:`Pathway`; one line."""


_PATHWAYS: Registry = Registry("pathway", PathwayError)

#: a converted layer (``falign.layers.feedback.FeedbackLayer``), as the pathways see it
FeedbackLayer = nn.Module


def register_pathway(cls: type[Pathway]) -> type[Pathway]:
    """Register a :class:`Pathway` subclass under ``cls.name`` (one instance serves all layers:
    per-layer state lives in the object ``layer_state`` makes, per-model state in the wiring
    ``attach`` makes)."""
    _PATHWAYS.register(cls.name, cls(), identity=lambda p: f"{type(p).__module__}:{type(p).__qualname__}")
    return cls


def get_pathway(name: str) -> Pathway:
    """The registered pathway ``name``, or the :class:`Pathway` subclass an import path
    (``"mypkg.feedback:MyPathway"``) names, imported and registered under its ``name``."""
    if name in _PATHWAYS or ":" not in name:
        return _PATHWAYS.lookup(name)
    cls = _PATHWAYS.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Pathway) and cls.name):
        raise PathwayError(f"pathway '{name}' is not a falign Pathway subclass with a name")
    if type(_PATHWAYS.get(cls.name)) is not cls:
        register_pathway(cls)
    return _PATHWAYS[cls.name]


def pathway_names() -> list[str]:
    return list(_PATHWAYS)


@dataclass
class StepContext:
    """What a training step needs besides the batch, the same for one process or many.

    ``loss_fn(out, y)`` is this process's share of the loss: under N processes, the gradient
    DDP averages from the shares is the gradient of the whole batch's loss; ``world`` is N and
    ``reduce`` sums a tensor over the processes (the identity for one).  ``backward(loss)``
    runs the backward (a GradScaler's scaled one under fp16) and ``loss_scale()`` is the factor
    it multiplies the loss by; ``autocast()`` is the context of the forward and the loss;
    ``batch`` the size of the whole global batch.
    """

    loss_fn: Callable[[Tensor, Tensor], Tensor]
    backward: Callable[[Tensor], None] = lambda loss: loss.backward()
    #: the number of examples of the whole (global) batch; None: this process's batch
    batch: int | None = None
    world: int = 1
    reduce: Callable[[Tensor], Tensor] = lambda t: t
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    #: the factor ``backward`` multiplies the loss by (a GradScaler's current scale)
    loss_scale: Callable[[], float] = lambda: 1.0
    #: the global batch index of this process's first example (its share's start)
    sample_offset: int = 0


class Pathway:
    """How the error reaches a converted layer's input (see the package docstring)."""

    name: ClassVar[str] = ""

    # -- per layer --------------------------------------------------------------------------
    def layer_state(self, layer: FeedbackLayer) -> Any:
        """The object this pathway keeps for one converted layer (``layer.pathway_state``),
        made at conversion; None: nothing beyond the layer's B and step state."""
        return None

    def lazy(self, layer: FeedbackLayer) -> bool:
        """Whether B's shape is known only at the layer's first forward."""
        return False

    def forward(self, layer: FeedbackLayer, x: Tensor, plain: Callable[[Tensor], Tensor]) -> Tensor:
        """The layer's forward in training or inference: per-step state, lazy shapes, the
        pathway's Function.  A layer whose input needs no gradient runs the plain op (no B is
        made for it), unless its B is trained and needs W's gradient."""
        grad = torch.is_grad_enabled()
        stateful = layer.rule.stateful  # constant under torch.compile: no graph break without state
        if stateful and layer.training and grad:
            layer.sync_step()
        signal = grad and x.requires_grad
        if not signal and not (grad and layer.rule.learned):
            return plain(x)
        if self.lazy(layer):
            self.prepare(layer, x)
        feedback = layer.current_feedback() if signal and stateful else layer.feedback
        return getattr(self, layer.op)(layer, x, feedback)

    def prepare(self, layer: FeedbackLayer, x: Tensor) -> None:
        """Make B where its shape waited for this input (lazy pathways)."""

    def effective(self, layer: FeedbackLayer) -> Tensor | None:
        """Exactly the B the layer's next backward uses (None: not made yet)."""
        feedback = layer.current_feedback()
        if self.lazy(layer) and feedback is None:
            return None
        with torch.no_grad():
            return layer.backward_rule.matrix(layer.weight, feedback)

    def receiving_view(self, layer: FeedbackLayer, b: Tensor) -> Tensor:
        """B as the feedback matrix R of the hardware model (``falign.rules.hardware``): one row
        a receiving unit (a unit of the layer input), one column a sending one.  The default is
        for B of W's layout (out, in...): the transpose of its (out, in numel) matrix."""
        return b.reshape(b.shape[0], -1).T

    def transform_feedback(self, layer: FeedbackLayer, b: Tensor, hardware: Any) -> Tensor:
        """B as the device holds it: ``hardware.transform`` of its receiving view, from the
        layer's seed, in B's shape."""
        r = self.receiving_view(layer, b)
        out = hardware.transform(r, layer._seed)
        return self.from_receiving_view(layer, out, b)

    def from_receiving_view(self, layer: FeedbackLayer, r: Tensor, b: Tensor) -> Tensor:
        """The inverse of :meth:`receiving_view`."""
        return r.T.reshape(b.shape)

    @staticmethod
    def apply(layer: FeedbackLayer, fn: type[torch.autograd.Function], *args: Any) -> Tensor:
        """``fn.apply(*args)``; eagerly under ``torch.compile`` where the layer's feedback goes
        through a hardware model, whose B is made (and kept) by Python at the first backward
        of each step: a traced backward would keep the B it saw when traced."""
        if layer.backward_rule is layer.rule:
            return fn.apply(*args)
        return outside_compile(fn.apply)(*args)

    def linear(self, layer: FeedbackLayer, x: Tensor, feedback: Tensor | None) -> Tensor:
        raise NotImplementedError(f"pathway '{self.name}' has no linear op")

    def conv(self, layer: FeedbackLayer, x: Tensor, feedback: Tensor | None) -> Tensor:
        raise NotImplementedError(f"pathway '{self.name}' has no convolution op")

    def reference_input_grad(self, layer: FeedbackLayer, x: Tensor, g: Tensor, e: Tensor,
                             targets: Tensor | None = None) -> Tensor:
        """The gradient this pathway sends to the layer's input ``x``, written out from its
        formula (float64, the B ``layer.effective_feedback()`` returns) and independent of the
        autograd Functions: what the contract suite (``falign.testing``) checks them against.
        ``g`` is the gradient arriving at the layer's output, ``e`` the one at the model's
        output, ``targets`` the step's class labels."""
        raise NotImplementedError(f"pathway '{self.name}' declares no reference_input_grad(layer, "
                                  "x, g, e, targets): the contract suite cannot check its input gradient")

    # -- per model --------------------------------------------------------------------------
    def attach(self, model: nn.Module, layers: list[FeedbackLayer]) -> Any:
        """Wire the converted ``layers`` into ``model`` (hooks); returns the wiring or None."""
        return None

    def detach(self, model: nn.Module) -> None:
        """Remove what ``attach`` added to ``model`` (its hooks and modules): ``falign.export``."""

    def train_step(self, model: nn.Module, net: nn.Module, x: Tensor, y: Tensor,
                   ctx: StepContext) -> tuple[Tensor, Tensor]:
        """One step's gradients into ``.grad``: (output, loss).  ``net`` is ``model`` or its
        DDP / compiled wrapper.  The default is forward, loss, backward."""
        if ctx.world > 1:
            set_sample_index(model, ctx.sample_offset)
        with ctx.autocast():
            out = net(x)
            loss = ctx.loss_fn(out, y)
        if torch.isfinite(loss):
            ctx.backward(loss)
        return out, loss
