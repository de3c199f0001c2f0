"""Drop-in layers that carry W and the feedback B.

``FeedbackLinear`` and ``FeedbackConv{1,2,3}d`` subclass the torch layers, so every attribute,
``isinstance`` check and ``state_dict`` key of the plain layer stays; they add

* ``feedback`` -- the stored part of B: a buffer (saved, moved by ``.to()``, never in
  ``parameters()``), except for rules that train B like W (Kolen-Pollack), where it is an
  ``nn.Parameter`` the user's optimizer steps; None where the rule stores nothing or where the
  pathway knows B's shape only after the first forward (dense conv FA, DFA);
* buffer ``feedback_step`` -- the optimizer steps W has taken, as the layer saw them (drives
  brsf redraws and sign-tracking copies, so a resumed run continues the same sequence);
* buffer ``feedback_seed`` -- the layer's seed, derived from (rule seed, layer name); a layer
  built on its own with no ``seed`` draws it from torch's global generator instead (see
  :class:`FeedbackLinear`), and a reload gives the B it made;
* ``rule`` (:class:`falign.rules.Rule`), ``pathway`` (how the error reaches the input) and
  ``exact`` (True inside ``exact_backward``).

**One state change per optimizer step.**  A step is detected from W itself: an optimizer (any
torch optimizer, or a hand-written ``w -= lr * w.grad`` under ``torch.no_grad()``) changes W in
place, which advances W's autograd version counter.  At a training forward the layer compares
W's version with the one it saw last: if W changed, one step has happened and the rule's
per-step state advances once.  A layer called twice in one forward, and every micro-batch of a
gradient-accumulation step, therefore see the same B.  (An update through ``w.data`` bypasses
the version counter: falign then sees no step.  Two optimizer steps with no forward between
them count as one.)  Loading a state dict or moving W to another device is not a step.
``effective_feedback()``, ``state_dict()`` and the next backward agree at every point of the
cycle: reading B after ``optimizer.step()`` gives the B of the next step.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rules import Rule, derive_seed, get_rule
from .errors import FeedbackError
from .hardware import backward_rule
from .pathways import get_pathway
from .pathways._ops import ConvSpec, outside_compile


def layer_seed(rule: Rule, name: str) -> int:
    """The seed of a layer's B: derived from (rule seed, layer name), or, where the rule has no
    seed (a layer built on its own), one draw from torch's global generator -- so two such
    layers get two Bs, and ``torch.manual_seed`` before building a model fixes them all."""
    if rule.seed is not None:
        return derive_seed(rule.seed, name)
    return int(torch.randint(0, 2**63 - 1, ()))  # derive_seed's range


class FeedbackLayer:
    """Mixin for a torch layer with ``weight`` (and maybe ``bias``) that learns with a rule."""

    #: state_dict format: 2 = KP stores B itself (1: B - W), feedback_step counts optimizer steps
    _version = 2
    op: str = ""
    rule: Rule
    feedback: Tensor | None
    feedback_step: Tensor
    #: what the layer's pathway keeps for it (``Pathway.layer_state``; None for most pathways)
    pathway_state: object = None

    @property
    def param(self) -> nn.Parameter:
        """The parameter that holds W (for a slot, the parent module's, maybe packed or
        transposed); ``canonical(t)`` maps a tensor of its shape (its gradient) to W's view."""
        return self.weight

    def canonical(self, t: Tensor) -> Tensor:
        return t

    def _setup_feedback(self, rule: Rule, name: str) -> None:
        self.rule = rule
        self.pathway = get_pathway(rule.pathway)
        self.layer_name = name
        self.exact = False
        self._seed = layer_seed(rule, name)
        self._step = 0  # optimizer steps seen
        self._state_step = -1  # steps the stored part belongs to (-1: made at conversion)
        self._seen: tuple[int, int] | None = None  # (data_ptr, version) of W at the last sync
        self.pathway_state = self.pathway.layer_state(self)
        #: what the pathway's Functions ask for B and the signal: the rule, or its hardware view
        self.backward_rule = backward_rule(self, rule)
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(self.weight)
        self.feedback_std = rule.resolved_scale(fan_in, fan_out)
        self.register_buffer("feedback_step", torch.zeros((), dtype=torch.long))
        # saved with B, so lazy B and brsf redraws continue after loading into any model
        self.register_buffer("feedback_seed", torch.tensor(self._seed, dtype=torch.long))
        feedback = None
        if not self.pathway.lazy(self):
            with torch.no_grad():
                feedback = rule.init_feedback(self.weight, self.weight.shape, self.feedback_std,
                                              self._seed)
        self._set_feedback(feedback)

    def _set_feedback(self, feedback: Tensor | None) -> None:
        if self.rule.learned and feedback is not None:
            if "feedback" in self._buffers:
                del self._buffers["feedback"]
            self.register_parameter("feedback", nn.Parameter(feedback))
            _register_learned(self)
        else:
            self.register_buffer("feedback", feedback)

    # -- steps ----------------------------------------------------------------------------------
    @outside_compile
    def sync_step(self, start: bool = True) -> None:
        """Count an optimizer step if W changed in place since the last sync (see the module
        docstring).  ``start``: a training forward, which begins watching W."""
        if not self.rule.stateful:
            return
        w = self.weight
        key = (w.data_ptr(), w._version)
        seen = self._seen
        if seen is None or key[0] != seen[0]:
            if start or seen is not None:
                self._seen = key  # first training forward, or W moved: not a step
            return
        if key[1] != seen[1]:
            self._seen = key
            self._step += 1
            self.feedback_step.fill_(self._step)

    @outside_compile
    def current_feedback(self) -> Tensor | None:
        """The stored part for the current step (the rule's update runs once per step, here)."""
        if self.rule.stateful and self._state_step != self._step and self.feedback is not None:
            with torch.no_grad():
                self.feedback = self.rule.update(self.weight, self.feedback, self._step,
                                                 self.feedback_std, self._seed, since=self._state_step)
        self._state_step = self._step
        return self.feedback

    def effective_feedback(self) -> Tensor | None:
        """Exactly the B the next backward uses, at any point of the step cycle: W's shape for
        kernel rules, the 2-D (out_numel, in_numel) matrix for dense conv FA, (*input, *e) for
        DFA; None when it does not exist yet (lazy shapes before the first training forward)."""
        self.sync_step(start=False)
        b = self.pathway.effective(self)
        return None if b is None else b.detach()

    # -- forward --------------------------------------------------------------------------------
    def _feedback_forward(self, x: Tensor, plain) -> Tensor:
        if self.exact:
            return plain(x)
        return self.pathway.forward(self, x, plain)

    def fn_input_shape(self, x: Tensor) -> tuple[int, ...]:
        """Shape of what the autograd Function sees, batch included (after any pre-padding)."""
        return tuple(x.shape)

    @outside_compile
    def materialize(self, shape, fan_in: int, fan_out: int, value: Tensor | None = None) -> None:
        """Make a lazy B of ``shape`` (its scale from the given fans), or set it to ``value``."""
        std = self.rule.resolved_scale(fan_in, fan_out)
        self.feedback_std = std
        with torch.no_grad():
            b = value if value is not None else self.rule.init_feedback(self.weight, shape, std, self._seed)
            self._set_feedback(b.to(self.weight.dtype))

    def feedback_device(self) -> torch.device:
        return self.weight.device

    # -- state_dict -----------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.sync_step(start=False)
        self.current_feedback()  # what is saved is what the next backward uses
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "feedback"
        old_format = (local_metadata or {}).get("version", 1) < 2
        for name in ("feedback_seed", "feedback_step"):
            if prefix + name not in state_dict:
                # checkpoints written before the seed was saved, or by a plain model (an earlier
                # falign built BP models unconverted): keep what the layer has
                state_dict[prefix + name] = getattr(self, name).detach().clone()
        if old_format and self.rule.learned and key in state_dict and prefix + "weight" in state_dict:
            # format 1 stored Kolen-Pollack's B - W
            state_dict[key] = state_dict[prefix + "weight"] + state_dict[key]
        if key not in state_dict and self.pathway.lazy(self):
            self._set_feedback(None)  # saved before its lazy B existed: B is made again on first use
        if key in state_dict:
            saved = state_dict[key]
            if self.feedback is None or self.feedback.shape != saved.shape:
                if self.pathway.lazy(self) or self.feedback is None:
                    # lazy B: adopt the saved shape
                    self._set_feedback(torch.empty_like(saved, device=self.weight.device,
                                                        dtype=self.weight.dtype))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        step_key = prefix + "feedback_step"
        if step_key in state_dict:
            self._step = int(state_dict[step_key])
        # format 1 saved the stored part of the step just taken: remake it for the next one
        self._state_step = self._step - 1 if old_format else self._step
        self._seen = None
        if prefix + "feedback_seed" in state_dict:
            self._seed = int(state_dict[prefix + "feedback_seed"])

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.rule.options().items() if k != "seed")
        return f"{super().extra_repr()}, rule={self.rule.name}" + (f", {opts}" if opts else "")


