"""The direct pathway: every converted layer's input receives ``B_i e`` (Nokland 2016).

``e`` is the gradient of the loss at the network's *logits*: the wiring taps the model's
output, and where the output comes from a trailing Softmax, LogSoftmax, Sigmoid or Tanh (a
module or a functional call) it taps that activation's input instead, so a model that ends in
``LogSoftmax`` trained with ``nll_loss`` gets exactly the updates of the same model ending in
logits trained with ``cross_entropy``.  A rule option ``output`` names the module whose output
is the tap instead.  ``e`` is read off the autograd graph by a pre-hook on the node that made
the tapped tensor, so it is recorded before any hidden layer's backward runs; each hidden
layer ignores the gradient arriving from above for its input.

``B_i`` maps one sample's error to one sample's layer input (an image model: the whole input map
times e's width; a sequence: one position's input times one position's error, shared across
positions) and is made at the first forward (the wiring learns e's shape from the tapped
output).

This module also holds the DFA framework report's averaged training loops (rule option
``average``): one update per batch (per class) from averaged activations and error.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor, nn

from ._ops import as_dtype, conv_backward, linear_weight_grads
from .base import Pathway, StepContext, register_pathway

#: autograd nodes of a final activation: e is taken at their input (the logits)
OUTPUT_ACTIVATIONS = ("LogSoftmaxBackward0", "SoftmaxBackward0", "SigmoidBackward0", "TanhBackward0")
#: other pointwise non-linearities: e taken after one of them is probably not at the logits
POINTWISE = ("LogBackward0", "ExpBackward0", "ReluBackward0", "GeluBackward0", "SoftplusBackward0",
             "EluBackward0", "LeakyReluBackward0", "HardtanhBackward0", "SiluBackward0",
             "PowBackward0", "ClampBackward1", "AbsBackward0")


class DirectWiring:
    """Per converted model: where e is tapped, and the e of the backward pass under way."""

    def __init__(self, model: nn.Module, layers: list, output: str) -> None:
        self.layers = layers
        self.output = output
        self.error: Tensor | None = None
        self.targets: Tensor | None = None  # labels (N,) or targets (N, K) of the step, if given
        self.targets_at = -1  # forwards seen when they were given (stale after the next one)
        self.forwards = 0
        self.sample_weight: float | None = None  # a sample's weight in the loss (1/N for a mean)
        self.loss_scale = 1.0  # the factor the loss was multiplied by before backward (a GradScaler's)
        self.warned = False
        rule = layers[0].rule
        self.cut = getattr(rule, "above", "cut") == "cut"
        self.shared = bool(getattr(rule, "shared", False))
        self.seed = rule.seed
        self.collected: dict[int, Tensor] = {}  # key of a layer input -> signals sent to it
        self.hooked: dict[int, tuple] = {}  # id(layer input) -> (weakref to it, key)
        for layer in layers:
            layer.wiring = self
        self.points = attach_points(model, rule, self) if getattr(rule, "points", None) else []
        target = model.get_submodule(output) if output else model
        target.register_forward_hook(self)
        # layers that run after the tap (a language model's vocabulary projection, when e is
        # taken at the last hidden state) are part of "the loss": they learn by backprop
        self.tapped = False
        model.register_forward_pre_hook(self._begin)

    def __deepcopy__(self, memo):  # a copy of a converted model gets its own, empty wiring
        new = DirectWiring.__new__(DirectWiring)
        memo[id(self)] = new
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "layers"})
        new.layers = copy.deepcopy(self.layers, memo)
        new.error = None
        return new

    def _begin(self, module, args):
        self.tapped = False

    def __call__(self, module, args, output):
        self.tapped = True
        self.forwards += 1
        self.hooked.clear()
        self.collected.clear()
        if not isinstance(output, Tensor):
            raise TypeError(
                "DFA taps a tensor output; this module returned "
                f"{type(output).__name__} (pass output='<submodule name>' to convert)"
            )
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
        node.register_prehook(self._prehook(index))

    def _prehook(self, index: int):
        def record(grad_outputs):
            self.error = grad_outputs[index].detach()

        return record

    def _make_feedback(self, error_shape: tuple[int, ...]) -> None:
        """Make the B_i whose shapes waited for e's; with ``shared``, every B_i is the first rows
        of one random matrix (Launay et al.'s single feedback matrix)."""
        pending = [(m, feedback_shape(m, error_shape)) for m in (*self.layers, *self.points)
                   if m.feedback is None and m.pending_input_shape is not None]
        if not pending:
            return
        values: dict[int, Tensor] = {}
        if self.shared:
            from ...rules import derive_seed, gaussian

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
            m.pending_input_shape = None

    def collect(self, x: Tensor) -> Tensor:
        """Under ``above="cut"``: ``x`` (a layer's input) receives only what the layers reading
        it send (their direct signals): anything else -- a skip connection's gradient from the
        blocks above -- is replaced.  Returns the tensor the layer should read."""
        if not self.cut or not x.requires_grad or not torch.is_grad_enabled():
            return x
        import weakref

        seen = self.hooked.get(id(x))
        if seen is not None and seen[0]() is x:  # another layer reading the same tensor
            key = seen[1]
        else:  # (an id can be reused by a later tensor once a temporary is freed)
            key = len(self.hooked) + 1 + max((k for _, k in self.hooked.values()), default=0)
            self.hooked[id(x)] = (weakref.ref(x), key)
            x.register_hook(lambda g, key=key: self.collected.pop(key, torch.zeros_like(g)))
        return _Collect.apply(x, self, key)


def feedback_shape(m, error_shape: tuple[int, ...]) -> tuple[int, ...]:
    """B_i's shape, once e's (batch-included) shape is known: (D, E) token-wise (a linear op
    whose input shares e's leading dims: each position receives its own error) or broadcast (e
    one vector a sample: every position receives it), else the full (*input, *e) of a sample."""
    x, e = m.pending_input_shape, tuple(error_shape)
    if m.recurrent or m.op == "linear" and (x[:-1] == e[:-1] or len(x) > 2 and _batch_axis(x, e) is not None):
        return (x[-1], e[-1])  # (a recurrent weight's input: one step's state and error)
    return (*x[1:], *e[1:])


def _batch_axis(x, e) -> int | None:
    """The axis (0 or 1) of a sequence input ``x`` that is the batch of error ``e`` when their
    positions differ (e one vector a sample, or an encoder's positions against a decoder's)."""
    for a in (0, 1):
        if a < len(x) - 1 and a < len(e) - 1 and x[a] == e[a] and (len(e) == 2 or len(e) == len(x)):
            return a
    return None


#: class index of a position that counts in no loss (PyTorch's and Hugging Face's convention)
IGNORE_INDEX = -100


def one_hot_targets(targets: Tensor, error: Tensor) -> Tensor:
    """Targets in e's shape: class indices (one a sample, or one a position) one-hot, a
    position whose index is ``IGNORE_INDEX`` all zeros; float targets as they are."""
    if not targets.is_floating_point():
        classes = error.shape[-1] if tuple(targets.shape) == tuple(error.shape[:-1]) else error[0].numel()
        keep = targets != IGNORE_INDEX
        hot = torch.nn.functional.one_hot(torch.where(keep, targets, 0), classes)
        targets = hot * keep.unsqueeze(-1)
    return targets.reshape(error.shape).to(error.dtype)


def _labels_counted(targets: Tensor | None, error: Tensor) -> int:
    """What a mean loss averages over: the step's class labels other than IGNORE_INDEX (as
    PyTorch's cross-entropy does), else one per sample, or per position of a sequence's e (N, T, K)."""
    if targets is not None and not targets.is_floating_point():
        return max(int((targets != IGNORE_INDEX).sum()), 1)
    return math.prod(error.shape[:-1]) if error.dim() == 3 else error.shape[0]


def direct_source(wiring: DirectWiring, rule, error: Tensor) -> Tensor:
    """What B_i multiplies, (N, *e): the rule's function of e, of the targets and of a
    sample's weight in the loss (unless the step says otherwise, 1 over what a mean loss
    averages: the labels that count, else the samples or a sequence's positions) times
    the loss scale (rules whose signal keeps e's magnitude ignore both: e carries them)."""
    from ..feedback import FeedbackError

    weight = wiring.sample_weight
    if weight is None:
        mean = getattr(rule, "reduction", "mean") == "mean"
        weight = 1.0 / _labels_counted(wiring.targets, error) if mean else 1.0
    weight = weight * wiring.loss_scale
    targets = None
    if getattr(rule, "needs_targets", False):
        targets = wiring.targets
        if targets is None:
            raise FeedbackError(
                f"the {rule.name} rule projects each step's labels: call falign.set_step(model, "
                "targets=y) before the step's backward (falign's runner and its Lightning and "
                "Hugging Face callbacks do)")
        if wiring.targets_at < wiring.forwards - 1:
            raise FeedbackError("the targets given to falign.set_step belong to an earlier step: "
                                "give each step's targets (falign.set_step(model, targets=y))")
        targets = one_hot_targets(targets, error)
    return rule.direct_signal(error, targets, weight)


def direct_input_grad(wiring: DirectWiring, layer, feedback: Tensor | None, x_shape, dtype,
                      position: int | None = None) -> Tensor | None:
    """The signal a layer's input receives: ``s B_i^T`` per position (token-wise), per sample
    broadcast over positions, or for the whole per-sample map (``s`` the rule's function of e).
    A recurrent weight's input is a feedback point only under ``recurrent="step"``."""
    error = wiring.error
    feedback = layer.feedback if feedback is None else feedback  # lazy B: made after the forward
    if layer.recurrent and getattr(layer.rule, "recurrent", "none") != "step":
        return None
    if error is None:
        raise RuntimeError(
            "DFA layer got no output error: the backward pass did not start at the output the "
            "DFA hook taps (call backward on a loss computed from the converted model's output)"
        )
    if feedback is None:
        raise RuntimeError("DFA feedback matrix was never created (no training-mode forward)")
    source = direct_source(wiring, layer.rule, error)
    if position is not None and source.dim() > 2:  # the error of one time step
        source = source.select(layer.time_dim, position)
    b = layer.rule.matrix(layer.weight, feedback)
    x_shape = tuple(x_shape)
    if b.dim() == 2 and b.shape[0] == x_shape[-1] and layer.op == "linear":
        if tuple(source.shape[:-1]) == x_shape[:-1]:
            return (source.to(b.dtype) @ b.T).to(dtype)  # position by position
        # the input's positions are not the error's: every position receives the projection of
        # the sample's (mean) error
        axis = _batch_axis(x_shape, tuple(source.shape))
        if axis is None:
            raise RuntimeError(f"DFA: an error of shape {tuple(error.shape)} cannot feed an input "
                               f"of shape {x_shape}")
        if source.dim() > 2:
            others = [d for d in range(source.dim() - 1) if d != axis]
            source = source.mean(dim=others)  # (N, E)
        g = source.to(b.dtype) @ b.T  # (N, D)
        view = [1] * len(x_shape)
        view[axis], view[-1] = g.shape[0], g.shape[-1]
        return g.reshape(view).expand(x_shape).to(dtype)
    if error.shape[0] != x_shape[0]:
        raise RuntimeError(
            f"DFA: output error has batch size {error.shape[0]} but the layer input has "
            f"{x_shape[0]}; DFA needs one output row per input sample"
        )
    b2d = b.reshape(-1, error[0].numel())  # (in_numel, e_numel)
    return (source.reshape(error.shape[0], -1).to(b2d.dtype) @ b2d.T).view(x_shape).to(dtype)


class _Collect(torch.autograd.Function):
    """Identity; its backward adds the gradient a layer sends to its input to the wiring's
    record for that input (see DirectWiring.collect)."""

    @staticmethod
    def forward(ctx, x, wiring, key):
        ctx.wiring, ctx.key = wiring, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        acc = ctx.wiring.collected
        acc[ctx.key] = g if ctx.key not in acc else acc[ctx.key] + g
        return g, None, None


def direct_feedback_grad(ctx, x: Tensor, feedback: Tensor) -> Tensor:
    """A trained B_i's gradient, from the layer input and e as pairs of rows (the rule says
    what to make of them): one row a position (token-wise), a sample (positions summed against
    the sample's mean error), or a sample's whole map."""
    error = ctx.wiring.error
    stepwise = getattr(ctx.layer.rule, "recurrent", "none") == "step"
    if ctx.layer.recurrent and (not stepwise or ctx.position is None):
        return torch.zeros_like(feedback)  # no feedback point at this state: B is not used
    if ctx.position is not None and error.dim() > 2:
        error = error.select(ctx.layer.time_dim, ctx.position)
    d = feedback.shape[0] if feedback.dim() == 2 else None
    if d is not None and x.shape[-1] == d and (x.dim() > 2 or error.dim() > 2):
        if tuple(x.shape[:-1]) == tuple(error.shape[:-1]):
            h, e = x.reshape(-1, d), error.reshape(-1, error.shape[-1])
        else:
            axis = _batch_axis(tuple(x.shape), tuple(error.shape))
            h = x.sum(dim=[a for a in range(x.dim() - 1) if a != axis])  # (N, D)
            others = [a for a in range(error.dim() - 1) if a != axis]
            e = error if error.dim() == 2 else error.mean(dim=others)
    else:
        h, e = x.reshape(x.shape[0], -1), error.reshape(error.shape[0], -1)
    g = ctx.layer.rule.feedback_grad(inputs=h.to(e.dtype), error=e, shape=tuple(feedback.shape))
    return g.reshape(feedback.shape).to(feedback.dtype)


class DirectLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer, wiring):
        ctx.layer, ctx.wiring, ctx.position = layer, wiring, getattr(layer, "position", None)
        ctx.save_for_backward(x, weight, feedback)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        gx = direct_input_grad(ctx.wiring, ctx.layer, feedback, x.shape, x.dtype,
                               ctx.position) if need_x else None
        gw, gb = linear_weight_grads(g, x, weight, need_w, need_b)
        gfb = direct_feedback_grad(ctx, x, feedback) if need_fb else None
        return gx, gw, gb, gfb, None, None


class DirectConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, layer, wiring):
        ctx.layer, ctx.wiring, ctx.has_bias, ctx.position = layer, wiring, bias is not None, None
        ctx.save_for_backward(x, weight, feedback)
        return layer.spec.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        need_b = need_b and ctx.has_bias
        gw = gb = None
        if need_w or need_b:
            _, gw, gb = conv_backward(g, x, weight, ctx.layer.spec, [False, need_w, need_b])
        gx = direct_input_grad(ctx.wiring, ctx.layer, feedback, x.shape, x.dtype) if need_x else None
        gfb = direct_feedback_grad(ctx, x, feedback) if need_fb else None
        return gx, as_dtype(gw, weight), as_dtype(gb, weight), gfb, None, None


@register_pathway
class Direct(Pathway):
    name = "direct"

    def lazy(self, layer):
        return True

    def attach(self, model, layers):
        rule = layers[0].rule
        if getattr(rule, "average", "sample") != "sample":
            _check_mlp(model)
        return DirectWiring(model, layers, getattr(rule, "output", ""))

    def detach(self, model):
        """Remove the wiring's hooks (the tap's, the model's) and the feedback points."""
        owners = {id(m.wiring) for m in model.modules() if getattr(m, "wiring", None) is not None}
        owners |= {id(m.falign_point) for m in model.modules() if "falign_point" in m._modules}
        for m in model.modules():
            for hooks in (m._forward_hooks, m._forward_pre_hooks):
                for key, hook in list(hooks.items()):
                    if id(getattr(hook, "__self__", hook)) in owners:
                        del hooks[key]
            m._modules.pop("falign_point", None)

    def prepare(self, layer, x):
        if layer.wiring is None:
            raise RuntimeError(
                f"DFA layer '{layer.layer_name}' is not attached to a network output; "
                "convert the whole model with falign.convert(model, 'dfa')"
            )
        if layer.feedback is None:
            if layer.rule.learned and torch.is_grad_enabled() and layer.training:
                from ..feedback import FeedbackError

                raise FeedbackError(
                    f"layer '{layer.layer_name}': rule '{layer.rule.name}' trains B_i, whose shape "
                    "is known only at the first forward: convert with falign.convert(model, "
                    f"'{layer.rule.name}', example_input=x) so B_i exists before the optimizer "
                    "is built")
            layer.pending_input_shape = layer.fn_input_shape(x)

    def effective(self, layer):
        return layer.feedback

    def forward(self, layer, x, plain):
        if layer.wiring is not None and (layer.wiring.points or layer.wiring.tapped):
            # feedback points elsewhere (the layers learn by backprop from them), or a layer
            # above the tap (it learns by backprop from the loss)
            return plain(x)
        if layer.wiring is not None and not layer.recurrent:
            x = layer.wiring.collect(x)
        return super().forward(layer, x, plain)

    def linear(self, layer, x, feedback):
        return _eager(DirectLinearFn, x, layer, feedback)

    def conv(self, layer, x, feedback):
        return _eager(DirectConvFn, layer.pad(x), layer, feedback)

    def train_step(self, model, net, x, y, ctx):
        layers = [m for m in model.modules() if getattr(m, "wiring", None) is not None]
        if not layers:
            return super().train_step(model, net, x, y, ctx)
        wiring, rule = layers[0].wiring, layers[0].rule
        # the step's targets and a sample's weight in the loss: each process holds a share of
        # the global batch, and DDP averages over the processes
        mean = getattr(rule, "reduction", "mean") == "mean"
        # a mean over the global batch's examples, or its positions (one label a position)
        labels = y.shape[1:-1] if y.is_floating_point() else y.shape[1:]
        n = None if ctx.batch is None else ctx.batch * math.prod(labels)
        weight = None if n is None else ctx.world / n if mean else float(ctx.world)
        set_step(model, targets=y, sample_weight=weight, loss_scale=ctx.loss_scale())
        try:
            if getattr(rule, "average", "sample") == "sample":
                return super().train_step(model, net, x, y, ctx)
            return averaged_step(model, x, y, ctx, mode=rule.average, step=rule.average_step)
        finally:
            wiring.targets = wiring.sample_weight = None
            wiring.loss_scale = 1.0


