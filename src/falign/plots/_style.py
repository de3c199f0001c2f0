"""Shared look of falign figures: Okabe-Ito colours, markers, and saving to PNG + PDF.

matplotlib is imported only inside functions, and only through its object API (``Figure`` with an
Agg canvas): nothing here touches pyplot or changes global rcParams outside a ``with`` block.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure

# Okabe & Ito 2008, "Color Universal Design": distinguishable under the common colour-vision
# deficiencies. Ordered so that the first few colours contrast most; yellow comes late.
OKABE_ITO: dict[str, str] = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "bluish_green": "#009E73",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "sky_blue": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
PALETTE: tuple[str, ...] = tuple(OKABE_ITO.values())
# Ten markers against eight colours: the (colour, marker) pair stays unique for 40 series.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# Perceptually uniform and readable in greyscale and by colour-blind readers.
HEATMAP_CMAP = "viridis"
PNG_DPI = 150

_RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # embed TrueType so text in the PDF stays editable
    "ps.fonttype": 42,
}


def style_context() -> AbstractContextManager[Any]:
    """rcParams for one figure, restored when the ``with`` block ends."""
    import matplotlib
    from cycler import cycler

    return matplotlib.rc_context({**_RC, "axes.prop_cycle": cycler(color=PALETTE)})


def new_figure(width: float, height: float) -> Figure:
    """A Figure on its own Agg canvas (no pyplot, no window, no global figure registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def output_paths(path_stem: str | os.PathLike[str]) -> list[Path]:
    """``out/fig`` -> [out/fig.png, out/fig.pdf]; a trailing .png or .pdf on the stem is dropped."""
    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".pdf"):
        stem = stem.with_suffix("")
    return [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]


def save_figure(fig: Figure, path_stem: str | os.PathLike[str]) -> list[Path]:
    """Write the figure as PNG and PDF, creating the folder; returns both paths."""
    png, pdf = output_paths(path_stem)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=PNG_DPI)
    # No creation date: the same figure gives the same PDF bytes.
    fig.savefig(pdf, metadata={"CreationDate": None})
    return [png, pdf]


def text_colour_on(cmap: Colormap, norm: Normalize, value: float) -> str:
    """Black or white, whichever reads better on the cell colour of ``value``."""
    if value != value:  # NaN cell, drawn in light grey
        return "black"
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def annotate_cells(
    ax: Axes, values: Sequence[Sequence[float]], fmt: str, cmap: Colormap, norm: Normalize
) -> None:
    """Write each cell's value at its centre of an ``imshow`` heatmap."""
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            text = "n/a" if value != value else format(value, fmt)
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=text_colour_on(cmap, norm, value))