# -- trained feedback: the optimizer must step B with W ---------------------------------------

_LEARNED: weakref.WeakValueDictionary[int, FeedbackLayer] = weakref.WeakValueDictionary()  # id(layer)
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STEPPED: set[int] = set()  # ids of parameters some optimizer has held at a step
_HOOK = None


def _register_learned(layer: FeedbackLayer) -> None:
    """Watch a layer whose B is trained: the optimizer step pre-hook (process-wide, as torch
    offers it) exists while at least one such layer does, and is removed with the last."""
    global _HOOK
    _LEARNED[id(layer)] = layer
    weakref.finalize(layer, _release)
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _HOOK = register_optimizer_step_pre_hook(_check_learned)


def _release() -> None:
    global _HOOK
    # the dying layer's entry may still be listed (its weakref callback runs after this one):
    # count the layers still alive
    if _HOOK is not None and next(iter(_LEARNED.values()), None) is None:
        _HOOK.remove()
        _HOOK = None


def _check_learned(optimizer, args, kwargs) -> None:
    """Before an optimizer's step: every trained B of a W it steps must be stepped too -- in W's
    own parameter group where the rule trains B like W (Kolen-Pollack: the same learning rate
    and schedule), or by some optimizer (direct Kolen-Pollack's B may have its own); else the
    optimizer would step W and leave B, silently turning the rule into FA / DFA."""
    if not _LEARNED:
        return
    ids_all = {id(p) for g in optimizer.param_groups for p in g["params"]}
    _STEPPED.update(ids_all)
    signature = tuple(len(g["params"]) for g in optimizer.param_groups)
    state = _CHECKED.get(optimizer)
    if state is not None and state[0] == signature and not state[1]:
        return
    pending = []
    owners: dict[int, list[FeedbackLayer]] = {}
    for layer in list(_LEARNED.values()):
        owners.setdefault(id(layer.param), []).append(layer)
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        for param, layer in ((q, m) for q in group["params"] for m in owners.get(id(q), ())):
            if layer.param is not param or layer.feedback is None:
                continue
            fb = id(layer.feedback)
            if layer.rule.feedback_group == "weight" and fb not in ids:
                raise FeedbackError(_left_out(layer, "in the optimizer's parameter group of W"))
            if layer.rule.feedback_group != "weight" and fb not in ids_all and fb not in _STEPPED:
                if state is not None and state[1]:  # a whole step later, no optimizer stepped B
                    raise FeedbackError(_left_out(layer, "stepped by any optimizer"))
                pending.append(layer)
    _CHECKED[optimizer] = (signature, bool(pending))


