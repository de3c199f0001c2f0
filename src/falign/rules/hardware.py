"""A model of the feedback path a device really has: few-bit, sparse, low-rank, varying B.

Analog in-memory arrays, neuromorphic chips and optical co-processors can compute a fixed
random projection cheaply but cannot copy W^T, and they compute it with few bits, sparse or
low-rank connectivity and device-to-device variation.  :class:`Hardware` describes such a
feedback path; every key is off by default.  It is a rule option (``falign.convert(model,
"dfa", hardware={...})``, ``rule: {name: dfa, hardware: {...}}`` in a config), acts on the
feedback only (the forward and the weight-gradient formula are untouched), is saved with the
rule in checkpoints and drawn from the layer's seed.

The transforms of B act on the *feedback matrix* R (receiving units x sending units): for the
kernel and dense pathways the transpose of B's (out, in) matrix (a convolution's B as the
(C_out, C_in k k) matrix), for the direct pathway B_i as (layer input, e).  A receiving unit is
a neuron that gets feedback; RMS(R) is the root mean square of R's entries.  In this order:

* ``b_rank = r`` -- R_r = (R V^T) V, V in R^{r x n} with orthonormal rows drawn from the seed
  (the base B seen through r fixed directions: for a random B, U = R V^T is itself Gaussian,
  so R_r = U V is a random rank-r matrix), rescaled to RMS(R);
* ``b_density = d`` -- a fixed mask from the seed keeps, in every receiving unit's row,
  max(1, round(d x n)) entries, rescaled to RMS(R) (Crafton et al. 2019's sparse feedback: no
  neuron goes without an error);
* ``b_levels = L`` (``b_clip = c``, default 2.5) -- R quantised to L uniform levels over
  [-c RMS(R), +c RMS(R)] (odd L includes 0), rescaled to RMS(R); L = 2 is sign(R) mean|R|;
* ``b_noise = s`` -- fixed device-to-device variation R (1 + s xi), xi ~ N(0, 1) drawn once
  from the seed.

``signal_noise = s`` is read noise: each sample's feedback signal (what a layer input
receives) gets fresh Gaussian noise of std s x that sample's signal RMS, keyed by (the layer's
seed, the optimizer step, the backward call of the step, the sample's index in the global
batch), so a run is reproducible and N processes draw what one process draws.  A process
holding part of the global batch says where its samples sit there: sample n of its batch is
global index offset + stride x n (``falign.set_step(model, sample_offset=, sample_stride=)``;
a contiguous share has stride 1, rank r of w processes reading every w-th sample offset r and
stride w).

For direct rules, ``error_levels`` quantises the error e before the projection: 2 gives
sign(e) with a sample's weight in the loss, the signal of sign-DFA (Frenkel, Lefebvre & Bol
2021), so ``dfa`` with ``error_levels: 2`` is ``sdfa`` bit for bit; 3 gives the ternary error
t = sign(e) [|e| > tau max|e|] (``error_threshold = tau``, default 0.1, the max over each
sample's entries) with the same weight, the ternarised error LightOn's optical DFA projects
(Launay et al. 2020); tau -> 0 is ``error_levels: 2``.  ``projection`` puts the
device in the loop: a function ``projection(e, point, out_features) -> signal`` (e of shape
(N, E), the signal (N, out_features), ``point`` the feedback point's name) called once per
feedback point per backward in place of falign's product ``e B_i^T`` -- an optical processor,
an analog tile, or a model of one (Launay et al. 2020 trained with their optical processor's
projection this way).  It is named ``"module:function"`` in configs and checkpoints; a bare
callable works from Python only and cannot be saved.

``optical`` (direct rules) simulates the optical random projection of Launay et al. 2020
("Light-in-the-loop", arXiv 2006.01475), LightOn's OPU in place of falign's product: a
transmission matrix T (out_features x (E + anchor)) of i.i.d. complex Gaussian entries drawn from
the layer's seed; binary input (a digital micromirror device): the ternary signal t is shown as
two binary frames t+ = [t > 0] and t- = [t < 0]; intensity detection |T x|^2 on a camera of
``bits`` bits (default 8; None: exact intensities); a fixed block of ``anchor`` reference
pixels, always on, whose field a = T_r 1 interferes with the signal's:

    y = (|T_e t+ + a|^2 - |T_e t+|^2 - |T_e t- + a|^2 + |T_e t-|^2) / (2 |a|)
      = Re(conj(a) / |a| (T_e t))                                 (exact intensities)

so the device computes the real, linear projection t P^T with P = Re(diag(conj(a)/|a|) T_e), a
matrix of i.i.d. real Gaussian entries (a row phase of T leaves its distribution unchanged, Gupta
et al. 2019).  T is scaled so P's entries have the std the rule draws B_i with, so a learning
rate carries over.  The
signal each input receives is c y, c each row's max|s| taken off before the device (``ternarize``):
with ``error_levels`` the signal is already ternary and the encoding exact; without it, e itself
is ternarised with ``error_threshold``.  ``effective_feedback()`` returns P, the linear map the
device realises before the camera's rounding.

For rules whose B is learned (kp, wm, dkp) the learned B stays full precision and the backward
reads the transformed B, as a device holding a digital copy of the learned weights would.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import FalignError
from ..registry import Registry
from ._seeds import text_seed

__all__ = ["B_KEYS", "DIRECT_KEYS", "ERROR_THRESHOLD", "Hardware", "HardwareError", "Optical",
           "hardware_from"]


class HardwareError(FalignError, ValueError):
    """An unknown hardware key, a value out of range, or a key the rule cannot honour; one line."""


@dataclass(frozen=True)
class Optical:
    """The simulated optical co-processor of the hardware key ``optical`` (module docstring):
    ``bits`` of the camera (None: exact intensities), ``anchor`` reference pixels (None: as many
    as the error has entries)."""

    bits: int | None = 8
    anchor: int | None = None

    def __post_init__(self) -> None:
        for key, what in (("bits", "an integer in [1, 32]"), ("anchor", "an integer >= 1")):
            v = getattr(self, key)
            top = 32 if key == "bits" else math.inf
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top):
                raise HardwareError(f"hardware optical {key}={v!r}: must be {what} or null")

    def to_value(self) -> Any:
        """What a config holds: ``true``, or the keys set away from their defaults."""
        default = Optical()
        keys = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}
        return keys or True


def optical_from(value: Any) -> Optical | None:
    """An :class:`Optical` from ``true`` / ``false`` / a mapping of its keys / an instance."""
    if value is None or value is False:
        return None
    if value is True:
        return Optical()
    if isinstance(value, Optical):
        return value
    if not isinstance(value, dict):
        raise HardwareError(f"hardware optical={value!r}: must be true or a mapping of its keys "
                            "(bits, anchor)")
    _check_keys(Optical, value, "hardware optical")
    return Optical(**value)


def _check_keys(cls: type, value: dict, where: str) -> None:
    """Refuse a key ``cls`` has no field for, naming the nearest one."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise HardwareError(f"{where}: unknown key '{key}'{hint} (keys: {', '.join(known)})")


