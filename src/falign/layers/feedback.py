"""Drop-in layers that carry W and the feedback B.

``FeedbackLinear`` and ``FeedbackConv{1,2,3}d`` subclass the torch layers, so every attribute,
``isinstance`` check and ``state_dict`` key of the plain layer stays; they add

* buffer ``feedback`` -- the stored part of B (None where the rule stores nothing or where the
  shape is only known after the first forward: dense conv FA, DFA),
* buffer ``feedback_step`` -- training steps seen (drives brsf redraws, sign-tracking refreshes
  and KP decay, so a resumed run continues the same sequence),
* ``rule`` -- the :class:`falign.rules.Rule`, and ``exact`` -- True inside ``exact_backward``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rules import Rule, get_rule
from ..rules.functional import (
    ConvSpec,
    DenseSignal,
    DFAContext,
    DirectSignal,
    FeedbackConvFn,
    FeedbackLinearFn,
    KernelSignal,
)
from ..rules.registry import derive_seed

# torch.compiler.is_compiling arrived in torch 2.3; before it, layers trace as they always did
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _outside_compile(method):
    """Run ``method`` eagerly, outside any ``torch.compile`` graph.

    The per-step rule state (a Python step counter, seeded ``torch.Generator`` draws, buffers
    created or replaced on the module) cannot be traced: dynamo refuses to build a Generator
    in a graph, and it would specialise on the int ``_step`` and recompile every step until
    its recompile limit sends the whole layer, custom backward included, back to eager.
    Calling the skipped ``torch.compiler.disable`` while tracing makes dynamo graph-break
    around this one call; the autograd Function after it is still compiled with its backward.
    Outside compilation this is a plain call (and ``import falign`` does not import dynamo).
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        if _is_compiling():
            return torch.compiler.disable(method)(*args, **kwargs)
        return method(*args, **kwargs)

    return wrapper