def _left_out(layer: FeedbackLayer, where: str) -> str:
    name = f"{layer.layer_name}.feedback" if layer.layer_name else "feedback"
    return (f"layer '{layer.layer_name}': rule '{layer.rule.name}' trains its feedback B, but B is "
            f"not {where}; build the optimizer over model.parameters() (B is the parameter "
            f"'{name}')")


# -- the layers -------------------------------------------------------------------------------

class FeedbackLinear(FeedbackLayer, nn.Linear):
    """nn.Linear with a learning rule; input of any shape (..., in_features).

    ``seed`` (a rule option) fixes B with ``name``, whatever the global random state.  Without
    one, the layer draws its seed (not B) from torch's global generator once, after W's
    initialisation: two layers get two Bs, and the same ``torch.manual_seed`` gives the same
    model, Bs included.  That one draw shifts every later initialisation, so a model of these
    layers does not get the Ws that the same ``torch.manual_seed`` gives a model of plain
    ``nn.Linear``; ``falign.convert`` takes no draw (its B comes from (seed, layer name), seed 0
    when none is given).  The seed used is saved as the buffer ``feedback_seed``.  The
    convolutions (``FeedbackConv1d/2d/3d``) do the same.
    """

    op = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rule: str | Rule = "fa", name: str = "", device=None, dtype=None, **options):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_feedback(get_rule(rule, **options), name)

    def forward(self, x: Tensor) -> Tensor:
        return self._feedback_forward(x, super().forward)


