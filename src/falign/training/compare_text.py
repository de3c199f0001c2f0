"""A comparison's tables and ``summary.md``, drawn from its record
(:class:`falign.records.CompareRecord`) and its statistics (:mod:`falign.training.statistics`).

``run_compare`` and ``run_compare_seeds`` log :func:`compare_table` / :func:`seed_table` and
write :func:`summary_markdown` / :func:`seed_summary_markdown` of the record they save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..records import CompareRecord
from .results import format_results, format_table, seconds
from .statistics import SeedRuns, result_rows, seed_groups

__all__ = ["COMPARE_COLUMNS", "SEED_COLUMNS", "compare_table", "format_seed_results", "pct_pm",
           "seed_cells", "seed_summary_markdown", "seed_table", "summary_markdown"]

#: the columns of a comparison's table (after the method's label)
COMPARE_COLUMNS = ("best val %", "test %", "epochs", "s/epoch", "status")
#: the columns of the table over seeds (after the method's label)
SEED_COLUMNS = ("seeds", "best val % (mean ± std)", "test % (mean ± std)", "epochs", "s/epoch", "status")


def pct_pm(mean: float | None, std: float | None) -> str:
    """A mean ± std of fractions as percentages with two decimals; "-" when absent."""
    return "-" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def _seed_text(seeds: Sequence[Any]) -> str:
    return ",".join(str(s) for s in seeds)


def seed_cells(groups: Sequence[SeedRuns], *, label: str = "rule") -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of the table over seeds: one row per method."""
    cells = [[g.label, _seed_text(g.seeds), pct_pm(*g.mean_std("best_val_acc")),
              pct_pm(*g.mean_std("test_acc")), g.epochs, seconds(g.mean_std("sec_per_epoch")[0]),
              g.status] for g in groups]
    return [label, *SEED_COLUMNS], cells


def format_seed_results(groups: Sequence[SeedRuns], *, label: str = "rule", style: str = "text") -> str:
    return format_table(*seed_cells(groups, label=label), style=style)


def _base(record: CompareRecord) -> dict[str, Any]:
    return record.base or {}


def _setting(base: dict[str, Any]) -> str:
    return f"{base['data']['name']} / {base['model']['name']}"


def _training(base: dict[str, Any]) -> str:
    return (f"{base['train']['epochs']} epochs, optimiser {base['optim']['name']} "
            f"lr {base['optim']['lr']}, batch {base['train']['batch_size']}.")


def compare_table(record: CompareRecord) -> str:
    """The table ``run_compare`` logs: a line naming the setting, then one row per method."""
    base = _base(record)
    return (f"{_setting(base)}, seed {base['seed']}\n"
            + format_results(result_rows(record), COMPARE_COLUMNS, label="rule"))


def summary_markdown(record: CompareRecord) -> str:
    """``summary.md`` of a comparison of one seed."""
    base = _base(record)
    md = [f"# falign compare: {_setting(base)}", "",
          f"Seed {base['seed']}, {_training(base)}", "",
          format_results(result_rows(record), COMPARE_COLUMNS, label="rule", style="markdown"),
          "", "![validation accuracy](val_acc.png)", ""]
    return "\n".join(md)


def seed_table(record: CompareRecord) -> str:
    """The table ``run_compare_seeds`` logs: a line naming the setting, then one row per method."""
    seeds = list(record.seeds or ())
    return (f"{_setting(_base(record))}, seeds {_seed_text(seeds)} "
            f"(mean ± sample std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''})\n"
            + format_seed_results(seed_groups(record)))


def seed_summary_markdown(record: CompareRecord) -> str:
    """``summary.md`` of a comparison over seeds."""
    seeds = list(record.seeds or ())
    md = [f"# falign compare: {_setting(_base(record))}", "",
          f"Seeds {_seed_text(seeds)} (mean ± sample standard deviation over the seeds), "
          f"{_training(_base(record))}", "",
          format_seed_results(seed_groups(record), style="markdown"), "",
          "![mean and standard deviation over seeds](seeds.png)", ""]
    return "\n".join(md)
