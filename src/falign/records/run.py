"""The run record: what :func:`falign.training.train` returns and writes to ``tracking.json``, and
what every later stage (compare, sweep, report, reproduce, plots) reads.

    from falign.records import RunRecord   # also falign.training.RunRecord
    record = RunRecord.read("runs/mnist-fa/tracking.json")
    record.status, record.best_val_acc, record.val_curve, record.seconds_per_epoch

``tracking.json``, schema version 3 (``docs/run-record.md`` describes it for users)::

    {
     "schema_version": 3,
     "config": {...},            # the whole experiment config, as ExperimentConfig.to_dict()
     "model_spec": {...},        # the model's constructor arguments (name, rule, options, shapes)
     "dataset": "MNIST, 54000/6000/10000",
     "epochs": [                 # one entry per completed epoch
      {"epoch": 1, "train_loss": 0.41, "train_acc": 0.88, "train_errors": 6480, "lr": 0.05,
       "seconds": 3.2, "val_loss": 0.25, "val_acc": 0.93}       # val_*: null without a val split
     ],
     "best_epoch": 1,            # null until an epoch completes
     "best_val_acc": 0.93,       # accuracy of the best epoch on the selection split
     "test_acc": 0.92,           # the best epoch's model on the test split; null until the end
     "test_loss": 0.27,          # its mean test loss (per position for a language model)
     "selected_on": "val",       # "val"; "test" (no validation split, or asked); "last"
     "status": "completed",      # "running", "completed", "diverged" or "interrupted"
     "environment": {"falign": "0.1.0", "python": "3.12.3", "torch": "...", "device": "cpu", ...},
     "alignment": [              # one entry per probed step (train.alignment_every > 0)
      {"step": 0, "epoch": 1, "layers": {"layers.0": {"update_angle": 88.1, ...}}}
     ],
     "stopped_early": false      # the early-stop tolerance ended training
    }

Version 2 is the same without ``test_loss``; version 1 (written before the record had a version)
is version 2 without ``schema_version``; both read as they are (``test_loss`` null).  A record of
a newer version than this module knows is refused with a one-line :class:`RecordError`.
Readers are lenient about what a record leaves out at its top level (a hand-written or partial
file): a missing entry takes the default of its field, a missing ``status`` reads as
``"unknown"``.  Within an epoch or alignment entry the keys train() always writes are required.

``config``, ``model_spec``, ``environment`` and the per-layer alignment measures stay plain
mappings: their schemas are those of the config (which migrates older keys itself), the model
registry, the machine and the probe, and a record must read even when its config would no longer
validate.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .base import RecordError, check_version, new_file_mode, read_json, write_json
from .base import get as _get
from .base import integer as _integer
from .base import mapping as _mapping
from .base import number as _number
from .base import sequence as _list

__all__ = ["RESUMED", "SCHEMA_VERSION", "AlignmentRecord", "EpochRecord", "RecordError", "RunRecord",
           "new_file_mode", "write_json"]

#: version of the ``tracking.json`` schema this module writes (a file without one is version 1)
SCHEMA_VERSION = 3
#: the statuses train() writes
STATUSES = ("running", "completed", "diverged", "interrupted")
#: the fields of a record that ``last.pt`` carries, so that a resumed run continues them
RESUMED = ("epochs", "best_epoch", "best_val_acc", "alignment", "stopped_early")


# -- the records ----------------------------------------------------------------------------------

@dataclass
class EpochRecord:
    """One completed epoch.  ``train_loss`` / ``train_acc`` are means over the epoch's batches
    while the weights moved; ``val_loss`` / ``val_acc`` are measured after it (None without a
    validation split); ``lr`` is the epoch's base learning rate; ``seconds`` its training time."""

    epoch: int
    train_loss: float
    train_acc: float
    train_errors: int | None
    lr: float
    seconds: float
    val_loss: float | None = None
    val_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "epoch record") -> EpochRecord:
        d = _mapping(d, "epochs[]", where)
        return cls(
            epoch=_integer(_get(d, "epoch", where), "epoch", where),
            train_loss=_number(_get(d, "train_loss", where), "train_loss", where),
            train_acc=_number(_get(d, "train_acc", where), "train_acc", where),
            train_errors=_integer(d.get("train_errors"), "train_errors", where, optional=True),
            lr=_number(_get(d, "lr", where), "lr", where),
            seconds=_number(_get(d, "seconds", where), "seconds", where),
            val_loss=_number(d.get("val_loss"), "val_loss", where, optional=True),
            val_acc=_number(d.get("val_acc"), "val_acc", where, optional=True),
        )


@dataclass
class AlignmentRecord:
    """The alignment probe on one training step (``train.alignment_every``): layer name ->
    measure -> value (``update_angle``, ``signal_angle``, ``feedback_angle``, ``norm_ratio``,
    ``sign_concordance``, ``update_sign_concordance``; None where a measure is undefined, see
    :mod:`falign.analysis.alignment`)."""

    step: int
    epoch: int
    layers: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch,
                "layers": {name: dict(values) for name, values in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "alignment record") -> AlignmentRecord:
        d = _mapping(d, "alignment[]", where)
        layers = _mapping(d.get("layers") or {}, "layers", where)
        return cls(step=_integer(_get(d, "step", where), "step", where),
                   epoch=_integer(_get(d, "epoch", where), "epoch", where),
                   layers={str(name): _mapping(values or {}, f"layers.{name}", where)
                           for name, values in layers.items()})


