"""What the direct-feedback rules (DFA and its relatives) share: where e is taken and where it
is sent.  See falign.layers.pathways.direct and the rules documentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .registry import Rule, gaussian


@dataclass
class DirectRule(Rule):
    """Options of every direct-feedback rule:

    * ``output`` -- the module whose output is e's tap ("" = the model's logits, through a
      final Softmax / LogSoftmax / Sigmoid / Tanh); e.g. the last hidden state before a
      language model's vocabulary projection (Launay et al. 2020's default);
    * ``above`` -- what a feedback point receives besides its projection: ``"cut"`` (nothing:
      DFA's "no signal passes from layer to layer", skip connections included) or ``"keep"``
      (the gradient from above too, a DFA / backprop hybrid);
    * ``points`` -- module-name patterns whose *outputs* are the feedback points, with
      backprop inside each module (Launay et al.'s "macro" placement at block outputs, or a
      few per block: "micro"); None: every converted layer's input is one;
    * ``shared`` -- one random matrix for all points (each uses its first rows), as Launay et
      al.; else one B per point, from the rule seed and the point's name;
    * ``recurrent`` -- a recurrent weight's input, the previous state: ``"none"`` (no feedback
      point: no signal through time but the exact cell-state path) or ``"step"`` (h_{t-1}
      receives the projection of the error at step t - 1).
    """

    pathway: ClassVar[str] = "direct"
    #: how a sample is weighted in the signal where the step does not say (``set_step``):
    #: "mean" -> 1 over what a mean loss averages, "sum" -> 1 (a rule may make it an option)
    reduction: ClassVar[str] = "mean"
    #: whether ``direct_signal`` reads ``weight``; False where e already carries a sample's
    #: weight and the loss scale (DFA, DKP): the step's labels are then not counted and
    #: ``weight`` is 1.0
    weighs_signal: ClassVar[bool] = True
    #: DFA's batch- and class-averaged training loops (options of ``dfa``)
    average: ClassVar[str] = "sample"
    average_step: ClassVar[str] = "mean"
    _above_choices: ClassVar[tuple[str, ...]] = ("cut", "keep")
    _recurrent_choices: ClassVar[tuple[str, ...]] = ("none", "step")

    output: str = ""
    above: str = "cut"
    points: list[str] | None = None
    shared: bool = False
    recurrent: str = "none"

    def direct_signal(self, error, targets, weight):
        """What B_i multiplies, (N, *e): a function of the error e at the tap, of the step's
        targets in e's shape (None unless ``needs_targets``) and of ``weight``, a sample's
        weight in the loss times the loss scale (e already carries both)."""
        raise NotImplementedError(f"rule '{self.name}' declares no direct_signal(error, targets, weight)")

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        return feedback
