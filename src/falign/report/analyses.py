"""Analyses of the runs' best models: confusion matrices, CKA against a reference run, Grad-CAM
exemplars, and the evaluation of one checkpoint.

``falign report --confusion --cka --gradcam LAYER`` (through :func:`analyse`), ``falign evaluate``
(:func:`evaluate_checkpoint`) and the reproduction targets use these.  Each analysis takes
models and data and returns a :class:`Section` (figures, preformatted text, notes); figures are
written under the folder given, nothing else is.  Every model is evaluated on the test split of
the dataset its own run's config names, with the evaluation transform (no augmentation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .runs import ReportError, Run

if TYPE_CHECKING:
    from torch import nn

    from ..analysis.classification import ClassificationReport
    from ..data import Dataset, Split
    from ..training.config import ExperimentConfig

__all__ = ["CheckpointEvaluation", "Section", "analyse", "cka_vs_reference", "confusion_matrices",
           "evaluate_checkpoint", "exemplar_grid", "predictions"]


@dataclass
class Section:
    """What an analysis adds to a report: figures (title, PNG, caption), preformatted texts
    (heading, text) and notes (one line each)."""

    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Section) -> Section:
        self.figures += other.figures
        self.texts += other.texts
        self.notes += other.notes
        return self


# -- predictions and one checkpoint ------------------------------------------------------------

def _flat(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (N, T, K) and (N, T) of a language model: one prediction a position
    if out.dim() > 2 and y.dim() == out.dim() - 1:
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return out, y


@torch.no_grad()
def predictions(model: nn.Module, split: Split, transform, batch_size: int = 1000
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, true class) of every example of ``split`` (every position, for a
    language model), both (N,) on the CPU; the model in eval mode, its mode restored."""
    from ..data import batches
    from ..layers.scope import eval_mode

    preds, labels = [], []
    with eval_mode(model):
        for x, y in batches(split, batch_size, transform=transform, shuffle=False):
            out, y = _flat(model(x), y)
            preds.append(out.argmax(-1).cpu())
            labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


@dataclass
class CheckpointEvaluation:
    """A checkpoint's model on one split of its run's dataset: accuracy and mean loss (as the
    training loop measures them), and the confusion matrix with per-class metrics."""

    path: Path
    split: str
    dataset: str
    epoch: int | None
    accuracy: float
    loss: float
    report: ClassificationReport


def run_config(config: Mapping[str, Any], where: str) -> ExperimentConfig:
    """A saved config, migrated to today's form; `ReportError` when it no longer validates."""
    import copy

    from ..training.config import ConfigError, parse_config

    try:
        return parse_config(copy.deepcopy(dict(config)), where=where)
    except ConfigError as err:
        raise ReportError(str(err)) from None


