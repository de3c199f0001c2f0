"""How well a rule's updates and signals align with backprop's, layer by layer.

For every converted layer, on one batch:

* ``update_angle`` -- degrees between the weight update the rule produced and the true
  backprop gradient of the same weights (same weights, same batch);
* ``signal_angle`` -- degrees between the signal the layer sends to its input and the true
  gradient at that input (the measure of Lance & Kieu 2026; for DFA, the injected ``B_i e``
  against backprop's signal at the same feedback point); None for a layer that sends nothing;
* ``delta_angle`` -- degrees between the error the layer *receives* (the gradient at its output,
  the pre-activation delta) under the rule and under backprop: the "delta angle" of Akrout et
  al. 2019 (0 for the output layer, whose delta is e under every rule);
* ``feedback_angle`` -- degrees between the effective B and W (BioTorch's measure; None where B
  does not have W's shape: dense conv FA, DFA);
* ``norm_ratio`` -- ||B|| / ||W|| (None likewise);
* ``sign_concordance`` -- fraction of entries with sign(B) = sign(W) (None likewise);
* ``update_sign_concordance`` -- fraction with sign(rule update) = sign(true gradient).

Through a converted network autograd returns the *rule's* gradients; the true ones come from a
second pass under :func:`falign.exact_backward`.  Neither pass changes the rules' state (it
changes only with an optimizer step), and batch-norm running statistics, parameter ``.grad``
and the RNG are left as they were.

Under several processes (``reduce`` sums a tensor over them) every measure is that of the whole
global batch: the true weight gradients are averaged like DDP averages the rule's, and the
signal angles are formed from dot products and norms summed over the processes, so N processes
record what one process records.

The measures need only the converted layers and ``exact_backward``; the training loop takes
them on its own steps through :class:`StepProbe` (``train.alignment_every``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..layers.convert import exact_backward, feedback_layers
from ..layers.scope import INPUT, capture

__all__ = ["OUT", "LayerAlignment", "Probe", "StepProbe", "angle", "capture_inputs", "compare",
           "measure_alignment", "preserved_buffers", "sign_agreement"]

LossFn = Callable[[Tensor, Tensor], Tensor]
Reduce = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass
class LayerAlignment:
    update_angle: float
    signal_angle: float | None
    delta_angle: float | None
    feedback_angle: float | None
    norm_ratio: float | None
    sign_concordance: float | None
    update_sign_concordance: float

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def angle(a: Tensor, b: Tensor, reduce: Reduce = _identity) -> float:
    """Degrees between two tensors seen as flat vectors (90 if either is zero); ``reduce`` sums
    the dot product and squared norms over processes that each hold a part of the vectors."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    dot, aa, bb = reduce(torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b)])).tolist()
    if aa == 0 or bb == 0:
        return 90.0
    cos = max(-1.0, min(1.0, dot / math.sqrt(aa * bb)))
    return math.degrees(math.acos(cos))


def sign_agreement(a: Tensor, b: Tensor) -> float:
    return float((torch.sign(a) == torch.sign(b)).double().mean())


class _Keys(Mapping):
    """A captured store under :func:`capture_inputs`' keys: the input under ``name``, the
    output under ``name + OUT``."""

    def __init__(self, store: dict[str, Tensor]) -> None:
        self.store = store

    def _key(self, k: str) -> str:
        return k.removesuffix(INPUT) if k.endswith(INPUT) else k + OUT

    def __iter__(self):
        return (self._key(k) for k in self.store)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: str) -> Tensor:
        return self.store[key.removesuffix(OUT) if key.endswith(OUT) else key + INPUT]


@contextlib.contextmanager
def capture_inputs(model: nn.Module) -> Iterator[Mapping[str, Tensor]]:
    """Record, for each converted layer ``name``, a handle on its input whose ``.grad`` after
    backward is the signal *this layer* sent there (an identity view taken just for it, so a
    skip connection's share is not mixed in), and under ``name + OUT`` its output, whose
    ``.grad`` is the error the layer received.  (:func:`falign.layers.scope.capture` with
    ``inputs=True, retain_grad=True`` under these keys.)"""
    with capture(model, dict(feedback_layers(model)), what="alignment", inputs=True, retain_grad=True,
                 once=False) as store:
        yield _Keys(store)


#: suffix of a layer output's key in :func:`capture_inputs`
OUT = "\x00out"


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Batch-norm running statistics (and every other buffer) restored on exit."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers() if b is not None}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved and b is not None and b.shape == saved[n].shape:
                    b.copy_(saved[n])


