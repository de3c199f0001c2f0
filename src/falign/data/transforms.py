"""Batch transforms that run on the training device, one call per batch, no per-sample Python.

`ImageTransform` covers everything the shipped datasets need: zero padding, a centre or random
crop, a random horizontal flip, then scaling to [0, 1] and per-channel normalisation. The crop
and the flip are one gather (``torch.take``) with per-sample offsets, so augmenting a batch costs
one indexing kernel whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .core import LazyImages, random_device

__all__ = ["ImageTransform", "ToFloat"]


class ToFloat:
    """``x.float()``: for data stored as float features (xor)."""

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, *,
        rows: tuple[int, int] | None = None,
    ) -> Tensor:
        return x.to(torch.float32)

    def __repr__(self) -> str:
        return "ToFloat()"


class ImageTransform:
    """(N, C, H, W) uint8 -> (N, C, S, S) float32 on the same device.

    In order: zero-pad ``pad`` pixels on every side (black, before normalisation, as
    torchvision's ``RandomCrop(padding=...)`` does); crop ``crop`` x ``crop`` pixels, at a
    uniformly random offset per sample if ``random_crop`` else centred at ``(H - crop) // 2``;
    mirror each sample left-right with probability 1/2 if ``flip``; then
    ``(x * scale - mean) / std`` per channel (just ``x * scale`` when ``mean`` is None).

    Random draws, in this order: row offsets, column offsets, flips, each one value per sample,
    from ``generator`` (on its own device) or from ``x.device``'s default generator. With
    ``rows=(start, n)`` ``x`` is rows ``start ..`` of a batch of ``n``: the draws are made for
    ``n`` samples and rows ``start .. start + len(x)`` of them are applied, so each process of a
    data-parallel run transforms its share as the whole batch would be. A `LazyImages` x
    (a streamed split given whole, e.g. for an analysis) is decoded first.
    """

    def __init__(
        self,
        *,
        pad: int = 0,
        crop: int | None = None,
        random_crop: bool = False,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        scale: float = 1.0 / 255.0,
    ) -> None:
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be positive, got {crop}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and std is not None and len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.pad = pad
        self.crop = crop
        self.random_crop = random_crop
        self.flip = flip
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.scale = float(scale)
        self._affine: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_affine"] = {}  # device tensors are a cache, not state
        return state

    def __repr__(self) -> str:
        parts = [f"pad={self.pad}"] if self.pad else []
        if self.crop is not None:
            parts.append(f"crop={self.crop}{' random' if self.random_crop else ' centre'}")
        if self.flip:
            parts.append("flip")
        if self.mean is not None:
            parts.append(f"mean={self.mean}, std={self.std}")
        return f"ImageTransform({', '.join(parts)})"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Per-sample output shape for a stored per-sample shape (C, H, W)."""
        c, h, w = shape
        h, w = h + 2 * self.pad, w + 2 * self.pad
        if self.crop is not None:
            h, w = self.crop, self.crop
        return (c, h, w)

    def __call__(
        self, x: Tensor | LazyImages, generator: torch.Generator | None = None, *,
        rows: tuple[int, int] | None = None,
    ) -> Tensor:
        if isinstance(x, LazyImages):
            x = x[:]  # (N, C, H, W) uint8, decoded
        if x.dim() != 4:
            raise ValueError(f"expected a (N, C, H, W) batch, got shape {tuple(x.shape)}")
        if rows is not None and not (0 <= rows[0] and rows[0] + x.shape[0] <= rows[1]):
            raise ValueError(f"rows={rows}: {x.shape[0]} rows from {rows[0]} do not fit a batch of {rows[1]}")
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)  # (N, C, H + 2p, W + 2p), zeros
        h, w = x.shape[-2:]
        size = self.crop
        if size is not None and (size > h or size > w):
            raise ValueError(f"cannot crop {size}x{size} from {h}x{w} images")
        if self.random_crop or self.flip:
            ch, cw = (h, w) if size is None else (size, size)
            x = self._gather(x, generator, ch, cw, rows)
        elif size is not None:
            top, left = (h - size) // 2, (w - size) // 2
            x = x[:, :, top : top + size, left : left + size]
        return self._normalise(x)

    def _gather(
        self, x: Tensor, generator: torch.Generator | None, ch: int, cw: int,
        rows: tuple[int, int] | None,
    ) -> Tensor:
        n, c, h, w = x.shape
        dev = x.device
        rdev = random_device(generator, dev)
        start, drawn = (0, n) if rows is None else rows  # draws for the whole batch, rows of it used
        mine = slice(start, start + n)
        if self.random_crop:
            top = torch.randint(0, h - ch + 1, (drawn,), generator=generator, device=rdev)
            left = torch.randint(0, w - cw + 1, (drawn,), generator=generator, device=rdev)
            top, left = top[mine].to(dev), left[mine].to(dev)
        else:
            top = torch.full((n,), (h - ch) // 2, device=dev)
            left = torch.full((n,), (w - cw) // 2, device=dev)
        cols = torch.arange(cw, device=dev).expand(n, cw)  # (N, cw)
        if self.flip:
            mirror = torch.randint(0, 2, (drawn,), generator=generator, device=rdev)
            mirror = mirror[mine].to(dev).bool()
            cols = torch.where(mirror[:, None], cols.flip(1), cols)
        # flat offsets into contiguous x: one take() is several times faster than 4-D indexing
        corner = torch.arange(n, device=dev) * (c * h * w) + top * w + left  # (N,)
        plane = (torch.arange(c, device=dev) * (h * w))[:, None] + torch.arange(ch, device=dev) * w
        flat = corner[:, None, None, None] + plane[None, :, :, None] + cols[:, None, None, :]
        return torch.take(x.contiguous(), flat)  # (N, C, ch, cw)

    def _normalise(self, x: Tensor) -> Tensor:
        if self.mean is None:
            return x.to(torch.float32) * self.scale
        dev = x.device
        if dev not in self._affine:
            std = torch.tensor(self.std, dtype=torch.float32)
            mean = torch.tensor(self.mean, dtype=torch.float32)
            gain = (self.scale / std).view(-1, 1, 1)  # (C, 1, 1)
            bias = (-mean / std).view(-1, 1, 1)
            self._affine[dev] = (gain.to(dev), bias.to(dev))
        gain, bias = self._affine[dev]
        if gain.shape[0] not in (1, x.shape[1]):
            raise ValueError(f"{gain.shape[0]} normalisation channels for {x.shape[1]}-channel x")
        return torch.addcmul(bias, x.to(torch.float32), gain)  # x * scale / std - mean / std