@dataclass
class RunRecord:
    """Everything one training run reports: what `train()` returns and ``tracking.json`` holds.

    Accuracies are fractions.  ``status`` is ``running``, ``completed``, ``diverged`` or
    ``interrupted`` (stopped by a signal: Ctrl-C, SIGTERM), ``unknown`` for a file that does not
    say; ``selected_on`` names the split ``best_epoch`` was chosen on (``val``, or ``test``
    without a validation split).  `read` takes every schema version up to `SCHEMA_VERSION`;
    `write` writes the newest, atomically.
    """

    config: dict[str, Any] = field(default_factory=dict)
    model_spec: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    test_acc: float | None = None
    #: the tested model's mean test loss (nats an example, a position for a language model:
    #: bits per character = test_loss / ln 2); None in records written before it existed
    test_loss: float | None = None
    selected_on: str = "val"
    status: str = "running"
    environment: dict[str, Any] = field(default_factory=dict)
    alignment: list[AlignmentRecord] = field(default_factory=list)
    stopped_early: bool = False

    # -- what readers ask -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Completed or diverged: resuming the run would train nothing more (a running or
        interrupted run is resumed from its ``last.pt``)."""
        return self.status in ("completed", "diverged")

    @property
    def val_curve(self) -> list[float]:
        """Validation accuracy (a fraction) after each epoch that measured one."""
        return [e.val_acc for e in self.epochs if e.val_acc is not None]

    @property
    def seconds_per_epoch(self) -> float | None:
        """Mean training time of an epoch (finite times only); None before the first epoch."""
        secs = [e.seconds for e in self.epochs if math.isfinite(e.seconds)]
        return sum(secs) / len(secs) if secs else None

    # -- plain form -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The ``tracking.json`` object (plain, JSON-ready containers; newest schema)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "config": self.config, "model_spec": self.model_spec, "dataset": self.dataset,
            "epochs": [e.to_dict() for e in self.epochs], "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc, "test_acc": self.test_acc, "test_loss": self.test_loss,
            "selected_on": self.selected_on, "status": self.status, "environment": self.environment,
            "alignment": [a.to_dict() for a in self.alignment], "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "run record") -> RunRecord:
        """A record from its plain form, of any schema version up to :data:`SCHEMA_VERSION`."""
        check_version(d, "schema_version", SCHEMA_VERSION, "run record schema", where)
        epochs = _list(d.get("epochs") or [], "epochs", where)
        alignment = _list(d.get("alignment") or [], "alignment", where)
        stopped = d.get("stopped_early", False)
        if not isinstance(stopped, bool):
            raise RecordError(f"{where}: 'stopped_early' is {stopped!r}, not true or false")
        return cls(
            config=_mapping(d.get("config") or {}, "config", where),
            model_spec=_mapping(d.get("model_spec") or {}, "model_spec", where),
            dataset=str(d.get("dataset") or ""),
            epochs=[EpochRecord.from_dict(e, f"{where}: epochs[{i}]") for i, e in enumerate(epochs)],
            best_epoch=_integer(d.get("best_epoch"), "best_epoch", where, optional=True),
            best_val_acc=_number(d.get("best_val_acc"), "best_val_acc", where, optional=True),
            test_acc=_number(d.get("test_acc"), "test_acc", where, optional=True),
            test_loss=_number(d.get("test_loss"), "test_loss", where, optional=True),
            selected_on=str(d.get("selected_on") or "val"),
            status=str(d.get("status") or "unknown"),
            environment=_mapping(d.get("environment") or {}, "environment", where),
            alignment=[AlignmentRecord.from_dict(a, f"{where}: alignment[{i}]")
                       for i, a in enumerate(alignment)],
            stopped_early=stopped,
        )

    # -- files ------------------------------------------------------------------------------------

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write ``tracking.json`` atomically."""
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunRecord:
        """Read a ``tracking.json``; :class:`RecordError` (naming the file) when it is not one."""
        return cls.from_dict(read_json(path), where=str(path))

    # -- the resumable part (last.pt) --------------------------------------------------------------

    def resumable(self) -> dict[str, Any]:
        """The fields a checkpoint carries (:data:`RESUMED`), as plain containers."""
        d = self.to_dict()
        return {k: d[k] for k in RESUMED}

    def resume(self, saved: Mapping[str, Any]) -> None:
        """Take the :data:`RESUMED` fields from a checkpoint's part (any falign's: the plain form
        has not changed since version 1)."""
        part = RunRecord.from_dict({k: saved[k] for k in RESUMED if k in saved}, "checkpoint")
        for k in RESUMED:
            setattr(self, k, getattr(part, k))

    # -- the dict train() returned before version 2 -------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        """``record["status"]``: the plain value, for code written when train() returned a dict.
        Deprecated: use the attributes (``record.status``)."""
        warnings.warn("indexing a RunRecord like the old tracking dict is deprecated; use its "
                      f"attributes (record.{key})", DeprecationWarning, stacklevel=2)
        return self.to_dict()[key]
