"""Feedback points at module outputs (rule option ``points``): Launay et al.'s placement of the
direct projection at block outputs, with backprop inside each block."""

from __future__ import annotations

import fnmatch

import torch
from torch import Tensor, nn

from ....rules import derive_seed
from ...errors import FeedbackError
from ...hardware import backward_rule
from ..base import get_pathway
from .functions import Inject
from .state import DirectLayerState


class FeedbackPoint(nn.Module):
    """A feedback point at a module's output: in training the output receives ``s B^T``
    (token-wise, as a layer input does) in place of the gradient from above (or added to it,
    ``above="keep"``), and the module's own layers learn from it by backprop.  Holds B (a
    buffer, saved, from the rule's seed and the point's name) and, in ``pathway_state``, the
    wiring."""

    op = "linear"

    def __init__(self, rule, name: str, wiring=None) -> None:
        super().__init__()
        self.rule, self.point_name = rule, name
        self._seed = derive_seed(rule.seed, f"point:{name}")
        self.pathway_state = DirectLayerState(wiring=wiring)
        self.pathway = get_pathway("direct")
        self.backward_rule = backward_rule(self, rule)
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
            self.pathway_state.wait_for_error(tuple(out.shape))
        return Inject.apply(out, self, self.pathway_state.wiring)


def attach_points(model: nn.Module, rule, wiring) -> list[FeedbackPoint]:
    """A FeedbackPoint at the output of every module whose name matches ``rule.points``: the
    point is the module's child ``falign_point`` and its hook the module's forward hook."""
    if rule.learned:
        raise FeedbackError(f"rule '{rule.name}' trains its feedback; feedback points (option "
                            "points) hold fixed B only")
    if rule.hardware is not None and rule.hardware.signal_noise is not None:
        raise FeedbackError("hardware signal_noise is keyed by a layer's optimizer steps: feedback "
                            "points (option points) do not count them; convert without points")
    points = []
    for name, module in list(model.named_modules()):
        if name and any(fnmatch.fnmatchcase(name, p) for p in rule.points):
            point = FeedbackPoint(rule, name, wiring)
            module.falign_point = point
            module.register_forward_hook(point.hook)
            points.append(point)
    if not points:
        raise FeedbackError(f"rule option points={list(rule.points)} matches no module of the model")
    return points
