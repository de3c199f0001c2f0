"""The direct pathway's state: per converted layer (``layer.pathway_state``) and per step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .signal import IGNORE_INDEX, labels_counted, one_hot_targets


@dataclass
class StepState:
    """What the training step under way gave besides its input (``set_step``)."""

    #: labels (N,) / (N, T) or float targets (N, K); None: not given
    targets: Tensor | None = None
    #: the wiring's forward count when they were given (stale after the next forward)
    targets_at: int = -1
    #: a sample's weight in the loss (1/N for a mean); None: from the rule's ``reduction``
    sample_weight: float | None = None
    #: the factor the loss was multiplied by before backward (a GradScaler's)
    loss_scale: float = 1.0
    #: the class labels that count (``targets != IGNORE_INDEX``) and their number, once
    #: counted (``labels``)
    keep: Tensor | None = field(default=None, repr=False, compare=False)
    kept: int | None = field(default=None, repr=False, compare=False)
    #: the targets in e's shape and dtype, once made (``targets_like``)
    hot: Tensor | None = field(default=None, repr=False, compare=False)

    def labels(self, error: Tensor) -> int:
        """What a mean loss averages over this step (``labels_counted``): the given class
        labels are counted once, however many layers ask."""
        targets = self.targets
        if self.kept is None and targets is not None and not targets.is_floating_point():
            self.keep = targets != IGNORE_INDEX
            self.kept = int(torch.count_nonzero(self.keep))
        return labels_counted(targets, error, self.kept)

    def targets_like(self, error: Tensor) -> Tensor:
        """The step's targets in e's shape and dtype (``one_hot_targets``), made once a step
        however many layers project them; with the labels counted, from their mask (no mask
        at all where every label counts)."""
        hot = self.hot
        if hot is None or hot.shape != error.shape or hot.dtype != error.dtype or hot.device != error.device:
            every = self.kept is not None and self.kept == self.targets.numel()
            hot = self.hot = one_hot_targets(self.targets, error, self.keep, every=every)
        return hot


@dataclass
class DirectLayerState:
    """What the direct pathway keeps for one converted layer (``layer.pathway_state``)."""

    #: the model's wiring (set when the model is converted)
    wiring: Any = None
    #: the (batch-included) input shape whose B_i waits for e's shape
    pending_input_shape: tuple[int, ...] | None = None
    #: the number of entries of one sample's e, once B_i is made (None: read as B_i's last dim)
    error_numel: int | None = None
    #: a recurrent weight's slot (its input is the previous state, along ``time_dim``); set
    #: when the model is wired, from the slot (``FeedbackSlot.recurrent``)
    recurrent: bool = False
    time_dim: int = 0
    #: the wiring's record the layer's Function adds its signal to, for the call under way
    key: int | None = None

    def wait_for_error(self, input_shape: tuple[int, ...]) -> None:
        """B_i's shape waits for e's: keep the input's and tell the wiring, which makes B_i at
        the tap (``DirectWiring._make_feedback``) only while something waits."""
        self.pending_input_shape = input_shape
        self.wiring.waiting = True


def timing(layer) -> tuple[bool, int, int | None]:
    """(recurrent, time_dim, position) of a layer: a recurrent weight's slot says which step its
    input belongs to (``FeedbackSlot.position``); every other layer sees whole sequences."""
    state = layer.pathway_state
    return state.recurrent, state.time_dim, layer.position if state.recurrent else None