def evaluate_checkpoint(path: str | Path, *, split: str = "test", device: str | torch.device = "cpu",
                        data_root: str | None = None, download: bool | None = None) -> CheckpointEvaluation:
    """Rebuild the model of any falign checkpoint (a run directory: its ``best.pt``) and measure
    it on ``split`` ("test" or "val") of the dataset its config names (``data_root`` replaces the
    config's root; ``download`` its ``data.download``).  On the test split of a run's ``best.pt``
    this is the run's recorded ``test_acc``, exactly: the same data, transform, batch size and
    loss."""
    from ..analysis.classification import classification_report
    from ..training.checkpoint import load_checkpoint
    from ..training.loop import build_dataset, evaluate, load_model, loss_and_target, resolve_device

    if split not in ("test", "val"):
        raise ReportError(f"split must be 'test' or 'val', not {split!r}")
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise ReportError(f"{path}: a directory without best.pt (a run that has finished no epoch, "
                              "or not a run); give a run directory or a checkpoint file")
        path = path / "best.pt"
    device = resolve_device(str(device))
    ckpt = load_checkpoint(path)  # CheckpointError: missing, corrupt, foreign
    if not isinstance(ckpt.get("config"), dict):
        raise ReportError(f"{path}: the checkpoint holds no config")
    cfg = run_config(ckpt["config"], f"{path}: config")
    if data_root is not None:
        cfg.data.root = data_root
    if download is not None:
        cfg.data.download = download
    model = load_model(path, map_location=device)
    data = build_dataset(cfg, device)
    chosen = data.test if split == "test" else data.val
    if chosen is None:
        raise ReportError(f"{path}: the run's dataset ({data.description}) has no validation split; "
                          "use --split test")
    loss_fn = loss_and_target(cfg.train.loss, cfg.train.loss_reduction, data.num_classes)
    measured = evaluate(model, chosen, data.eval_transform, batch_size=cfg.train.eval_batch_size,
                        loss_fn=loss_fn)
    preds, labels = predictions(model, chosen, data.eval_transform, cfg.train.eval_batch_size)
    report = classification_report(labels, preds, num_classes=data.num_classes, class_names=data.classes)
    epoch = ckpt.get("epoch")
    return CheckpointEvaluation(path, split, data.description, epoch if isinstance(epoch, int) else None,
                                measured["acc"], measured["loss"], report)


# -- the analyses ------------------------------------------------------------------------------

