"""The one place a layer's feedback meets the hardware model (``falign.rules.hardware``).

A converted layer hands its pathway's Functions ``layer.backward_rule``: the rule itself when
the rule has no hardware (the ideal feedback path, the code path of every rule without it), or
a :class:`HardwareRule` that answers ``matrix(W, B)`` with B as the device holds it and
``direct_signal`` with the device's error; with ``optical`` the device's projection is the
simulated optical co-processor (its transmission matrix drawn once per layer from the seed) and
``matrix`` the linear map it realises.  The transformed B is made once per B the rule
gives: once when B is fixed (drawn once), once per optimizer step when B follows W or is
trained, and never in a backward that finds it made; ``effective_feedback()`` reads the same B.
Each pathway says which way its B's rows and columns run (``Pathway.receiving_view``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..rules.hardware import (
    Hardware,
    hardware_from,
    noise_key,
    optical_matrix,
    optical_project,
    read_noise,
    ternarize,
    transmission_matrix,
)


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
        #: the optical device's (key, T_e, a) as last drawn (``optical``)
        self._optics: tuple | None = None
        if hardware.optical is not None:
            self.device_projection = self.optical_projection
        #: where this process's samples sit in the global batch: sample n is global index
        #: sample_offset + sample_stride x n (``set_step(sample_offset=..., sample_stride=...)``)
        self.sample_offset, self.sample_stride = 0, 1
        self._noise_step, self._calls = -1, 0

    def __getattr__(self, name: str) -> Any:  # everything else is the rule's
        if name.startswith("__") or name in ("owner", "rule", "hardware", "_key", "_value", "_stored",
                                              "device_projection", "sample_offset", "sample_stride",
                                              "_noise_step", "_calls", "_optics"):
            raise AttributeError(name)
        return getattr(self.rule, name)

    def matrix(self, weight: Tensor, feedback: Tensor | None) -> Tensor:
        if self.hardware.optical is not None and feedback is not None:
            pathway = self.owner.pathway
            r = pathway.receiving_view(self.owner, feedback)  # (layer input, E)
            t_e, a = self._transmission(r.shape[0], r.shape[1])
            p = optical_matrix(t_e, a).to(feedback.device, feedback.dtype)
            return pathway.from_receiving_view(self.owner, p, feedback)
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
        return read_noise(signal, self.hardware.signal_noise, key, self.sample_offset, self.sample_stride)

    @property
    def weighs_signal(self) -> bool:
        """The device's error levels are scaled by a sample's weight, like sign-DFA's."""
        return self.hardware.error_levels is not None or self.rule.weighs_signal

    def _transmission(self, out_features: int, inputs: int) -> tuple[Tensor, Tensor]:
        """(T_e, a): the layer's transmission matrix on the error's pixels (out_features x
        inputs) and the reference field a = T_r 1 (out_features,), complex128 on the CPU, drawn
        from the layer's seed and scaled so that P's entries have the std the rule draws B_i with
        (its ``scale``, or the Xavier std of (out_features, inputs))."""
        key = (self.owner._seed, out_features, inputs)
        if self._optics is None or self._optics[0] != key:
            std = self.rule.resolved_scale(out_features, inputs)
            anchor = self.hardware.optical.anchor or inputs
            t = transmission_matrix(out_features, inputs + anchor, std, self.owner._seed)
            self._optics = (key, t[:, :inputs], t[:, inputs:].sum(1))
        return self._optics[1], self._optics[2]

    def optical_projection(self, e: Tensor, point: str, out_features: int) -> Tensor:
        """The simulated optical co-processor's signal (rows, out_features) for e (rows, E): each
        row ternarised (exactly, when it already is), projected through the camera and scaled
        back by the row's max |e|."""
        t, c = ternarize(e, self.hardware.threshold)
        t_e, a = self._transmission(out_features, e.shape[1])
        complex_dtype = torch.complex128 if e.dtype == torch.float64 else torch.complex64
        y = optical_project(t.to(e.device), t_e.to(e.device, complex_dtype), a.to(e.device, complex_dtype),
                            self.hardware.optical.bits)
        return (c * y.to(e.dtype)).to(e.dtype)

    def direct_signal(self, error: Tensor, targets: Tensor | None, weight: float) -> Tensor:
        if self.hardware.error_levels == 2:
            return torch.sign(error) * weight  # sign-DFA's signal (Frenkel et al. 2021)
        if self.hardware.error_levels == 3:  # the ternary error (Launay et al. 2020)
            return ternarize(error, self.hardware.threshold)[0] * weight
        return self.rule.direct_signal(error, targets, weight)


def _version(t: Tensor | None) -> tuple:
    return (None,) if t is None else (t.data_ptr(), t._version, tuple(t.shape))


def set_sample_index(model: nn.Module, offset: int, stride: int = 1) -> None:
    """Where this process's samples sit in the global batch, for read noise keyed by sample:
    sample n of its batch is global index ``offset + stride x n``."""
    offset, stride = _index(offset, "sample_offset", 0), _index(stride, "sample_stride", 1)
    for m in model.modules():
        rule = getattr(m, "backward_rule", None)
        if type(rule) is HardwareRule:
            rule.sample_offset, rule.sample_stride = offset, stride


def _index(value: Any, name: str, least: int) -> int:
    """``value`` as an int >= ``least`` (an integer tensor or numpy integer too), else one line."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= least
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
    return int(value)


def backward_rule(owner: Any, rule: Any) -> Any:
    """What ``owner``'s Functions call for B and the signal: ``rule``, or its hardware view."""
    hardware = hardware_from(rule.hardware)
    if hardware is None or not hardware.keys():
        return rule
    return HardwareRule(owner, rule, hardware)
