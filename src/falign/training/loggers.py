"""Experiment trackers: one small interface inside the training loop, three trackers on it.

``train.loggers: [tensorboard, wandb, mlflow]`` in a config (or ``train(..., loggers=[...])``
with objects of your own).  A logger has four methods, all optional to override:

    start(run_dir, record, resumed_step)    the run begins (or resumes at that step)
    step(step, values)                      every ``train.log_every`` steps: {"loss": ...}
    epoch(record, entry)                    after each epoch: the record and its EpochRecord
    close()                                 the run ended (or stopped)

* ``jsonl`` -- no tracker at all: one JSON line per logged step, ``{"step": ..., "loss": ...}``,
  in ``<run>/steps.jsonl`` (the loss of that one batch).  A resumed run drops the lines written
  after its checkpoint, so the file is the run's as if it had never stopped.

Only the process of rank 0 logs.  Each tracker is imported where it is used (``pip install
falign[trackers]``):

* ``tensorboard`` -- scalars under ``<run>/tensorboard`` (``torch.utils.tensorboard``): per
  epoch ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``lr`` and every alignment
  measure as ``alignment/<layer>/<measure>``; per step ``train/step_loss``.  A resumed run
  purges the events written after its checkpoint.
* ``wandb`` -- a run in project ``$WANDB_PROJECT`` (default "falign") named after the config,
  with the config; offline when ``WANDB_MODE=offline``; files under ``<run>/wandb``.
* ``mlflow`` -- a run in the tracking store ``$MLFLOW_TRACKING_URI`` (default
  ``<run>/mlruns``, a file store: falign sets ``MLFLOW_ALLOW_FILE_STORE=true`` unless it is
  set), with the config flattened into parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..registry import Registry
from .record import EpochRecord, RunRecord


class Logger:
    """Base class: every method does nothing."""

    def start(self, run_dir: Path, record: RunRecord, resumed_step: int) -> None:
        pass

    def step(self, step: int, values: dict[str, float]) -> None:
        pass

    def epoch(self, record: RunRecord, entry: EpochRecord) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_scalars(record: RunRecord, entry: EpochRecord) -> dict[str, float]:
    """The per-epoch numbers every tracker logs (alignment: the epoch's last probe)."""
    values = {"train/loss": entry.train_loss, "train/acc": entry.train_acc, "lr": entry.lr,
              "train/seconds": entry.seconds}
    if entry.val_loss is not None:
        values["val/loss"] = entry.val_loss
    if entry.val_acc is not None:
        values["val/acc"] = entry.val_acc
    probes = [a for a in record.alignment if a.epoch == entry.epoch]
    if probes:
        for layer, measures in probes[-1].layers.items():
            for name, value in measures.items():
                if value is not None:
                    values[f"alignment/{layer}/{name}"] = float(value)
    return values


class TensorBoard(Logger):
    def start(self, run_dir, record, resumed_step):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=resumed_step if resumed_step else None)

    def step(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(f"train/step_{key}", value, step)

    def epoch(self, record, entry):
        for key, value in epoch_scalars(record, entry).items():
            self.writer.add_scalar(key, value, entry.epoch)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB(Logger):
    def start(self, run_dir, record, resumed_step):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "falign"),
                              name=record.config.get("name"), config=record.config, dir=str(run_dir),
                              resume="allow", id=_run_id(run_dir))

    def step(self, step, values):
        self.run.log({f"train/step_{k}": v for k, v in values.items()}, step=step)

    def epoch(self, record, entry):
        self.run.log({**epoch_scalars(record, entry), "epoch": entry.epoch})

    def close(self):
        self.run.finish()


class MLflow(Logger):
    def start(self, run_dir, record, resumed_step):
        import mlflow

        self.mlflow = mlflow
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # the run directory's own file store (MLflow 3 asks to allow it explicitly)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(record.config.get("name") or "falign")
        self.run = mlflow.start_run(run_name=_run_id(run_dir))
        mlflow.log_params({k: str(v)[:250] for k, v in _flat(record.config).items()})

    def step(self, step, values):
        self.mlflow.log_metrics({f"train/step_{k}": v for k, v in values.items()}, step=step)

    def epoch(self, record, entry):
        values = {k.replace("/", "."): v for k, v in epoch_scalars(record, entry).items()}
        self.mlflow.log_metrics(values, step=entry.epoch)

    def close(self):
        self.mlflow.end_run()


class JsonLines(Logger):
    FILE = "steps.jsonl"

    def start(self, run_dir, record, resumed_step):
        import json

        self.path = Path(run_dir) / self.FILE
        kept = []
        if resumed_step and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    break  # a line cut by the kill, and nothing after it counts
        self.path.write_text("".join(kept))
        self.file = self.path.open("a")

    def step(self, step, values):
        import json

        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def read_steps(run_dir: str | Path) -> list[dict[str, float]]:
    """The lines of a run's ``steps.jsonl`` (the ``jsonl`` logger), in order."""
    import json

    path = Path(run_dir) / JsonLines.FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TRACKERS: Registry = Registry("tracker", ValueError, {"tensorboard": TensorBoard, "wandb": WandB,
                                                      "mlflow": MLflow, "jsonl": JsonLines})


def register_tracker(name: str) -> Callable[[type[Logger]], type[Logger]]:
    """Decorator: register a :class:`Logger` class under ``name``, so ``train.loggers`` can
    name it (it is built with no arguments and opened with the run)."""
    return TRACKERS.decorator(name)


def make_loggers(names: list[str]) -> list[Logger]:
    """The trackers ``train.loggers`` names: registered names, or ``module:Class`` paths."""
    return [(TRACKERS.resolve(n) if ":" in n else TRACKERS.lookup(n))() for n in names]


def _run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
