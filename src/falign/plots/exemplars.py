"""Exemplar grid: for each method, the top-activating inputs of its most important channels."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from falign.plots import _style

if TYPE_CHECKING:
    from falign.analysis.gradcam import ExemplarSet

__all__ = ["plot_exemplar_grid"]

_THUMB = 0.75  # inches per thumbnail


def _to_display(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> np.ndarray:
    """(n, C, H, W) normalised -> (n, H, W, C) in [0, 1]; C must be 1 (grey) or 3 (RGB)."""
    images = images.detach().cpu().to(torch.float64)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"exemplar images must be (n, 1 or 3, H, W), got {tuple(images.shape)}")
    channels = images.shape[1]
    if std is not None:
        images = images * torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1, 1).expand(channels, 1, 1)
    if mean is not None:
        images = images + torch.as_tensor(mean, dtype=torch.float64).reshape(-1, 1, 1).expand(channels, 1, 1)
    return images.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def plot_exemplar_grid(
    sets: Mapping[str, ExemplarSet],
    path_stem: str | os.PathLike[str],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str = "Top-activating inputs of the most important channels",
) -> list[Path]:
    """One block of rows per method (key of ``sets``), one row per channel (most important
    first), its exemplars left to right (most activating first).

    ``mean`` / ``std`` (per input channel) undo the input normalisation, x * std + mean; images
    are then clamped to [0, 1] and shown grey (1 channel) or RGB (3). Writes ``path_stem``.png
    and .pdf and returns their paths.
    """
    if not sets:
        raise ValueError("no exemplar sets to plot")
    blocks = list(sets.items())
    for key, exemplar_set in blocks:
        if not exemplar_set.channels:
            raise ValueError(f"exemplar set {key!r} holds no channels")
    ncols = max(len(s.images[c]) for _, s in blocks for c in s.channels)
    row_counts = [len(s.channels) for _, s in blocks]
    width = _THUMB * ncols + 1.2
    height = _THUMB * sum(row_counts) + 0.45 * len(blocks) + (0.4 if title else 0.0)

    with _style.style_context():
        fig = _style.new_figure(width, height)
        subfigs = fig.subfigures(len(blocks), 1, height_ratios=[r + 0.6 for r in row_counts], squeeze=False)
        for subfig, (key, exemplar_set) in zip(subfigs[:, 0], blocks, strict=True):
            subfig.suptitle(f"{key}: {exemplar_set.method}, layer {exemplar_set.layer}", fontsize=9)
            axes = subfig.subplots(len(exemplar_set.channels), ncols, squeeze=False)
            for row, channel in zip(axes, exemplar_set.channels, strict=True):
                shown = _to_display(exemplar_set.images[channel], mean, std)
                for j, ax in enumerate(row):
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.spines[:].set_visible(False)
                    if j < len(shown):
                        image = shown[j]
                        if image.shape[-1] == 1:
                            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                        else:
                            ax.imshow(image, interpolation="nearest")
                row[0].set_ylabel(f"ch {channel}", rotation=0, ha="right", va="center")
            axes[-1, 0].set_xlabel("most activating \u2192", ha="left", x=0.0)
        if title:
            fig.suptitle(title)
        return _style.save_figure(fig, path_stem)