def _stem_part(label: str) -> str:
    """A method label as part of a file name: "fa (seed0)" -> "fa-seed0"."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-") or "run"


def confusion_matrices(models: Mapping[str, nn.Module], data: Dataset, folder: Path, *,
                       prefix: str = "") -> Section:
    """Confusion matrix (figure) and per-class precision / recall / F1 (text, also written to
    ``classification-<label>.txt``) of each model on the test split."""
    from ..analysis.classification import classification_report
    from ..plots import plot_confusion_matrix

    out = Section()
    for label, model in models.items():
        preds, labels = predictions(model, data.test, data.eval_transform)
        report = classification_report(labels, preds, num_classes=data.num_classes,
                                       class_names=data.classes)
        stem = folder / f"{prefix}confusion-{_stem_part(label)}"
        paths = plot_confusion_matrix(report, data.classes, stem, title=f"{label}: confusion matrix")
        (folder / f"{prefix}classification-{_stem_part(label)}.txt").write_text(report.to_text())
        out.figures.append((f"Confusion matrix: {label}", paths[0],
                            "Rows: true class; columns: predicted class (test set)."))
        out.texts.append((f"{label}: per-class precision / recall / F1 (test set)", report.to_text()))
    return out


def _feedback_layer_names(model: nn.Module) -> list[str]:
    from ..layers import feedback_layers

    return [name for name, _ in feedback_layers(model)]


def cka_vs_reference(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                     folder: Path, *, layers: Sequence[str] | None = None, reference: str = "bp",
                     title: str = "BP", minibatch_size: int | None = None, seed: int = 0,
                     prefix: str = "") -> Section:
    """Unbiased minibatch linear CKA between the layers of every model and those of the
    ``reference`` model, on the three test subsets of Lance & Kieu 2026 (``cka_subsets``): one
    heatmap figure per subset, the diagonals and the estimator as notes.  ``layers`` are the
    layers of every model (the same architecture); None takes each model's converted layers.
    ``title`` names the reference in titles ("CKA vs BP")."""
    from ..analysis.cka import DEFAULT_MINIBATCH_SIZE, cka_subsets
    from ..plots import plot_cka_heatmaps

    out = Section()
    ref = models.get(reference)
    if ref is None:
        return out
    name = title
    # Unbiased minibatch CKA: its value does not depend on a subset's size, so the three
    # subsets (of different sizes) are comparable; the biased full-batch one rises as n falls.
    estimator, size_of_batch = "minibatch", minibatch_size or DEFAULT_MINIBATCH_SIZE
    per_subset: dict[str, dict[str, Any]] = {}
    sizes: list[str] = []

    def size(r) -> str:
        total = r.n + r.dropped
        if r.skipped:
            return f"n={total} (skipped)"
        if r.minibatch_size != size_of_batch:
            return f"n={total} (one minibatch of all {r.n})"
        return f"n={total} ({r.n} used)"

    ref_layers = list(layers) if layers is not None else _feedback_layer_names(ref)
    for label, model in models.items():
        if label == reference:
            continue
        other_layers = list(layers) if layers is not None else _feedback_layer_names(model)
        subsets = cka_subsets(ref, model, x, y, ref_layers, other_layers, estimator=estimator,
                              minibatch_size=size_of_batch, seed=seed)
        for subset, result in subsets.items():
            per_subset.setdefault(subset, {})[f"{label} vs {reference}"] = result
        sizes.append(f"{label} vs {reference}: " + ", ".join(f"{subset} {size(r)}"
                                                            for subset, r in subsets.items()))
    if sizes:
        out.notes.append(
            f"CKA estimator: unbiased minibatch linear CKA (Nguyen et al. 2021; mean unbiased "
            f"HSIC_1 of Song et al. 2012 over minibatches of {size_of_batch} test images in a "
            f"seeded random order, seed {seed}; the final partial minibatch is dropped, a subset "
            f"of fewer than {size_of_batch} images is one minibatch, fewer than 4 is skipped); "
            "its value does not depend on n, so the subsets are comparable, and it can be "
            "slightly negative. Subset sizes: " + "; ".join(sizes) + ".")
    for subset, results in per_subset.items():
        stem = folder / f"{prefix}cka-{subset}"
        paths = plot_cka_heatmaps(results, stem, title=f"Unbiased minibatch linear CKA vs {name} ({subset})")
        out.figures.append((f"CKA vs {name}: {subset}", paths[0],
                            "Linear CKA (unbiased minibatch estimator, minibatches of "
                            f"{size_of_batch}) between each layer of a method (columns) "
                            f"and of {name} (rows), on the test images of this subset."))
        for key, r in results.items():
            diag = ", ".join(f"{lay} {v:.2f}" for lay, v in zip(r.layers_a, r.diagonal().tolist(),
                                                                 strict=False))
            out.notes.append(f"CKA diagonal, {subset}, {key}: {diag}")
    return out


def exemplar_grid(models: Mapping[str, nn.Module], layer: str, x: torch.Tensor, y: torch.Tensor,
                  folder: Path, *, k: int = 5, n: int = 9, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, prefix: str = "") -> Section:
    """For each model, the ``k`` channels of ``layer`` with the largest mean |Grad-CAM
    importance| (true gradient) and the ``n`` test images that activate each most: one figure."""
    from ..analysis.gradcam import exemplars
    from ..plots import plot_exemplar_grid

    sets = {label: exemplars(model, layer, x, y, k=k, n=n, gradient="true")
            for label, model in models.items()}
    mean_t = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
    std_t = None if std is None else torch.tensor(std).view(-1, 1, 1)
    paths = plot_exemplar_grid(sets, folder / f"{prefix}exemplars", mean=mean_t, std=std_t,
                               title=f"{layer}: top Grad-CAM channels and their top-activating test images")
    return Section(figures=[("Exemplars", paths[0], f"For each method, the {layer} channels with the "
                             "largest mean |Grad-CAM importance| (true gradient) and the test images "
                             "that activate each most.")])


# -- the report's analyses of its runs ---------------------------------------------------------

@dataclass
class _Group:
    """Runs on the same data: their best models and that data's test split."""

    runs: list[Run]
    data: Dataset
    models: dict[str, nn.Module]