#: the keys that transform B (refused on backprop, whose B is W)
B_KEYS = ("b_rank", "b_density", "b_levels", "b_clip", "b_noise")
#: the keys only rules that project the output error (the direct pathway) honour
DIRECT_KEYS = ("error_levels", "error_threshold", "projection", "optical")
#: ``error_threshold`` where it is not given: a ternary entry is nonzero where |e| > 0.1 max|e|
ERROR_THRESHOLD = 0.1


@dataclass(frozen=True)
class Hardware:
    """The feedback path a device has (see the module docstring); None / default = ideal."""

    b_rank: int | None = None
    b_density: float | None = None
    b_levels: int | None = None
    b_clip: float = 2.5
    b_noise: float | None = None
    signal_noise: float | None = None
    error_levels: int | None = None
    #: tau of the ternary error (``error_levels: 3``), a fraction of each sample's max |e|
    error_threshold: float | None = None
    #: ``"module:function"`` (or, from Python only, a callable): the device's e -> signal
    projection: Any = None
    #: the simulated optical co-processor (``true`` or ``{bits, anchor}``), or None
    optical: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "optical", optical_from(self.optical))

        def check(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise HardwareError(f"hardware {key}={getattr(self, key)!r}: {what}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.b_rank is not None:
            check(is_int(self.b_rank) and self.b_rank >= 1, "b_rank", "must be an integer >= 1")
        if self.b_density is not None:
            check(is_num(self.b_density) and 0 < self.b_density <= 1, "b_density", "must be in (0, 1]")
        if self.b_levels is not None:
            check(is_int(self.b_levels) and self.b_levels >= 2, "b_levels", "must be an integer >= 2")
        check(is_num(self.b_clip) and self.b_clip > 0, "b_clip", "must be a positive number")
        if self.b_noise is not None:
            check(is_num(self.b_noise) and self.b_noise >= 0, "b_noise", "must be a number >= 0")
        if self.signal_noise is not None:
            check(is_num(self.signal_noise) and self.signal_noise >= 0, "signal_noise",
                  "must be a number >= 0")
        if self.error_levels is not None:
            check(is_int(self.error_levels) and self.error_levels in (2, 3), "error_levels",
                  "must be 2 (sign(e), sign-DFA's signal) or 3 (ternary e, with error_threshold)")
        if self.error_threshold is not None:
            check(is_num(self.error_threshold) and 0 < self.error_threshold < 1, "error_threshold",
                  "must be in (0, 1), a fraction of each sample's max |e|")
            check(self.error_levels == 3 or (self.optical is not None and self.error_levels is None),
                  "error_threshold", "sets the ternary error's threshold: give it with "
                  "error_levels: 3 (or optical)")
        if self.projection is not None:
            check(callable(self.projection) or (isinstance(self.projection, str) and ":" in self.projection),
                  "projection", "must be 'module:function' (or, from Python, a callable)")
        if self.optical is not None:
            taken = [k for k in self.keys() if k in B_KEYS or k == "projection"]
            if taken:
                raise HardwareError(f"hardware optical draws its own transmission matrix in place of "
                                    f"B and of a projection: drop {', '.join(taken)}")

    # -- what is on -------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """tau of the ternary error: ``error_threshold``, or :data:`ERROR_THRESHOLD`."""
        return ERROR_THRESHOLD if self.error_threshold is None else self.error_threshold

    @property
    def transforms_b(self) -> bool:
        return any(v is not None for v in (self.b_rank, self.b_density, self.b_levels, self.b_noise))

    def keys(self) -> list[str]:
        """The keys set away from their defaults."""
        default = Hardware()
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)]

    def to_dict(self) -> dict[str, Any]:
        """The keys set (what configs and checkpoints hold); a projection given as a callable
        appears by its import path, which a checkpoint cannot load back unless it is one."""
        out = {k: getattr(self, k) for k in self.keys()}
        if "optical" in out:
            out["optical"] = out["optical"].to_value()
        if callable(out.get("projection")):
            f = out["projection"]
            out["projection"] = f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', repr(f))}"
        return out

    def projection_function(self) -> Any:
        """The projection as a callable (imported from its ``module:function`` name), or None."""
        if self.projection is None or callable(self.projection):
            return self.projection
        obj = Registry("hardware projection", HardwareError).resolve(self.projection)
        if not callable(obj):
            raise HardwareError(f"hardware projection '{self.projection}' is not a function")
        return obj

    # -- the transforms -----------------------------------------------------------------------
    def transform(self, r: Tensor, seed: int) -> Tensor:
        """R (receiving x sending) as the device holds it: rank, density, levels, variation,
        in that order; the random parts are drawn from ``seed`` alone."""
        out = r
        if self.b_rank is not None:
            out = low_rank(out, self.b_rank, _seed(seed, "rank"))
        if self.b_density is not None:
            out = sparsify(out, self.b_density, _seed(seed, "density"))
        if self.b_levels is not None:
            out = quantize(out, self.b_levels, self.b_clip)
        if self.b_noise is not None:
            out = vary(out, self.b_noise, _seed(seed, "noise"))
        return out


