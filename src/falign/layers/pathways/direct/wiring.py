"""The direct pathway's per-model wiring: where e is tapped, what the step under way gave
(``set_step``), and the record of what each layer input receives under ``above="cut"``.

``e`` is the gradient of the loss at the network's *logits*: the wiring taps the model's
output, and where the output comes from a trailing Softmax, LogSoftmax, Sigmoid or Tanh (a
module or a functional call) it taps that activation's input instead, so a model that ends in
``LogSoftmax`` trained with ``nll_loss`` gets exactly the updates of the same model ending in
logits trained with ``cross_entropy``.  A rule option ``output`` names the module whose output
is the tap instead.  ``e`` is read off the autograd graph by a pre-hook on the node that made
the tapped tensor, so it is recorded before any hidden layer's backward runs.

Every hook the wiring installs is held by the converted model or by the autograd graph of one
pass: the forward hooks sit on the model's own modules (removed by ``Direct.detach``, which
``falign.export`` calls), and the hooks on a pass's tensors and graph nodes hold the wiring
weakly, so a tensor kept by the user does not keep the model alive.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref

import torch
from torch import Tensor, nn

from ....rules import derive_seed, gaussian
from ...errors import FeedbackError
from ...hardware import set_sample_index
from .points import attach_points
from .signal import feedback_shape
from .state import DirectLayerState, StepState, timing

#: autograd nodes of a final activation: e is taken at their input (the logits)
OUTPUT_ACTIVATIONS = ("LogSoftmaxBackward0", "SoftmaxBackward0", "SigmoidBackward0", "TanhBackward0")
#: other pointwise non-linearities: e taken after one of them is probably not at the logits
POINTWISE = ("LogBackward0", "ExpBackward0", "ReluBackward0", "GeluBackward0", "SoftplusBackward0",
             "EluBackward0", "LeakyReluBackward0", "HardtanhBackward0", "SiluBackward0",
             "PowBackward0", "ClampBackward1", "AbsBackward0")


class DirectWiring:
    """Per converted model: where e is tapped, the e of the backward pass under way and the
    step's state."""

    def __init__(self, model: nn.Module, layers: list, output: str) -> None:
        self.layers = layers
        self.output = output
        self.error: Tensor | None = None
        self.step = StepState()
        self.forwards = 0
        self.warned = False
        rule = layers[0].rule
        self.cut = rule.above == "cut"
        self.shared = bool(rule.shared)
        self.seed = rule.seed
        self.collected: dict[int, Tensor] = {}  # key of a layer input -> signals sent to it
        # (rule, e, step, what B_i multiplies): the source of the pass under way, dropped at the
        # next step or forward
        self.made: tuple | None = None
        self.waiting = False  # whether a layer or point has a B_i waiting for e's shape
        self.hooked: dict[int, tuple] = {}  # id(layer input) -> (weakref to it, key)
        self.keys = 0  # the last key handed out (keys are never reused)
        for layer in layers:
            state = layer.pathway_state
            state.wiring = self
            state.recurrent = bool(getattr(layer, "recurrent", False))  # a slot's, set at conversion
            state.time_dim = getattr(layer, "time_dim", 0)
        self.points = attach_points(model, rule, self) if rule.points else []
        target = model.get_submodule(output) if output else model
        target.register_forward_hook(self)
        # layers that run after the tap (a language model's vocabulary projection, when e is
        # taken at the last hidden state) are part of "the loss": they learn by backprop.  With
        # the model's own output as the tap, no layer runs after it (and no pre-hook is needed)
        self.tapped = False
        if output:
            model.register_forward_pre_hook(self._begin)
        _LIVE.add(self)

    def __setstate__(self, state):  # an unpickled wiring is live too
        self.__dict__.update(state)
        self.waiting = True  # (one look at its layers at the next forward)
        _LIVE.add(self)

    def __deepcopy__(self, memo):  # a copy of a converted model gets its own, empty wiring
        new = DirectWiring.__new__(DirectWiring)
        memo[id(self)] = new
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("layers", "points")})
        new.layers = copy.deepcopy(self.layers, memo)
        new.points = copy.deepcopy(self.points, memo)
        new.error, new.step, new.collected, new.hooked, new.made = None, StepState(), {}, {}, None
        _LIVE.add(new)
        return new

    def _begin(self, module, args):
        self.tapped = False

    def __call__(self, module, args, output):
        self.tapped = bool(self.output)
        self.forwards += 1
        self.hooked.clear()
        self.collected.clear()
        self.made = None  # (the last pass's source: not kept through this pass's forward)
        if not isinstance(output, Tensor):
            raise TypeError(
                "DFA taps a tensor output; this module returned "
                f"{type(output).__name__} (pass output='<submodule name>' to convert)"
            )
        if self.waiting:
            self._make_feedback(tuple(output.shape))
        if not output.requires_grad or output.grad_fn is None:
            return
        node, index = output.grad_fn, output.output_nr
        if not self.output:
            while type(node).__name__ in OUTPUT_ACTIVATIONS:
                node, index = node.next_functions[0]
                if node is None:
                    return
            if not self.warned and type(node).__name__ in POINTWISE:
                self.warned = True
                warnings.warn(
                    f"DFA takes e at the model output, which a pointwise {type(node).__name__[:-9]} "
                    "makes: e is taken after it; if the logits are earlier, convert with "
                    "output='<name of the module whose output is the logits>'",
                    stacklevel=2,
                )
        node.register_prehook(_record_error(weakref.ref(self), index))

    def _make_feedback(self, error_shape: tuple[int, ...]) -> None:
        """Make the B_i whose shapes waited for e's; with ``shared``, every B_i is the first rows
        of one random matrix (Launay et al.'s single feedback matrix)."""
        self.waiting = False
        pending = []
        for m in (*self.layers, *self.points):
            shape = m.pathway_state.pending_input_shape
            if shape is not None and m.feedback is None:
                pending.append((m, feedback_shape(shape, error_shape, op=m.op, recurrent=timing(m)[0])))
        if not pending:
            return
        values: dict[int, Tensor] = {}
        if self.shared:
            e_numel = math.prod(error_shape[1:]) if len(pending[0][1]) > 2 else error_shape[-1]
            rows = max(math.prod(shape) // e_numel for _, shape in pending)
            ref = pending[0][0]
            std = ref.rule.resolved_scale(rows, e_numel)
            big = gaussian((rows, e_numel), std, derive_seed(self.seed, "falign:shared-feedback"),
                           dtype=torch.float64, device=ref.feedback_device())
            for m, shape in pending:
                values[id(m)] = big[: math.prod(shape) // e_numel].reshape(shape)
        for m, shape in pending:
            split = len(shape) - (len(error_shape) - 1) if len(shape) > 2 else 1
            m.materialize(shape, math.prod(shape[:split]), math.prod(shape[split:]), values.get(id(m)))
            m.pathway_state.pending_input_shape = None
            m.pathway_state.error_numel = math.prod(shape[split:])

    def watch(self, x: Tensor) -> int | None:
        """Under ``above="cut"``: ``x`` (a layer's input) receives only what the layers reading
        it send (their direct signals): anything else -- a skip connection's gradient from the
        blocks above -- is replaced.  Returns the key under which what they send is recorded (a
        direct Function whose input is ``x`` itself records its own signal there; before a
        pre-pad, ``Collect`` does), or None where nothing is replaced."""
        if not self.cut or not x.requires_grad or not torch.is_grad_enabled():
            return None
        seen = self.hooked.get(id(x))
        if seen is not None and seen[0]() is x:  # another layer reading the same tensor
            key = seen[1]
        else:  # (an id can be reused by a later tensor once a temporary is freed)
            self.keys += 1
            key = self.keys
            self.hooked[id(x)] = (weakref.ref(x), key)
            x.register_hook(_replace_gradient(weakref.ref(self), key))
        return key

    def source(self, rule, error: Tensor) -> Tensor:
        """What B_i multiplies, (N, *e): the rule's function of e, of the targets and of a
        sample's weight in the loss (unless the step says otherwise, 1 over what a mean loss
        averages: the labels that count, else the samples or a sequence's positions) times the
        loss scale (rules whose signal keeps e's magnitude ignore both: e carries them).  Made
        once a backward pass for the layers that share a rule (a function of e, the step's
        targets and weight, the same for each)."""
        step = self.step
        made = self.made
        if made is not None and made[0] is rule and made[1] is error and made[2] is step:
            return made[3]
        weight = 1.0  # (e carries both where the rule does not weigh its signal)
        if rule.weighs_signal:
            weight = step.sample_weight
            if weight is None:
                weight = 1.0 / step.labels(error) if rule.reduction == "mean" else 1.0
            weight = weight * step.loss_scale
        targets = None
        if rule.needs_targets:
            targets = step.targets
            if targets is None:
                raise FeedbackError(
                    f"the {rule.name} rule projects each step's labels: call falign.set_step(model, "
                    "targets=y) before the step's backward (falign's runner and its Lightning and "
                    "Hugging Face callbacks do)")
            if step.targets_at < self.forwards - 1:
                raise FeedbackError("the targets given to falign.set_step belong to an earlier step: "
                                    "give each step's targets (falign.set_step(model, targets=y))")
            targets = step.targets_like(error)
        source = rule.direct_signal(error, targets, weight)
        self.made = (rule, error, step, source)
        return source


def _record_error(wiring_ref, index: int):
    def record(grad_outputs):
        wiring = wiring_ref()
        if wiring is not None:
            wiring.error = grad_outputs[index].detach()

    return record


def _replace_gradient(wiring_ref, key: int):
    def replace(g):
        wiring = wiring_ref()
        if wiring is None:
            return None
        signal = wiring.collected.pop(key, None)  # (zeros made only when no layer sent any)
        return torch.zeros_like(g) if signal is None else signal

    return replace


#: every DirectWiring that exists (made, copied or unpickled): while there is none, no module
#: can hold one, and ``wiring_of`` answers without walking the model (a step of a model of
#: another pathway still calls ``set_step``: the integrations and user loops do, whatever the rule)
_LIVE: weakref.WeakSet = weakref.WeakSet()


def wiring_of(model: nn.Module) -> DirectWiring | None:
    """The direct-feedback wiring of a converted model (None: no direct rule): the first
    module's in ``model.modules()`` order, found depth first through each module's children
    (read from its ``_modules``, in ``children()`` order, without the generator and the set of
    modules seen that ``children()`` makes: a step's ``set_step`` asks it)."""
    if not _LIVE:
        return None
    return _first_wiring(model)


def _first_wiring(model: nn.Module) -> DirectWiring | None:
    state = model.__dict__.get("pathway_state")  # (a module's missing attribute is slow to miss)
    if isinstance(state, DirectLayerState) and state.wiring is not None:
        return state.wiring
    for child in model._modules.values():
        if child is not None:
            wiring = _first_wiring(child)
            if wiring is not None:
                return wiring
    return None


def set_step(model: nn.Module, *, targets: Tensor | None = None, sample_weight: float | None = None,
             loss_scale: float = 1.0, sample_offset: int | None = None,
             sample_stride: int | None = None) -> None:
    """Tell a converted model what the training step about to run needs besides its input.

    * ``targets`` -- the step's labels: class indices (N,) or (N, T) for a sequence, positions
      holding -100 counting in no loss, or float targets (N, K).  Required by rules that
      project the target (DRTP): their first backward without them is an error.  They belong
      to the next forward (or the forward just made) only.
    * ``sample_weight`` -- a sample's weight in the loss the optimizer steps on: 1/N for a mean
      over N samples (the default, from the rule's ``reduction``), 1/(N x k) when gradients of
      k micro-batches are accumulated, or 1 for a sum.
    * ``loss_scale`` -- the factor the loss was multiplied by before ``backward()`` (a
      GradScaler's ``get_scale()``, or your own).  Rules whose signal keeps e's magnitude see it
      in e; sign-DFA and DRTP, whose signal does not, multiply by it, so that their updates
      scale with the loss like every other rule's and a GradScaler's unscaling is exact.

    * ``sample_offset``, ``sample_stride`` -- under several processes, where this process's
      examples sit in the global batch: example n of its batch is global index
      ``sample_offset + sample_stride x n``.  The hardware model's read noise
      (``signal_noise``) is keyed by each sample's global index, so N processes draw what one
      does.  A contiguous share starting at index s (falign's runner; accelerate's batches,
      s = rank x per-device batch size) is ``sample_offset=s``; rank r of w reading every w-th
      sample (torch's ``DistributedSampler``) is ``sample_offset=r, sample_stride=w``.  Given
      together; one given alone takes the other's default (offset 0, stride 1); both None:
      leave them as they are.

    Call it before each step's backward in a loop of your own; falign's runner and its
    Lightning and Hugging Face callbacks call it for you.  Models without a direct-feedback
    rule or a hardware model ignore it.
    """
    if sample_offset is not None or sample_stride is not None:
        set_sample_index(model, 0 if sample_offset is None else sample_offset,
                         1 if sample_stride is None else sample_stride)
    wiring = wiring_of(model)
    if wiring is not None:
        wiring.step = StepState(targets, wiring.forwards, sample_weight, float(loss_scale))
        wiring.made = None


def set_targets(model: nn.Module, targets: Tensor | None) -> None:
    """``set_step(model, targets=targets)``: the step's labels alone (a mean loss, no loss
    scaling)."""
    set_step(model, targets=targets)