def _channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "embed_dim", "hidden_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def analyse(runs: Sequence[Run], folder: Path, *, confusion: bool = False, cka: bool = False,
            gradcam: str | None = None, device: str = "cpu") -> list[tuple[str, Section]]:
    """The analyses asked for, of each run's best model (``best.pt``) on its own test split:
    [(section title, section)].  Runs on the same data are analysed together (CKA compares them
    with the ``bp`` run among them, else the first).  Everything is checked (checkpoints, the
    data, the Grad-CAM layer in every model) before the first figure is written; a run without
    ``best.pt`` is left out with a note."""
    if not (confusion or cka or gradcam):
        return []
    from ..training.loop import build_dataset, load_model, resolve_device

    torch_device = resolve_device(device)
    skipped: list[str] = []
    by_data: dict[str, list[Run]] = {}
    for run in runs:
        if not (run.path / "best.pt").is_file():
            skipped.append(f"{run.label}: no best.pt in {run.path} (the run has not completed an epoch; "
                           "resume it with `falign train ... --resume`)")
            continue
        key = json.dumps(run.config.get("data") or {}, sort_keys=True, default=str)
        by_data.setdefault(key, []).append(run)
    groups = []
    for members in by_data.values():
        cfg = run_config(members[0].config, f"{members[0].path / 'tracking.json'}: config")
        data = build_dataset(cfg, torch_device)
        models = {run.label: load_model(run.path / "best.pt", map_location=torch_device) for run in members}
        groups.append(_Group(members, data, models))
    if gradcam:
        for group in groups:
            for run in group.runs:
                modules = dict(group.models[run.label].named_modules())
                if gradcam not in modules or not gradcam:
                    import difflib

                    names = [n for n in modules if n]
                    near = difflib.get_close_matches(gradcam, names, n=1, cutoff=0.4)
                    hint = f"did you mean '{near[0]}'? " if near else ""
                    raise ReportError(f"--gradcam {gradcam}: no layer '{gradcam}' in the model of "
                                      f"{run.label} ({run.path}); {hint}its layers: {', '.join(names)}")
            if group.data.test.x.dim() != 4 or group.data.test.x.shape[1] not in (1, 3):
                raise ReportError(f"--gradcam: exemplars are images, and {group.data.description} is "
                                  "not an image dataset")

    sections: list[tuple[str, Section]] = []
    many = len(groups) > 1
    for i, group in enumerate(groups):
        prefix = f"data{i + 1}-" if many else ""
        where = f" ({group.data.description})" if many else ""
        x = group.data.eval_transform(group.data.test.x)  # (N, ...) float, un-augmented
        y = group.data.test.y
        if confusion:
            sections.append((f"Confusion matrices{where}",
                             confusion_matrices(group.models, group.data, folder, prefix=prefix)))
        if cka:
            labels = list(group.models)
            exact = [r.label for r in group.runs if r.exact]  # backprop runs: the reference
            reference = exact[0] if exact else labels[0]
            if len(labels) < 2:
                section = Section(notes=[f"CKA compares two runs on the same data; {labels[0]} is "
                                         "alone here (report it with a bp run, e.g. a comparison)."])
            else:
                section = cka_vs_reference(group.models, x, y, folder, reference=reference,
                                           title="BP" if exact else reference, prefix=prefix)
                if not exact:
                    section.notes.insert(0, f"No backprop run on this data: CKA is against "
                                            f"{reference}.")
            sections.append((f"CKA{where}", section))
        if gradcam:
            first = group.models[group.runs[0].label]
            channels = _channels(dict(first.named_modules())[gradcam])
            k = min(3, channels) if channels else 3
            transform = group.data.eval_transform  # its mean and std undo the normalisation
            section = exemplar_grid(group.models, gradcam, x, y, folder, k=k, n=min(6, x.shape[0]),
                                    mean=getattr(transform, "mean", None),
                                    std=getattr(transform, "std", None), prefix=prefix)
            sections.append((f"Grad-CAM exemplars{where}", section))
    if skipped:
        sections.append(("Not analysed", Section(notes=skipped)))
    return sections