def ternarize(s: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(t, c), s (N, ...) row by row: t = sign(s) [|s| > threshold c] in {-1, 0, +1} and
    c (N, 1) = max|s| over the row's entries.  A row already on {-c, 0, +c} comes back as it is
    (t = s / c): the ternary error of Launay et al. 2020's optical DFA."""
    flat = s.reshape(s.shape[0], -1)
    c = flat.abs().amax(1, keepdim=True)
    t = torch.sign(flat) * (flat.abs() > threshold * c).to(flat.dtype)
    return t.reshape(s.shape), c


def transmission_matrix(out_features: int, inputs: int, std: float, seed: int) -> Tensor:
    """T (out_features x inputs), i.i.d. std (a + ib), a, b ~ N(0, 1), complex128, fixed by the
    layer's ``seed``: Re of any row phase of T has entries N(0, std^2)."""
    gen = torch.Generator().manual_seed(_seed(seed, "optical"))
    z = torch.randn((2, out_features, inputs), generator=gen, dtype=torch.float64)
    return torch.complex(z[0], z[1]) * std


def optical_matrix(t_e: Tensor, a: Tensor) -> Tensor:
    """P = Re(diag(conj(a) / |a|) T_e) (out_features x E): the linear map
    :func:`optical_project` realises with exact intensities."""
    return (a.conj() / a.abs()).unsqueeze(1).mul(t_e).real


def camera(frames: Tensor, full_scale: Tensor, bits: int | None) -> Tensor:
    """Intensities as a ``bits``-bit camera reads them: 2^bits uniform levels 0 .. full_scale
    (a frame set's exposure), rounded to the nearest; None: as they are."""
    if bits is None:
        return frames
    top = 2 ** bits - 1
    step = full_scale / top
    q = torch.round(torch.where(step > 0, frames / step, torch.zeros_like(frames)).clamp(0, top))
    return q * step


def optical_project(t: Tensor, t_e: Tensor, a: Tensor, bits: int | None) -> Tensor:
    """The projection (N, out_features) of ternary rows t (N, E) recovered from camera frames:
    t+ and t- shown with and without the reference field ``a`` (out_features,), one exposure per
    row (its brightest pixel, the reference frame |a|^2 included):
    y = (I(t+ + r) - I(t+) - I(t- + r) + I(t-)) / (2 sqrt(I(r)))."""
    pos, neg = (t > 0).to(t_e.dtype), (t < 0).to(t_e.dtype)
    f_pos, f_neg = pos @ t_e.T, neg @ t_e.T  # (N, out_features) fields
    ref = a.unsqueeze(0).expand_as(f_pos)
    frames = torch.stack([(f_pos + ref).abs() ** 2, f_pos.abs() ** 2, (f_neg + ref).abs() ** 2,
                          f_neg.abs() ** 2, ref.abs() ** 2])  # (5, N, out_features)
    full = frames.amax(dim=(0, 2), keepdim=True)  # each row's exposure
    i_pos_r, i_pos, i_neg_r, i_neg, i_r = camera(frames, full, bits)
    amp = i_r.sqrt()
    y = (i_pos_r - i_pos - i_neg_r + i_neg) / (2 * torch.where(amp > 0, amp, torch.ones_like(amp)))
    return torch.where(amp > 0, y, torch.zeros_like(y))


def read_noise(signal: Tensor, sigma: float, key: int, offset: int = 0, stride: int = 1) -> Tensor:
    """``signal`` (N, ...) plus Gaussian noise of std ``sigma`` x each sample's RMS; sample n's
    noise is fixed by ``key`` and its global index ``offset + stride x n`` alone (a draw of the
    rows up to the last: the rows it skips belong to other processes), whatever the batch's
    split: a contiguous share (stride 1) or an interleaved one (rank r of w: offset r, stride w)."""
    rows = signal.shape[0]
    numel = signal[0].numel()
    gen = torch.Generator().manual_seed(key)
    drawn = offset + stride * (rows - 1) + 1  # (N, 2, numel) kept of (drawn, 2, numel)
    u = torch.rand((drawn, 2, numel), generator=gen, dtype=torch.float64)[offset::stride]
    z = torch.sqrt(-2 * torch.log1p(-u[:, 0])) * torch.cos(2 * math.pi * u[:, 1])  # Box-Muller
    flat = signal.reshape(rows, -1)
    rms = flat.double().pow(2).mean(1, keepdim=True).sqrt()
    return (flat + (sigma * rms * z.to(rms.device)).to(flat.dtype)).reshape(signal.shape)


def noise_key(seed: int, step: int, call: int) -> int:
    """The read noise's key of a layer's ``call``-th backward of optimizer step ``step``."""
    return _seed(seed, f"signal:{step}:{call}")


def hardware_from(value: Any, where: str = "rule option hardware") -> Hardware | None:
    """A :class:`Hardware` from a mapping of keys (a config's), an instance, or None; an unknown
    key names the nearest known one."""
    if value is None or isinstance(value, Hardware):
        return value
    if not isinstance(value, dict):
        raise HardwareError(f"{where} must be a mapping of hardware keys, not {type(value).__name__}")
    _check_keys(Hardware, value, where)
    return Hardware(**value)


def _seed(seed: int, what: str) -> int:
    return text_seed(f"falign:hardware:{seed}:{what}")


def _rms(t: Tensor) -> Tensor:
    return t.pow(2).mean().sqrt()


def _rescaled(t: Tensor, like: Tensor) -> Tensor:
    rms = _rms(t)
    return t * (_rms(like) / rms) if rms > 0 else t


def low_rank(r: Tensor, rank: int, seed: int) -> Tensor:
    """(R V^T) V with V (rank x n) orthonormal rows from ``seed``, rescaled to RMS(R); R as it is
    where ``rank`` >= min(R's dims)."""
    m, n = r.shape
    if rank >= min(m, n):
        return r
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    v = torch.linalg.qr(g).Q.T.to(r.dtype).to(r.device)  # (rank, n), orthonormal rows
    return _rescaled((r @ v.T) @ v, r)


def density_mask(shape: tuple[int, int], density: float, seed: int) -> Tensor:
    """A fixed boolean mask keeping max(1, round(density x n)) entries of every row."""
    m, n = shape
    k = max(1, int(density * n + 0.5))  # round half up
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(m, n, generator=gen).argsort(dim=1)
    mask = torch.zeros(m, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


def sparsify(r: Tensor, density: float, seed: int) -> Tensor:
    """R with a fixed per-row mask (``density_mask``), rescaled to RMS(R)."""
    return _rescaled(r * density_mask(tuple(r.shape), density, seed).to(r.device, r.dtype), r)


def quantize(r: Tensor, levels: int, clip: float) -> Tensor:
    """R on ``levels`` uniform levels over [-clip RMS(R), +clip RMS(R)], rescaled to RMS(R);
    two levels: sign(R) mean|R|."""
    if levels == 2:
        return _rescaled(torch.sign(r) * r.abs().mean(), r)
    c = clip * _rms(r)
    if c == 0:
        return r
    step = 2 * c / (levels - 1)
    q = torch.round((r.clamp(-c, c) + c) / step) * step - c
    return _rescaled(q, r)


def vary(r: Tensor, sigma: float, seed: int) -> Tensor:
    """R (1 + sigma xi), xi ~ N(0, 1) fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    xi = torch.randn(tuple(r.shape), generator=gen, dtype=torch.float64).to(r.device, r.dtype)
    return r * (1 + sigma * xi)
