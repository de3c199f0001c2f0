"""Per-class classification metrics: confusion matrix, precision, recall, F1.

The conventions follow scikit-learn's ``classification_report`` with ``zero_division=0``:
a class that is never predicted has precision 0, a class that never occurs has recall 0, and
F1 is 0 where precision + recall is 0. Macro averages run over all ``num_classes`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ClassificationReport", "classification_report"]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0 (float64)."""
    num = num.to(torch.float64)
    den = den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


@dataclass
class ClassificationReport:
    """Metrics of one set of predictions; per-class tensors have shape (num_classes,)."""

    confusion: Tensor  # (C, C) int64, rows = true class, columns = predicted class
    precision: Tensor  # (C,) float64
    recall: Tensor  # (C,) float64
    f1: Tensor  # (C,) float64
    support: Tensor  # (C,) int64, examples of each true class
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    def to_text(self, digits: int = 2) -> str:
        """A table laid out like scikit-learn's ``classification_report``."""
        headers = ("precision", "recall", "f1-score", "support")
        width = max([len(name) for name in self.class_names] + [len("weighted avg"), digits])
        total = int(self.support.sum())

        def row(name: str, values: Sequence[float | None], count: int) -> str:
            cells = ["" if v is None else f"{v:.{digits}f}" for v in values]
            return f"{name:>{width}} " + "".join(f" {c:>9}" for c in cells) + f" {count:>9}"

        lines = [f"{'':>{width}} " + "".join(f" {h:>9}" for h in headers), ""]
        for i, name in enumerate(self.class_names):
            values = (float(self.precision[i]), float(self.recall[i]), float(self.f1[i]))
            lines.append(row(name, values, int(self.support[i])))
        lines.append("")
        lines.append(row("accuracy", (None, None, self.accuracy), total))
        macro = (self.macro_precision, self.macro_recall, self.macro_f1)
        lines.append(row("macro avg", macro, total))
        weighted = (self.weighted_precision, self.weighted_recall, self.weighted_f1)
        lines.append(row("weighted avg", weighted, total))
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()


def _as_labels(values: Tensor | Sequence[int], what: str) -> Tensor:
    t = torch.as_tensor(values).detach().cpu()
    if t.dim() == 2 and what == "y_pred":
        t = t.argmax(1)  # logits or scores (n, C)
    if t.dim() != 1:
        raise ValueError(f"{what} must be 1-D class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"{what} holds non-integer values")
    return t.to(torch.int64)


def classification_report(
    y_true: Tensor | Sequence[int],
    y_pred: Tensor | Sequence[int],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ClassificationReport:
    """Confusion matrix and per-class / averaged precision, recall and F1.

    ``y_pred`` may also be scores (n, C), reduced by argmax. ``num_classes`` defaults to
    ``len(class_names)`` or to one more than the largest label seen.
    """
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.numel()} vs {p.numel()}")
    if t.numel() == 0:
        raise ValueError("no examples")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(max(t.max(), p.max())) + 1
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    low, high = int(min(t.min(), p.min())), int(max(t.max(), p.max()))
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found [{low}, {high}]")

    c = num_classes
    confusion = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)  # (true, pred)
    tp = confusion.diagonal()
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    weights = support.to(torch.float64) / support.sum()
    return ClassificationReport(
        confusion=confusion,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        accuracy=float(tp.sum()) / t.numel(),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        weighted_precision=float((weights * precision).sum()),
        weighted_recall=float((weights * recall).sum()),
        weighted_f1=float((weights * f1).sum()),
        class_names=list(class_names),
    )