def _pass(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, *, exact: bool,
          rng: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(weight gradients, input signals) of one forward/backward, .grad untouched."""
    layers = feedback_layers(model)
    if not layers:
        return {}, {}
    ctx = exact_backward(model) if exact else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), preserved_buffers(model), ctx, capture_inputs(model) as inputs:
        if rng is not None:
            torch.set_rng_state(rng)
        loss = loss_fn(model(x), y)
        names = [n for n, _ in layers]
        captured = [k for k in inputs]
        wanted = [layer.param for _, layer in layers] + [inputs[k] for k in captured]
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    weight_grads = {n: layer.canonical(g) for (n, layer), g in zip(layers, grads[: len(names)], strict=True)
                    if g is not None}
    signals = {k: g for k, g in zip(captured, grads[len(names):], strict=True) if g is not None}
    return weight_grads, signals


def compare(model: nn.Module, rule_grads: dict[str, Tensor], rule_signals: dict[str, Tensor],
            true_grads: dict[str, Tensor], true_signals: dict[str, Tensor],
            reduce: Reduce = _identity) -> dict[str, LayerAlignment]:
    """The measures from both passes.  The weight gradients are whole (already averaged over
    processes); the signals are this process's samples, combined through ``reduce``."""
    out = {}
    for name, layer in feedback_layers(model):
        if name not in rule_grads or name not in true_grads:
            continue
        b = layer.effective_feedback()
        b = None if b is None else b.detach()
        same_shape = b is not None and b.shape == layer.weight.shape
        w = layer.weight.detach()
        sig = delta = None
        if name in rule_signals and name in true_signals:
            sig = angle(rule_signals[name], true_signals[name], reduce)
        if name + OUT in rule_signals and name + OUT in true_signals:
            delta = angle(rule_signals[name + OUT], true_signals[name + OUT], reduce)
        out[name] = LayerAlignment(
            update_angle=angle(rule_grads[name], true_grads[name]),
            signal_angle=sig,
            delta_angle=delta,
            feedback_angle=angle(b, w) if same_shape else None,
            norm_ratio=float(torch.linalg.vector_norm(b.double()) / torch.linalg.vector_norm(w.double()))
            if same_shape else None,
            sign_concordance=sign_agreement(b, w) if same_shape else None,
            update_sign_concordance=sign_agreement(rule_grads[name], true_grads[name]),
        )
    return out


def measure_alignment(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, *, world: int = 1,
                      reduce: Reduce = _identity) -> dict[str, LayerAlignment]:
    """All the measures on one batch: a rule pass and a true-backprop pass (same RNG state, so
    dropout masks match), in the model's current train/eval mode.  ``.grad`` is not read or
    written, so it may be called between a backward and the optimizer step whatever ``.grad``
    holds (a sum of accumulated micro-batches).  Under several processes ``loss_fn`` is this
    process's share of the loss, ``world`` the number of processes and ``reduce`` a sum over
    them (every process calls it): the measures are then those of the whole global batch, as
    :class:`StepProbe`'s."""
    rng = torch.get_rng_state()
    rule_grads, rule_signals = _pass(model, x, y, loss_fn, exact=False, rng=rng)
    true_grads, true_signals = _pass(model, x, y, loss_fn, exact=True, rng=rng)
    if world > 1:  # the weight gradients averaged like DDP averages them
        rule_grads = {n: reduce(g) / world for n, g in rule_grads.items()}
        true_grads = {n: reduce(g) / world for n, g in true_grads.items()}
    return compare(model, rule_grads, rule_signals, true_grads, true_signals, reduce)


class Probe:
    """A side measurement of training steps, handed to ``train(cfg, out, probes=[...])``.

    The loop calls ``bind`` once, when the model exists; then, on every training step for which
    ``due(step)`` is true, runs the step's forward and backward inside ``capture()`` and calls
    ``finish(x, y, loss_fn)`` before the optimizer step.  What ``finish`` returns ({layer name:
    :class:`LayerAlignment`}) is appended to the run's alignment records; None records nothing.
    Subclass it and override what the measurement needs (``due`` at least)."""

    def bind(self, model: nn.Module, *, world: int = 1, reduce: Reduce = _identity) -> None:
        """The model being trained (not a DDP wrapper), the number of processes and a sum over them."""

    def due(self, step: int) -> bool:
        """Whether the probe measures training step ``step`` (counted from 0)."""
        return False

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Around the step's forward and backward."""
        yield

    def finish(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> Mapping[str, LayerAlignment] | None:
        """After the step's backward, before the optimizer step."""
        return None


class StepProbe(Probe):
    """Alignment measured on a training step at the cost of one extra pass.

        probe = StepProbe(model, every=10)
        if probe.due(step):
            with probe.capture():                # the ordinary training forward + backward
                loss_fn(model(x), y).backward()
            stats = probe.finish(x, y, loss_fn)  # before optimizer.step()

    The rule's gradients and signals are those the step itself computed (read from ``.grad``);
    one exact pass with the same RNG state gives the true ones.  Under several processes
    ``loss_fn`` is this process's share of the loss (whose gradients DDP averages), ``world``
    the number of processes and ``reduce`` a sum over them: the true gradients are then
    averaged like the rule's, and the records equal one process's.  Given to ``train()``
    without a model (``train(cfg, out, probes=[StepProbe(every=5)])``), the loop binds it to
    the model it trains; ``train.alignment_every`` makes one such probe.
    """

    def __init__(self, model: nn.Module | None = None, *, every: int = 1, world: int = 1,
                 reduce: Reduce = _identity) -> None:
        self.model = model
        self.every = every
        self.world = world
        self.reduce = reduce
        self._inputs: dict[str, Tensor] = {}
        self._rng: Tensor | None = None

    def bind(self, model: nn.Module, *, world: int = 1, reduce: Reduce = _identity) -> None:
        self.model, self.world, self.reduce = model, world, reduce

    def due(self, step: int) -> bool:
        """Whether the probe measures training step ``step`` (counted from 0): every ``every``-th."""
        return self.every > 0 and step % self.every == 0

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        if self.model is None:
            raise ValueError("StepProbe: no model; give one, or hand the probe to train()")
        self._rng = torch.get_rng_state()
        with capture_inputs(self.model) as inputs:
            yield
        self._inputs = inputs

    def finish(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> dict[str, LayerAlignment]:
        rule_grads = {n: layer.canonical(layer.param.grad) for n, layer in feedback_layers(self.model)
                      if layer.param.grad is not None}
        rule_signals = {n: v.grad for n, v in self._inputs.items() if v.grad is not None}
        true_grads, true_signals = _pass(self.model, x, y, loss_fn, exact=True, rng=self._rng)
        if self.world > 1:
            true_grads = {n: self.reduce(g) / self.world for n, g in true_grads.items()}
        self._inputs = {}
        return compare(self.model, rule_grads, rule_signals, true_grads, true_signals, self.reduce)
