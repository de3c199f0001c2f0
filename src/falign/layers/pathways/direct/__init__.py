"""The direct pathway: every converted layer's input receives ``B_i e`` (Nokland 2016).

``e`` is the gradient of the loss at the network's logits (see ``wiring``); each hidden layer
ignores the gradient arriving from above for its input.  ``B_i`` maps one sample's error to one
sample's layer input (an image model: the whole input map times e's width; a sequence: one
position's input times one position's error, shared across positions) and is made at the
first forward (the wiring learns e's shape from the tapped output).

The pathway is split by job:

* ``signal`` -- the maths as pure functions (B_i's shape, targets, a sample's weight, the
  projection, a trained B_i's row pairs);
* ``state`` -- what the pathway keeps per layer (``layer.pathway_state``) and per step;
* ``wiring`` -- the per-model tap, ``set_step`` and the ``above="cut"`` record;
* ``functions`` -- the autograd Functions;
* ``points`` -- feedback points at module outputs (rule option ``points``);
* ``averaged`` -- the DFA framework report's batch- and class-averaged training loops (a
  whole training step, apart from the core).

A direct rule subclasses ``falign.rules.DirectRule`` and declares what its signal is
(``direct_signal``), how a sample is weighted (``reduction``) and whether it needs the step's
labels (``needs_targets``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ....rules import DirectRule
from ...errors import FeedbackError
from .._formulas import prepadded, through_pad
from ..base import Pathway, register_pathway
from .averaged import averaged_step, check_mlp
from .functions import Collect, DirectConvFn, DirectLinearFn, apply_eager
from .points import FeedbackPoint
from .signal import IGNORE_INDEX
from .state import DirectLayerState, StepState
from .wiring import DirectWiring, set_step, set_targets, wiring_of

__all__ = ["IGNORE_INDEX", "Direct", "DirectLayerState", "DirectWiring", "FeedbackPoint",
           "StepState", "averaged_step", "direct_input_grad", "set_step", "set_targets", "wiring_of"]


def direct_input_grad(layer: nn.Module, x: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The direct pathway's formula: what the rule projects, s (e for DFA, w sign(e), w y*,
    ...), sent to the layer input: for a linear layer with B of shape (D, E), position by
    position (``g[..., t, :] = s[..., t, :] B^T``), or, when s is one vector a sample, the same
    ``s[n] B^T`` at every position of sample n; otherwise ``s.flatten(1) B^T`` with B of shape
    (*input, *e), on the (padded) map."""
    if isinstance(layer, nn.Linear) and b.dim() == 2 and b.shape[0] == x.shape[-1]:
        if s.shape[:-1] == x.shape[:-1]:
            return torch.einsum("...e,de->...d", s, b)
        per_sample = torch.einsum("ne,de->nd", s.reshape(s.shape[0], -1), b)  # (N, D)
        return per_sample.reshape(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]).expand(x.shape)

    def formula(xp):
        return (s.flatten(1) @ b.reshape(-1, s[0].numel()).T).reshape(xp.shape)

    if isinstance(layer, nn.Linear) or not prepadded(layer):
        return formula(x)
    return through_pad(layer, x, formula)


