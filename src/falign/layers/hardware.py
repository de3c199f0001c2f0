"""The one place a layer's feedback meets the hardware model (``falign.rules.hardware``).

A converted layer hands its pathway's Functions ``layer.backward_rule``: the rule itself when
the rule has no hardware (the ideal feedback path, the code path of every rule without it), or
a :class:`HardwareRule` that answers ``matrix(W, B)`` with B as the device holds it and
``direct_signal`` with the device's error.  The transformed B is made once per B the rule
gives: once when B is fixed (drawn once), once per optimizer step when B follows W or is
trained, and never in a backward that finds it made; ``effective_feedback()`` reads the same B.
Each pathway says which way its B's rows and columns run (``Pathway.receiving_view``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..rules.hardware import Hardware, hardware_from, noise_key, read_noise


class HardwareRule:
    """A rule seen through a device's feedback path, for one layer (or feedback point)."""

    def __init__(self, owner: Any, rule: Any, hardware: Hardware) -> None:
        self.owner, self.rule, self.hardware = owner, rule, hardware
        self._key: tuple | None = None
        self._value: Tensor | None = None
        #: whether the rule's B is its stored part as it is (None: not asked yet)
        self._stored: bool | None = None
        #: the device's e -> signal, in place of falign's product (direct rules), or None
        self.device_projection = hardware.projection_function()
        #: the global index of this process's first sample (``set_step(sample_offset=...)``)
        self.sample_offset = 0
        self._noise_step, self._calls = -1, 0

    def __getattr__(self, name: str) -> Any:  # everything else is the rule's
        if name.startswith("__") or name in ("owner", "rule", "hardware", "_key", "_value", "_stored",
                                              "device_projection", "sample_offset", "_noise_step",
                                              "_calls"):
            raise AttributeError(name)
        return getattr(self.rule, name)

    def matrix(self, weight: Tensor, feedback: Tensor | None) -> Tensor:
        if not self.hardware.transforms_b:
            return self.rule.matrix(weight, feedback)
        if self._value is not None and self._key == self._key_of(weight, feedback):
            return self._value  # the rule's B is not even made again
        b = self.rule.matrix(weight, feedback)
        self._stored = b is feedback
        with torch.no_grad():
            self._value = self.owner.pathway.transform_feedback(self.owner, b.detach(), self.hardware)
        self._key = self._key_of(weight, feedback)
        return self._value

    def _key_of(self, weight: Tensor, feedback: Tensor | None) -> tuple:
        """What B depends on: a stored B changes only when it is replaced, B made from W at
        every step W takes."""
        if self._stored:
            return (_version(feedback),)
        return (_version(feedback), _version(weight))

    @property
    def noisy(self) -> bool:
        return self.hardware.signal_noise is not None

    def read_noise(self, signal: Tensor) -> Tensor:
        """The signal a layer input receives with the device's read noise (fresh each backward
        call of each step; keyed by the layer's seed, the step, the call, each sample's index)."""
        step = self.owner._step
        if step != self._noise_step:
            self._noise_step, self._calls = step, 0
        key = noise_key(self.owner._seed, step, self._calls)
        self._calls += 1
        return read_noise(signal, self.hardware.signal_noise, key, self.sample_offset)

    @property
    def weighs_signal(self) -> bool:
        """The device's error levels are scaled by a sample's weight, like sign-DFA's."""
        return self.hardware.error_levels is not None or self.rule.weighs_signal

    def direct_signal(self, error: Tensor, targets: Tensor | None, weight: float) -> Tensor:
        if self.hardware.error_levels == 2:
            return torch.sign(error) * weight  # sign-DFA's signal (Frenkel et al. 2021)
        return self.rule.direct_signal(error, targets, weight)


def _version(t: Tensor | None) -> tuple:
    return (None,) if t is None else (t.data_ptr(), t._version, tuple(t.shape))


def set_sample_offset(model: nn.Module, offset: int) -> None:
    """The global index of this process's first sample, for read noise keyed by sample."""
    for m in model.modules():
        rule = getattr(m, "backward_rule", None)
        if type(rule) is HardwareRule:
            rule.sample_offset = int(offset)


def backward_rule(owner: Any, rule: Any) -> Any:
    """What ``owner``'s Functions call for B and the signal: ``rule``, or its hardware view."""
    hardware = hardware_from(rule.hardware)
    if hardware is None or not hardware.keys():
        return rule
    return HardwareRule(owner, rule, hardware)
