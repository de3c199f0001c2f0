"""The results table: one row per run (best validation and test accuracy, best epoch, epochs,
time per epoch, status), written as fixed-width text or Markdown, or handed as cells to HTML.

``falign compare``'s printed table and ``summary.md``, the sweep summary and the report's
``results.txt`` and HTML tables all come out of :func:`format_table`, so one run reads the same
everywhere::

    rows = [ResultRow.of(label, record) for label, record in records.items()]
    print(format_results(rows, RESULT_COLUMNS, label="rule"))
    print(format_results(rows, [*RESULT_COLUMNS, by_label("published test %", {"fa": "97.90"})]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .record import RunRecord

__all__ = ["COLUMNS", "RESULT_COLUMNS", "Column", "ResultRow", "by_label", "format_results",
           "format_table", "numeric_columns", "pct", "result_cells", "seconds"]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass
class ResultRow:
    """The numbers of one run's results row (accuracies as fractions, None when absent)."""

    label: str
    best_val_acc: float | None
    test_acc: float | None
    best_epoch: int | None
    epochs: int
    sec_per_epoch: float | None
    status: str
    selected_on: str = "val"
    val_curve: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, label: str, record: RunRecord) -> ResultRow:
        return cls(label=label, best_val_acc=_finite(record.best_val_acc),
                   test_acc=_finite(record.test_acc), best_epoch=record.best_epoch,
                   epochs=len(record.epochs), sec_per_epoch=record.seconds_per_epoch,
                   status=record.status, selected_on=record.selected_on,
                   val_curve=record.val_curve)


# -- cells ----------------------------------------------------------------------------------------

def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; "-" when absent."""
    return "-" if value is None else f"{100 * value:.2f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


@dataclass(frozen=True)
class Column:
    """A column of the results table: its title and the text of a row's cell."""

    title: str
    cell: Callable[[ResultRow], str]


COLUMNS: dict[str, Column] = {c.title: c for c in (
    Column("best val %", lambda r: pct(r.best_val_acc)),
    Column("test %", lambda r: pct(r.test_acc)),
    Column("best epoch", lambda r: "-" if r.best_epoch is None else str(r.best_epoch)),
    Column("epochs", lambda r: str(r.epochs)),
    Column("s/epoch", lambda r: seconds(r.sec_per_epoch)),
    Column("status", lambda r: r.status),
)}
#: the columns of a run's results row, in their usual order
RESULT_COLUMNS: tuple[str, ...] = tuple(COLUMNS)


def by_label(title: str, values: Mapping[str, str], missing: str = "-") -> Column:
    """A column of text given per row label (a config value, a published number)."""
    return Column(title, lambda r: values.get(r.label, missing))


def result_cells(rows: Sequence[ResultRow], columns: Sequence[str | Column] = RESULT_COLUMNS, *,
                 label: str = "method") -> tuple[list[str], list[list[str]]]:
    """(headers, cells): the label column titled ``label``, then ``columns`` (names of
    :data:`COLUMNS` or :class:`Column` objects)."""
    cols = [COLUMNS[c] if isinstance(c, str) else c for c in columns]
    return [label, *(c.title for c in cols)], [[r.label, *(c.cell(r) for c in cols)] for r in rows]


# -- tables ---------------------------------------------------------------------------------------

def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def numeric_columns(cells: Sequence[Sequence[str]]) -> list[bool]:
    """Per column: every cell a number (or "-"), so it is right-aligned."""
    return [all(_is_number(r[i]) for r in cells) for i in range(len(cells[0]))] if cells else []


def format_table(headers: Sequence[str], cells: Sequence[Sequence[str]], *, style: str = "text") -> str:
    """``text``: fixed width, a rule under the headers, numeric columns right-aligned, the others
    left-aligned; ``markdown``: a pipe table, numeric columns right-aligned."""
    right = numeric_columns(cells) or [False] * len(headers)
    if style == "markdown":
        def row(values: Sequence[str]) -> str:
            return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

        rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
        return "\n".join([row(headers), rule, *(row(r) for r in cells)])
    if style != "text":
        raise ValueError(f"style must be 'text' or 'markdown', not {style!r}")
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(values, widths, right, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def format_results(rows: Sequence[ResultRow], columns: Sequence[str | Column] = RESULT_COLUMNS, *,
                   label: str = "method", style: str = "text") -> str:
    """The results table of ``rows`` (see :func:`result_cells` and :func:`format_table`)."""
    return format_table(*result_cells(rows, columns, label=label), style=style)