def _eager(fn, x, layer, feedback):
    # DFA's backward reads e from the wiring, written by the tap's pre-hook earlier in the same
    # pass: a dependency no traced graph holds.  Dynamo traces a Function's backward at forward
    # time and would bake in the e the wiring held then (the previous step's), so this Function
    # stays eager under torch.compile.
    from ..feedback import outside_compile

    return outside_compile(fn.apply)(x, layer.weight, layer.bias, feedback, layer, layer.wiring)


class FeedbackPoint(nn.Module):
    """A feedback point at a module's output (rule option ``points``): in training the output
    receives ``s B^T`` (token-wise, as a layer input does) in place of the gradient from above
    (or added to it, ``above="keep"``), and the module's own layers learn from it by backprop.
    Holds B (a buffer, saved, from the rule's seed and the point's name) and the wiring."""

    op = "linear"
    recurrent = False
    position = None
    time_dim = 0

    def __init__(self, rule, name: str) -> None:
        super().__init__()
        from ...rules import derive_seed

        self.rule, self.point_name = rule, name
        self._seed = derive_seed(rule.seed, f"point:{name}")
        self.pending_input_shape: tuple[int, ...] | None = None
        self.register_buffer("feedback", None)
        self.feedback_std = None
        self._device = torch.device("cpu")
        self._dtype = torch.get_default_dtype()

    @property
    def weight(self):  # what the rule's matrix() receives for a point: nothing to mirror
        return self.feedback

    def feedback_device(self):
        return self._device

    def materialize(self, shape, fan_in, fan_out, value=None):
        std = self.rule.resolved_scale(fan_in, fan_out)
        self.feedback_std = std
        b = value if value is not None else self.rule.init_feedback(
            torch.empty(0, dtype=self._dtype, device=self._device), shape, std, self._seed)
        self.feedback = b.to(self._device, self._dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        key = prefix + "feedback"
        if key in state_dict and self.feedback is None:
            self.feedback = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def hook(self, module, args, out):
        if not isinstance(out, Tensor) or not (torch.is_grad_enabled() and out.requires_grad):
            return None
        self._device, self._dtype = out.device, out.dtype
        self.op = "linear" if out.dim() <= 3 else "conv"  # a sequence (features last), or a map
        if self.feedback is None:
            self.pending_input_shape = tuple(out.shape)
        return _Inject.apply(out, self, self.wiring)


class _Inject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, point, wiring):
        ctx.point, ctx.wiring = point, wiring
        return out.view_as(out)

    @staticmethod
    def backward(ctx, g):
        signal = direct_input_grad(ctx.wiring, ctx.point, None, g.shape, g.dtype)
        return (signal if ctx.wiring.cut else g + signal), None, None


