"""Records of the stages after training that need a target's trained models: the retraining of a
final run whose model a machine change lost (``retrain.json`` beside the run's record), and the
analyses of the finals side by side (``analyses.json``, Lance & Kieu 2026's alignment, sign
concordance, CKA and exemplars), both committed by the evidence queue and read into the target's
summary (``measures``).

``retrain.json``, version 1::

    {"version": 1, "run": "sweep/final/bp-seed42", "threads": 1,
     "against": "summary",                  # "record": the committed tracking.json; "summary":
                                            # only the summary's numbers; "nothing"
     "same_first_epoch_record": null,       # null unless compared with a committed record
     "differences": {"test_acc": [0.7356, 0.7361]},   # what differs: [committed, retrained]
     "compared": ["test_acc", "best_val_acc", "best_epoch", "epochs"],
     "test_acc": 0.7361}

``analyses.json``, version 1::

    {"version": 1, "scale": "full", "models": {"bp": "sweep/final/bp-seed42", ...},
     "alignment": {"fa": {"conv1": {"epoch": [1, 2, ...], "update_angle": [...],
                                    "sign_concordance": [...], "update_sign_concordance": [...]}}},
     "cka": {"fa": {"all": {"n": 10000, "used": 9984, "layers": [...], "diagonal": [...],
                            "skipped": null}, "both_correct": {...}, "ref_correct_other_wrong": {...}}},
     "exemplars": {"fa": {"layer": "conv2", "channels": [3, 17], "indices": {"3": [12, 40]}}},
     "fixed_feedback": ["fa: 4 fixed feedback tensors unchanged ..."],
     "figures": ["alignment.png", "cka-all.png", ...]}    # beside the record

Alignment values are the mean over an epoch's probes (``train.alignment_every``), None where a
measure is undefined (BP's own angle, a layer without feedback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import check_version, integer, mapping, number, read_json, sequence, text, write_json

__all__ = ["ANALYSES_VERSION", "AnalysesRecord", "ModelRetrain"]

#: version of both forms this module writes (key ``version``)
ANALYSES_VERSION = 1


@dataclass(frozen=True)
class ModelRetrain:
    """A final run retrained from its committed config (same seed, same thread count) because
    its model was gone, and how its record compares with what was committed: the first epoch's
    record where a committed ``tracking.json`` exists (``against="record"``), else the numbers
    the committed summary kept (``"summary"``)."""

    run: str
    threads: int | None
    against: str
    same_first_epoch_record: bool | None
    differences: dict[str, Any] = field(default_factory=dict)
    compared: tuple[str, ...] = ()
    test_acc: float | None = None

    @property
    def identical(self) -> bool:
        """Nothing compared differs (and something was compared)."""
        return bool(self.compared) and not self.differences

    def describe(self) -> str:
        """One line: what was compared and what came out."""
        if self.against == "nothing":
            return f"{self.run}: retrained; nothing committed to compare with"
        what = "first-epoch record" if self.against == "record" else "summary numbers"
        if self.identical:
            return f"{self.run}: retrained, {what} identical ({', '.join(self.compared)})"
        diffs = "; ".join(f"{k} {a} -> {b}" for k, (a, b) in self.differences.items())
        return f"{self.run}: retrained, {what} differ (committed -> retrained: {diffs})"

    def to_dict(self) -> dict[str, Any]:
        return {"version": ANALYSES_VERSION, "run": self.run, "threads": self.threads,
                "against": self.against, "same_first_epoch_record": self.same_first_epoch_record,
                "differences": {k: list(v) for k, v in self.differences.items()},
                "compared": list(self.compared), "test_acc": self.test_acc}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ModelRetrain:
        check_version(d, "version", ANALYSES_VERSION, "retrain record", where)
        same = d.get("same_first_epoch_record")
        return cls(run=str(d.get("run")), threads=integer(d.get("threads"), "threads", where, optional=True),
                   against=text(d.get("against") or "nothing", "against", where),
                   same_first_epoch_record=None if same is None else bool(same),
                   differences={str(k): tuple(sequence(v, f"differences.{k}", where)) for k, v
                                in mapping(d.get("differences") or {}, "differences", where).items()},
                   compared=tuple(str(c) for c in sequence(d.get("compared") or [], "compared", where)),
                   test_acc=number(d.get("test_acc"), "test_acc", where, optional=True))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelRetrain:
        return cls.from_dict(read_json(path), where=str(path))


@dataclass(frozen=True)
class AnalysesRecord:
    """The analyses of a target's final models side by side (see the module docstring)."""

    scale: str
    models: dict[str, str]
    alignment: dict[str, dict[str, dict[str, list[Any]]]] = field(default_factory=dict)
    cka: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    exemplars: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixed_feedback: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"version": ANALYSES_VERSION, "scale": self.scale, "models": dict(self.models),
                "alignment": self.alignment, "cka": self.cka, "exemplars": self.exemplars,
                "fixed_feedback": list(self.fixed_feedback), "figures": list(self.figures)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> AnalysesRecord:
        check_version(d, "version", ANALYSES_VERSION, "analyses record", where)

        def nested(key: str) -> dict[str, Any]:
            return {str(k): mapping(v, f"{key}.{k}", where)
                    for k, v in mapping(d.get(key) or {}, key, where).items()}

        return cls(scale=text(d.get("scale"), "scale", where),
                   models={str(k): str(v)
                           for k, v in mapping(d.get("models") or {}, "models", where).items()},
                   alignment=nested("alignment"), cka=nested("cka"), exemplars=nested("exemplars"),
                   fixed_feedback=tuple(str(s) for s in sequence(d.get("fixed_feedback") or [],
                                                                 "fixed_feedback", where)),
                   figures=tuple(str(s) for s in sequence(d.get("figures") or [], "figures", where)))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnalysesRecord:
        return cls.from_dict(read_json(path), where=str(path))
