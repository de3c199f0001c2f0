"""Plot helpers write non-empty PNG + PDF headlessly and keep matplotlib out of import time."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from falign.analysis.cka import CKAResult
from falign.analysis.classification import classification_report
from falign.plots import plot_cka_heatmaps, plot_confusion_matrix, plot_curves


def _check_outputs(paths: list[Path], stem: Path, min_size: tuple[int, int]) -> None:
    assert paths == [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    png, pdf = paths
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        image.load()
        width, height = image.size
    assert min_size[0] <= width <= 4000 and min_size[1] <= height <= 4000


def test_confusion_matrix_from_report_and_from_matrix(tmp_path: Path) -> None:
    rep = classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0])
    stem = tmp_path / "figs" / "confusion"  # the folder is created
    _check_outputs(plot_confusion_matrix(rep, ["cat", "dog", "bird"], stem), stem, (300, 300))
    stem2 = tmp_path / "confusion_norm"
    paths = plot_confusion_matrix(
        torch.eye(12, dtype=torch.int64) * 7 + 1, None, stem2, "12 classes", normalize=True
    )
    _check_outputs(paths, stem2, (300, 300))
    with pytest.raises(ValueError):
        plot_confusion_matrix([[1, 2, 3]], None, tmp_path / "bad")


def test_cka_heatmaps_with_a_skipped_panel(tmp_path: Path) -> None:
    layers = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    g = torch.Generator().manual_seed(0)
    results = {
        "all": CKAResult(torch.rand(5, 5, generator=g, dtype=torch.float64), layers, layers, 100),
        "both_correct": CKAResult(
            torch.rand(5, 5, generator=g, dtype=torch.float64) - 0.05,
            layers,
            layers,
            60,
            minibatch=True,
        ),
        "ref_correct_other_wrong": CKAResult(
            torch.full((5, 5), math.nan, dtype=torch.float64),
            layers,
            layers,
            2,
            skipped="only 2 examples (fewer than 4)",
        ),
    }
    stem = tmp_path / "cka"
    _check_outputs(plot_cka_heatmaps(results, stem, title="BP vs uSF"), stem, (600, 250))
    with pytest.raises(ValueError):
        plot_cka_heatmaps({}, tmp_path / "empty")


def test_curves_with_references_and_gaps(tmp_path: Path) -> None:
    series = {
        "BP": [40.0, 55.0, 63.5, 70.1, 75.9],
        "FA dense": [20.0, 28.0, 31.0, math.nan, 36.1],
        "uSF Init": [38.0, 52.0, 66.0, 71.0, 74.8],
    }
    stem = tmp_path / "val_acc.png"  # a trailing .png on the stem is dropped
    paths = plot_curves(
        series,
        stem,
        "Epoch",
        "Validation accuracy (%)",
        "Validation accuracy per epoch",
        references={"BP": 75.92},
    )
    _check_outputs(paths, tmp_path / "val_acc", (500, 300))
    with pytest.raises(ValueError):
        plot_curves({"a": [1.0, 2.0]}, tmp_path / "bad", "Epoch", "Loss", x=[1.0])


def test_plots_keep_matplotlib_out_of_imports_and_global_state(tmp_path: Path) -> None:
    """In a fresh interpreter: importing falign.plots loads no matplotlib; plotting then imports
    no pyplot and leaves rcParams as they were."""
    code = (
        "import sys, falign.plots, falign.plots._style\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'matplotlib'], 'imported'\n"
        "import matplotlib\n"
        # Reading rcParams['backend'] would itself import pyplot: leave that key out.
        "rc = lambda: {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != 'backend'}\n"
        "before = rc()\n"
        f"falign.plots.plot_curves({{'a': [1.0, 2.0]}}, {str(tmp_path / 'c')!r}, 'Epoch', 'Loss')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert rc() == before, 'rcParams changed'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "c.png").stat().st_size > 0