@register_pathway
class Direct(Pathway):
    name = "direct"

    def layer_state(self, layer):
        if not isinstance(layer.rule, DirectRule):
            raise FeedbackError(f"rule '{layer.rule.name}' takes the direct pathway but is not a "
                                "falign.rules.DirectRule: subclass it (its options say where e is "
                                "taken and what B_i multiplies)")
        return DirectLayerState()

    def lazy(self, layer):
        return True

    def attach(self, model, layers):
        rule = layers[0].rule
        if rule.average != "sample":
            check_mlp(model)
        return DirectWiring(model, layers, rule.output)

    def detach(self, model):
        """Remove the wiring's hooks (the tap's, the model's) and the feedback points."""
        owners = {id(m.pathway_state.wiring) for m in model.modules()
                  if isinstance(getattr(m, "pathway_state", None), DirectLayerState)}
        owners |= {id(m.falign_point) for m in model.modules() if "falign_point" in m._modules}
        for m in model.modules():
            for hooks in (m._forward_hooks, m._forward_pre_hooks):
                for key, hook in list(hooks.items()):
                    if id(getattr(hook, "__self__", hook)) in owners:
                        del hooks[key]
            m._modules.pop("falign_point", None)

    def prepare(self, layer, x):
        state = layer.pathway_state
        if state.wiring is None:
            raise RuntimeError(
                f"DFA layer '{layer.layer_name}' is not attached to a network output; "
                "convert the whole model with falign.convert(model, 'dfa')"
            )
        if layer.feedback is None:
            if layer.rule.learned and torch.is_grad_enabled() and layer.training:
                raise FeedbackError(
                    f"layer '{layer.layer_name}': rule '{layer.rule.name}' trains B_i, whose shape "
                    "is known only at the first forward: convert with falign.convert(model, "
                    f"'{layer.rule.name}', example_input=x) so B_i exists before the optimizer "
                    "is built")
            state.wait_for_error(layer.fn_input_shape(x))

    def effective(self, layer):
        if layer.feedback is None:
            return None
        with torch.no_grad():
            return layer.backward_rule.matrix(layer.weight, layer.feedback)

    def receiving_view(self, layer, b):
        """B_i as (layer input, e): token-wise B_i is (D, E) already; a whole map's
        (*input, *e) is flattened on both sides (e's dims as the wiring saw them)."""
        return b if b.dim() == 2 else b.reshape(-1, layer.pathway_state.error_numel or b.shape[-1])

    def from_receiving_view(self, layer, r, b):
        return r.reshape(b.shape)

    def forward(self, layer, x, plain):
        state = layer.pathway_state
        wiring = state.wiring
        if wiring is not None and (wiring.points or wiring.tapped):
            # feedback points elsewhere (the layers learn by backprop from them), or a layer
            # above the tap (it learns by backprop from the loss)
            return plain(x)
        state.key = None
        if wiring is not None and not state.recurrent:
            key = wiring.watch(x)
            if key is not None and layer.op == "conv" and layer.prepadded:
                # pre-padded: the Function's input is the padded map, so record before the pad
                x = Collect.apply(x, wiring.collected, key)
            else:
                state.key = key  # the Function records what it sends to x
        return super().forward(layer, x, plain)

    def linear(self, layer, x, feedback):
        return apply_eager(DirectLinearFn, x, layer, feedback)

    def conv(self, layer, x, feedback):
        return apply_eager(DirectConvFn, layer.pad(x), layer, feedback)

    def reference_input_grad(self, layer, x, g, e, targets=None):
        """``direct_input_grad`` with s the rule's ``direct_signal(e, y*, 1/N)``."""
        onehot = None if targets is None else F.one_hot(targets, e[0].numel()).to(e.dtype).reshape(e.shape)
        source = layer.backward_rule.direct_signal(e, onehot, 1.0 / e.shape[0])  # the device's e
        return direct_input_grad(layer, x, layer.effective_feedback(), source)

    def train_step(self, model, net, x, y, ctx):
        wiring = wiring_of(model)
        if wiring is None:
            return super().train_step(model, net, x, y, ctx)
        rule = wiring.layers[0].rule
        # the step's targets and a sample's weight in the loss: each process holds a share of
        # the global batch, and DDP averages over the processes
        mean = rule.reduction == "mean"
        # a mean over the global batch's examples, or its positions (one label a position)
        labels = y.shape[1:-1] if y.is_floating_point() else y.shape[1:]
        n = None if ctx.batch is None else ctx.batch * math.prod(labels)
        weight = None if n is None else ctx.world / n if mean else float(ctx.world)
        set_step(model, targets=y, sample_weight=weight, loss_scale=ctx.loss_scale(),
                 sample_offset=ctx.sample_offset if ctx.world > 1 else None)
        try:
            if rule.average == "sample":
                return super().train_step(model, net, x, y, ctx)
            return averaged_step(model, x, y, ctx, mode=rule.average, step=rule.average_step)
        finally:
            wiring.step = StepState(targets_at=wiring.step.targets_at)
