"""One way to open a run someone trained: its config, its model at a checkpoint, its data.

    run = open_run("runs/fa", device="cpu")        # a run directory (its best.pt) or any checkpoint
    model, data = run.model(), run.data()          # built once each, on first use
    measured = evaluate(model, data.test, data.eval_transform, loss_fn=run.loss_fn())

``falign evaluate`` (:func:`evaluate_checkpoint`), the report's analyses and the reproduction
targets open runs through it.  Every model is measured on the dataset its own checkpoint's config
names (migrated to today's form, so a run of an earlier falign opens), with the evaluation
transform.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import FalignError
from .checkpoint import load_checkpoint
from .config import ConfigError, ExperimentConfig, parse_config

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from torch import Tensor, nn

    from ..analysis.classification import ClassificationReport
    from ..data import Dataset, Split

__all__ = ["CheckpointEvaluation", "OpenRun", "RunOpenError", "evaluate_checkpoint", "open_run",
           "predictions", "run_config"]


class RunOpenError(FalignError, ValueError):
    """A path is not a run or checkpoint falign can open, or what was asked of it cannot be made."""


def run_config(config: Mapping[str, Any], where: str) -> ExperimentConfig:
    """A saved config, migrated to today's form; `RunOpenError` when it no longer validates."""
    try:
        return parse_config(copy.deepcopy(dict(config)), where=where)
    except ConfigError as err:
        raise RunOpenError(str(err)) from None


@dataclass
class OpenRun:
    """A checkpoint with the config it holds; the model and the data are built on first use."""

    checkpoint: Path
    config: ExperimentConfig
    epoch: int | None
    device: torch.device
    _model: nn.Module | None = field(default=None, repr=False)
    _data: Dataset | None = field(default=None, repr=False)

    def model(self) -> nn.Module:
        """The checkpoint's model on ``device`` (rebuilt from its saved spec)."""
        if self._model is None:
            from .loop import load_model

            self._model = load_model(self.checkpoint, map_location=self.device)
        return self._model

    def data(self) -> Dataset:
        """The dataset the config names, on ``device``."""
        if self._data is None:
            from .loop import build_dataset

            self._data = build_dataset(self.config, self.device)
        return self._data

    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The training loss of the run, as the loop measures it."""
        from .loop import loss_and_target

        return loss_and_target(self.config.train.loss, self.config.train.loss_reduction,
                               self.data().num_classes)


def open_run(path: str | Path, *, checkpoint: str = "best.pt", device: str | torch.device = "cpu",
             data_root: str | None = None, download: bool | None = None) -> OpenRun:
    """Open a run directory (its ``checkpoint``, ``best.pt`` by default) or a checkpoint file.
    ``data_root`` replaces the config's ``data.root``, ``download`` its ``data.download``.
    Missing, corrupt or foreign checkpoints raise `CheckpointError`; a directory without the
    checkpoint, or a checkpoint without a config, `RunOpenError`."""
    from .loop import resolve_device

    path = Path(path)
    if path.is_dir():
        if not (path / checkpoint).is_file():
            raise RunOpenError(f"{path}: a directory without {checkpoint} (a run that has finished no epoch, "
                        "or not a run); give a run directory or a checkpoint file")
        path = path / checkpoint
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    ckpt = load_checkpoint(path)  # CheckpointError: missing, corrupt, foreign
    if not isinstance(ckpt.get("config"), dict):
        raise RunOpenError(f"{path}: the checkpoint holds no config")
    cfg = run_config(ckpt["config"], f"{path}: config")
    if data_root is not None:
        cfg.data.root = data_root
    if download is not None:
        cfg.data.download = download
    epoch = ckpt.get("epoch")
    return OpenRun(path, cfg, epoch if isinstance(epoch, int) else None, device)


@torch.no_grad()
def predictions(model: nn.Module, split: Split, transform, batch_size: int = 1000
                ) -> tuple[Tensor, Tensor]:
    """(predicted class, true class) of every example of ``split`` (every position, for a
    language model), both (N,) on the CPU; the model in eval mode, its modes restored."""
    from ..data import batches
    from ..layers.scope import eval_mode
    from .loop import flat

    preds, labels = [], []
    with eval_mode(model):
        for x, y in batches(split, batch_size, transform=transform, shuffle=False):
            out, y = flat(model(x), y)
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


def evaluate_checkpoint(path: str | Path, *, split: str = "test", device: str | torch.device = "cpu",
                        data_root: str | None = None, download: bool | None = None) -> CheckpointEvaluation:
    """Rebuild the model of any falign checkpoint (a run directory: its ``best.pt``) and measure
    it on ``split`` ("test" or "val") of the dataset its config names (``data_root`` replaces the
    config's root; ``download`` its ``data.download``).  On the test split of a run's ``best.pt``
    this is the run's recorded ``test_acc``, exactly: the same data, transform, batch size and
    loss."""
    from ..analysis.classification import classification_report
    from .loop import evaluate

    if split not in ("test", "val"):
        raise RunOpenError(f"split must be 'test' or 'val', not {split!r}")
    run = open_run(path, device=device, data_root=data_root, download=download)
    cfg = run.config
    model, data = run.model(), run.data()
    chosen = data.test if split == "test" else data.val
    if chosen is None:
        raise RunOpenError(f"{run.checkpoint}: the run's dataset ({data.description}) has no "
                           "validation split; use --split test")
    measured = evaluate(model, chosen, data.eval_transform, batch_size=cfg.train.eval_batch_size,
                        loss_fn=run.loss_fn())
    preds, labels = predictions(model, chosen, data.eval_transform, cfg.train.eval_batch_size)
    report = classification_report(labels, preds, num_classes=data.num_classes, class_names=data.classes)
    return CheckpointEvaluation(run.checkpoint, split, data.description, run.epoch,
                                measured["acc"], measured["loss"], report)