class _FeedbackConv(FeedbackLayer):
    """Shared by the 1/2/3-d convolutions: resolves padding (modes, 'same') to a pre-pad plus
    integer padding, so the autograd Functions see one plain convolution."""

    op = "conv"

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
        self.spec = ConvSpec(tuple(self.stride), padding, tuple(self.dilation), self.groups)

    @property
    def prepadded(self) -> bool:
        """Whether the layer pads its input before the convolution (padding modes, uneven 'same')."""
        return self._prepad is not None

    def pad(self, x: Tensor) -> Tensor:
        return x if self._prepad is None else F.pad(x, self._prepad, mode=self._pad_mode)

    def fn_input_shape(self, x: Tensor) -> tuple[int, ...]:
        # DFA on a pre-padded conv sends B e to the padded map; F.pad's backward folds it back.
        return (x.shape[0], *self.pad(x[:1]).shape[1:])

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

class FeedbackSlot(FeedbackLayer, nn.Module):
    """The feedback of one weight of a module that holds several (an LSTM's ``weight_ih_l0``
    and ``weight_hh_l0``, attention's q / k / v projections, a transposed ``Conv1D``): a child
    module with B and the step state, whose W is the parent's parameter -- a block of rows of
    it (``rows``, the packed in-projection) or its transpose (``transposed``, weights stored as
    (in, out)).  ``slot(x)`` is the linear op ``x W^T`` (no bias: the parent adds its own) with
    the rule's backward.  The parameter stays the parent's: same object, same state_dict key."""

    op = "linear"
    bias = None
    #: a recurrent weight (W_hh): its input is the previous state, along ``time_dim`` of the
    #: sequence; ``position`` is the step whose output the state under way is (see ``step``)
    recurrent = False
    time_dim = 0
    position: int | None = None

    def __init__(self, param: nn.Parameter, rule: Rule, name: str, *, rows: slice | None = None,
                 transposed: bool = False) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "_param", param)  # not registered: the parent owns it
        self._rows = rows
        self._transposed = transposed
        self._setup_feedback(rule, name)

    @property
    def param(self) -> nn.Parameter:
        return self._param

    def canonical(self, t: Tensor) -> Tensor:
        t = t.T if self._transposed else t
        return t if self._rows is None else t[self._rows]

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        return self.canonical(self._param)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return self._feedback_forward(x, lambda t: F.linear(t, self.weight))

    def step(self, x: Tensor, position: int | None = None) -> Tensor:
        """The op on one time step's state; ``position`` names the step whose output ``x`` is
        (for direct feedback through time), None for an initial state."""
        self.position = position
        try:
            return self(x)
        finally:
            self.position = None

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, rule={self.rule.name}"


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