def attach_points(model: nn.Module, rule, wiring) -> list[FeedbackPoint]:
    """A FeedbackPoint at the output of every module whose name matches ``rule.points``."""
    import fnmatch

    if rule.learned:
        from ..feedback import FeedbackError

        raise FeedbackError(f"rule '{rule.name}' trains its feedback; feedback points (option "
                            "points) hold fixed B only")
    points = []
    for name, module in list(model.named_modules()):
        if name and any(fnmatch.fnmatchcase(name, p) for p in rule.points):
            point = FeedbackPoint(rule, name)
            point.wiring = wiring
            module.falign_point = point
            module.register_forward_hook(point.hook)
            points.append(point)
    if not points:
        from ..feedback import FeedbackError

        raise FeedbackError(f"rule option points={list(rule.points)} matches no module of the model")
    return points


def set_step(model: nn.Module, *, targets: Tensor | None = None, sample_weight: float | None = None,
             loss_scale: float = 1.0) -> None:
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

    Call it before each step's backward in a loop of your own; falign's runner and its
    Lightning and Hugging Face callbacks call it for you.  Models without a direct-feedback
    rule ignore it.
    """
    for m in model.modules():
        wiring = getattr(m, "wiring", None)
        if wiring is not None:
            wiring.targets, wiring.targets_at = targets, wiring.forwards
            wiring.sample_weight, wiring.loss_scale = sample_weight, float(loss_scale)
            return


def set_targets(model: nn.Module, targets: Tensor | None) -> None:
    """``set_step(model, targets=targets)``: the step's labels alone (a mean loss, no loss
    scaling)."""
    set_step(model, targets=targets)


# -- the DFA framework report's averaged loops --------------------------------------------------

def _derivative(act: nn.Module, a: Tensor) -> Tensor:
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(act(a).sum(), a)
    return d


def _check_mlp(model: nn.Module) -> None:
    from ..feedback import FeedbackError

    layers = getattr(model, "layers", None)
    acts = getattr(model, "acts", None)
    if layers is None or acts is None or not all(
            getattr(m, "op", "") == "linear" and m.pathway is not None for m in layers):
        raise FeedbackError("the batch/class-averaged DFA loops need an 'mlp' model "
                            "(falign.create_model('mlp')) converted with a direct-feedback rule")


def averaged_step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext, *, mode: str,
                  step: str = "mean") -> tuple[Tensor, Tensor]:
    """Set ``.grad`` of a DFA-converted MLP from batch- or class-averaged signals (Bechet's
    report): for each group G (the batch, or each class present in it)

        e_G = mean_{n in G} e_n,   da_i = (B_i e_G) * f'(mean_G a_i),   dW_i = da_i^T mean_G h_{i-1},

    where e_n is the error autograd gives at sample n's logits for the loss (through the
    model's output activation), a_i, h_i the pre-activations and activations.  The group
    updates are summed (the report applies them one after another from the same forward pass,
    which is the same thing: B is fixed and a, h are computed once).  ``step="sum"`` multiplies
    each group's update by |G|, the step size of the summed per-sample update; at batch size 1
    both equal per-sample DFA.  Under several processes the group sums and counts are summed
    over the processes first, so every process computes the whole batch's update.
    Returns (logits, loss) of the batch.
    """
    _check_mlp(model)
    layers, acts = model.layers, model.acts
    captured: dict[int, tuple[Tensor, Tensor]] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, (i[0], o)))
             for k, layer in enumerate(layers)]
    try:
        with ctx.autocast():
            out = model(x)  # training-mode forward: makes the B_i on first use
            loss = ctx.loss_fn(out, y)
    finally:
        for h in hooks:
            h.remove()
    logits = captured[len(layers) - 1][1]
    # e_n at the logits, as one process would see it (a share's loss carries the factor N)
    (e,) = torch.autograd.grad(loss, logits, retain_graph=False)
    e = e.detach() / ctx.world
    with torch.no_grad():
        h_in = [captured[k][0].detach() for k in range(len(layers))]  # h_{i-1}: (N, in_i)
        a_out = [captured[k][1].detach() for k in range(len(layers))]  # a_i: (N, out_i)
        k_classes = e.shape[1]
        if mode == "batch":
            member = torch.ones(x.shape[0], 1, dtype=e.dtype, device=e.device)  # (N, 1)
        elif mode == "class":
            member = nn.functional.one_hot(y, k_classes).to(e.dtype)  # (N, K): one group a class
        else:
            raise ValueError(f"unknown DFA loop '{mode}' (sample, batch, class)")
        # per group: count, sum of e, of each h_{i-1} and of each a_i; summed over processes
        sums = [member.T @ t for t in (e, *h_in, *a_out)]
        flat = ctx.reduce(torch.cat([member.sum(0)] + [s.flatten() for s in sums]))
        count, rest = flat[: member.shape[1]], flat[member.shape[1]:]
        sizes = [s.numel() for s in sums]
        sums = [t.view_as(s) for t, s in zip(torch.split(rest, sizes), sums, strict=True)]
        present = count > 0
        count = count[present].unsqueeze(1)  # (G, 1)
        means = [s[present] / count for s in sums]
        e_g, h_g, a_g = means[0], means[1:1 + len(layers)], means[1 + len(layers):]
        weight = count if step == "sum" else torch.ones_like(count)  # (G, 1)
        for i, layer in enumerate(layers):
            if i == len(layers) - 1:
                delta = e_g
            else:
                b_next = layers[i + 1].feedback.reshape(-1, math.prod(e.shape[1:]))  # (out_i, K)
                delta = (e_g @ b_next.T) * _derivative(acts[i], a_g[i])  # (G, out_i)
            delta = delta * weight
            layer.weight.grad = delta.T @ h_g[i]
            if layer.bias is not None:
                layer.bias.grad = delta.sum(0)
    return out, loss