class FeedbackLayer:
    """Mixin for a torch layer with ``weight`` (and maybe ``bias``) that learns with a rule."""

    rule: Rule
    feedback: Tensor | None
    feedback_step: Tensor

    def _setup_feedback(self, rule: Rule, name: str) -> None:
        self.rule = rule
        self.layer_name = name
        self.exact = False
        self.hold_state = False
        self._seed = derive_seed(rule.seed, name)
        self._step = 0
        self._dfa_context: DFAContext | None = None
        self._pending_input_shape: tuple[int, ...] | None = None
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(self.weight)
        self.feedback_std = rule.resolved_scale(fan_in, fan_out)
        self.register_buffer("feedback_step", torch.zeros((), dtype=torch.long))
        # saved with B, so lazy B and brsf redraws continue after loading into any model
        self.register_buffer("feedback_seed", torch.tensor(self._seed, dtype=torch.long))
        feedback = None
        if not self._lazy_feedback:
            with torch.no_grad():
                feedback = rule.init_feedback(
                    self.weight, self.weight.shape, self.feedback_std, self._seed
                )
        self.register_buffer("feedback", feedback)
        if rule.kind == "direct":
            self._signal = None  # set by attach_dfa_context
        elif self._lazy_feedback:
            self._signal = DenseSignal(rule.matrix)
        else:
            self._signal = KernelSignal(rule.matrix)

    @property
    def _lazy_feedback(self) -> bool:
        return self.rule.kind == "direct" or getattr(self.rule, "conv_feedback", "") == "dense" \
            and isinstance(self, nn.modules.conv._ConvNd)

    def attach_dfa_context(self, context: DFAContext) -> None:
        self._dfa_context = context
        self._signal = DirectSignal(context, self)

    # -- B ---------------------------------------------------------------------------------------
    def effective_feedback(self) -> Tensor | None:
        """Exactly the B the next backward uses: W's shape for kernel rules, the 2-D
        (out_numel, in_numel) matrix for dense conv FA, (*input, *output) for DFA; None when
        it does not exist yet (lazy shapes before the first training forward)."""
        if self.rule.kind == "direct" or self._lazy_feedback:
            return self.feedback
        with torch.no_grad():
            return self.rule.matrix(self.weight, self.feedback)

    @_outside_compile
    def _advance(self, update: bool) -> None:
        """Per-training-step state of the rule (brsf redraw, sign-tracking copy, KP decay).
        The step always counts; B is only remade where the layer sends a signal this step."""
        self._step += 1
        self.feedback_step.fill_(self._step)
        if not update:
            return
        with torch.no_grad():
            # Out of place: a graph still waiting for backward keeps the B it saw.
            self.feedback = self.rule.update(
                self.weight, self.feedback, self._step, self.feedback_std, self._seed
            )

    def _feedback_forward(self, x: Tensor, plain) -> Tensor:
        if self.exact or self.rule.name == "bp":
            return plain(x)
        grad_mode = torch.is_grad_enabled()
        needs_signal = grad_mode and x.requires_grad
        if self.training and grad_mode and self.rule.stateful and not self.hold_state:
            self._advance(update=needs_signal)
        if not needs_signal:
            # No input gradient wanted: the local weight update is the ordinary one, and no B
            # is made (a first layer carries no feedback).
            return plain(x)
        if self._lazy_feedback and self.feedback is None:
            if self.rule.kind == "direct":
                if self._signal is None:
                    raise RuntimeError(
                        f"DFA layer '{self.layer_name}' is not attached to a network output; "
                        "convert the whole model with falign.convert(model, 'dfa')"
                    )
                self._pending_input_shape = self._fn_input_shape(x)
            else:
                self._create_dense_feedback(x)
        if self.rule.kind == "direct":
            return self._call_direct(x)
        return self._call_fn(x)

    @_outside_compile
    def _call_direct(self, x: Tensor) -> Tensor:
        # DFA's backward reads e from the DFAContext, written by the output tap's backward
        # earlier in the same pass: a dependency no traced graph holds.  Dynamo traces a
        # Function's backward at forward time and would bake in the e the context held then
        # (the previous step's), so this Function stays eager under torch.compile.
        return self._call_fn(x)

    def _fn_input_shape(self, x: Tensor) -> tuple[int, ...]:
        """Per-sample shape of what the autograd Function sees (after any pre-padding)."""
        return tuple(x.shape[1:])

    @_outside_compile
    def _materialize(self, shape, fan_in: int, fan_out: int) -> None:
        std = self.rule.resolved_scale(fan_in, fan_out)
        self.feedback_std = std
        with torch.no_grad():
            self.feedback = self.rule.init_feedback(self.weight, shape, std, self._seed)

    def create_direct_feedback(self, error_shape: tuple[int, ...]) -> None:
        """Called by the DFA output hook once the output shape is known."""
        if self.feedback is None and self._pending_input_shape is not None:
            in_shape = self._pending_input_shape
            self._materialize(in_shape + tuple(error_shape), math.prod(in_shape),
                              math.prod(error_shape))
        self._pending_input_shape = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if prefix + "feedback_seed" not in state_dict:
            # checkpoints written before the seed was saved: keep the seed derived at conversion
            state_dict[prefix + "feedback_seed"] = self.feedback_seed.detach().clone()
        key = prefix + "feedback"
        if key not in state_dict and self._lazy_feedback:
            self.feedback = None  # saved before its lazy B existed: B is made again on first use
        if key in state_dict:
            saved = state_dict[key]
            if self.feedback is None or self.feedback.shape != saved.shape:
                if self._lazy_feedback or self.feedback is None:
                    # lazy B: adopt the saved shape
                    self.feedback = torch.empty_like(saved, device=self.weight.device,
                                                     dtype=self.weight.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        step_key = prefix + "feedback_step"
        if step_key in state_dict:
            self._step = int(state_dict[step_key])
        if prefix + "feedback_seed" in state_dict:
            self._seed = int(state_dict[prefix + "feedback_seed"])

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.rule.options().items() if k != "seed")
        return f"{super().extra_repr()}, rule={self.rule.name}" + (f", {opts}" if opts else "")


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """nn.Linear with a learning rule; input of any shape (..., in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rule: str | Rule = "fa", name: str = "", device=None, dtype=None, **options):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_feedback(get_rule(rule, **options), name)

    def _call_fn(self, x: Tensor) -> Tensor:
        return FeedbackLinearFn.apply(x, self.weight, self.bias, self.feedback, self._signal)

    def forward(self, x: Tensor) -> Tensor:
        return self._feedback_forward(x, super().forward)


class _FeedbackConv(FeedbackLayer):
    """Shared by the 1/2/3-d convolutions: resolves padding (modes, 'same') to a pre-pad plus
    integer padding, so the autograd Function sees one plain convolution."""

    def _setup_conv(self) -> None:
        nd = len(self.kernel_size)
        rev = self._reversed_padding_repeated_twice  # (left_last, right_last, ...) as F.pad wants
        self._prepad: tuple[int, ...] | None = None
        self._pad_mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        if self.padding_mode != "zeros":
            self._prepad, padding = tuple(rev), (0,) * nd
        elif isinstance(self.padding, str):
            pairs = [(rev[2 * i], rev[2 * i + 1]) for i in range(nd)][::-1]
            if all(a == b for a, b in pairs):
                padding = tuple(a for a, _ in pairs)
            else:
                self._prepad, padding = tuple(rev), (0,) * nd
        else:
            padding = tuple(self.padding)
        self._spec = ConvSpec(tuple(self.stride), padding, tuple(self.dilation), self.groups)

    def _pad(self, x: Tensor) -> Tensor:
        return x if self._prepad is None else F.pad(x, self._prepad, mode=self._pad_mode)

    def _fn_input_shape(self, x: Tensor) -> tuple[int, ...]:
        # DFA on a pre-padded conv sends B e to the padded map; F.pad's backward folds it back.
        return tuple(self._pad(x[:1]).shape[1:])

    def _call_fn(self, x: Tensor) -> Tensor:
        return FeedbackConvFn.apply(self._pad(x), self.weight, self.bias, self.feedback,
                                    self._spec, self._signal)

    def _create_dense_feedback(self, x: Tensor) -> None:
        xp = self._pad(x[:1])
        spatial = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(xp.shape[2:], self._spec.padding, self._spec.dilation,
                                     self.kernel_size, self._spec.stride, strict=True)
        ]
        out_numel = self.out_channels * math.prod(spatial)
        in_numel = xp[0].numel()
        self._materialize((out_numel, in_numel), in_numel, out_numel)

    def forward(self, x: Tensor) -> Tensor:
        return self._feedback_forward(x, super().forward)


def _conv_class(base: type[nn.modules.conv._ConvNd], doc: str):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, rule="fa", name="", device=None,
                 dtype=None, **options):
        base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                      groups, bias, padding_mode, device=device, dtype=dtype)
        self._setup_conv()
        self._setup_feedback(get_rule(rule, **options), name)

    return type(f"Feedback{base.__name__}", (_FeedbackConv, base),
                {"__init__": __init__, "__doc__": doc, "__module__": __name__})


FeedbackConv1d = _conv_class(nn.Conv1d, "nn.Conv1d with a learning rule.")
FeedbackConv2d = _conv_class(nn.Conv2d, "nn.Conv2d with a learning rule.")
FeedbackConv3d = _conv_class(nn.Conv3d, "nn.Conv3d with a learning rule.")

#: plain torch layer type -> feedback layer type (exact types; subclasses are reported, not converted)
LAYER_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FeedbackLinear,
    nn.Conv1d: FeedbackConv1d,
    nn.Conv2d: FeedbackConv2d,
    nn.Conv3d: FeedbackConv3d,
}


def from_plain(module: nn.Module, rule: Rule, name: str) -> nn.Module:
    """A feedback layer that shares ``module``'s parameters, buffers and attributes."""
    cls = LAYER_TYPES[type(module)]
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for attr in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        new.__dict__[attr] = type(module.__dict__[attr])(module.__dict__[attr])
    if isinstance(new, _FeedbackConv):
        new._setup_conv()
    new._setup_feedback(rule, name)
    return new
