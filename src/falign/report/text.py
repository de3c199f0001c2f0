"""``results.txt``: the report's numbers as a fixed-width table, like a paper's results file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..rules import rule_spec
from ..training.results import Column, by_label, format_results
from .runs import Run, summary

if TYPE_CHECKING:
    from ..training.statistics import SeedRuns

__all__ = ["JPEG_NOTE", "config_summary", "is_jpeg", "model_text", "published_cells", "results_txt",
           "shared_or_each"]

JPEG_NOTE = ("Numbers are on the lossy JPEG copy of the dataset (images re-encoded as JPEG), not on "
             "the original images: they are not directly comparable with published results.")


def is_jpeg(description: str) -> bool:
    return "jpeg" in description.lower()


def _g(value: Any) -> str:
    return "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def config_summary(run: Run) -> dict[str, str]:
    """rule (with its options), optimiser, lr, weight decay and B's scale of one run, as text."""
    cfg = run.config
    rule = cfg.get("rule") or {}
    _, options = rule_spec(str(rule.get("name", "")), rule.get("options"))  # the variant is in the label
    scale = options.pop("scale", None)
    rule_text = run.rule + "".join(f" {k}={_g(v)}" for k, v in options.items())
    optim = cfg.get("optim") or {}
    optimiser = _g(optim.get("name"))
    fb = optim.get("feedback")
    if fb:  # the trained feedback's own optimizer (optim.feedback)
        schedule = fb.get("schedule") or {}
        decay = f", x{_g(schedule.get('gamma'))} an epoch" if schedule.get("name") == "exponential" else \
            ("" if schedule.get("name") in (None, "constant") else f", {schedule['name']}")
        optimiser += f" (B: {_g(fb.get('name'))} lr {_g(fb.get('lr'))}{decay})"
    return {"rule": rule_text, "optimiser": optimiser, "lr": _g(optim.get("lr")),
            "weight decay": _g(optim.get("weight_decay")), "scale": _g(scale)}


def shared_or_each(runs: Sequence[Run], describe) -> list[tuple[str | None, str]]:
    """[(None, text)] when every run gives the same text, else [(label, text), ...]."""
    texts = [(run.label, str(describe(run))) for run in runs]
    if len({text for _, text in texts}) == 1:
        return [(None, texts[0][1])]
    return texts


def model_text(run: Run) -> str:
    model = run.config.get("model") or {}
    options = model.get("options") or {}
    return str(model.get("name", "?")) + "".join(f" {k}={_g(v)}" for k, v in options.items())


def results_txt(runs: Sequence[Run], title: str, published: Mapping[str, Mapping[str, float]],
                notes: Sequence[str] = (), seed_groups: Sequence[SeedRuns] = ()) -> str:
    """The whole of ``results.txt``; ``published`` is title -> {label: %} (see published_columns);
    ``seed_groups`` the runs that differ only in the seed (a table of mean ± std)."""
    out = [title, "=" * len(title), ""]
    for name, describe in (("dataset", lambda r: r.record.dataset or "unknown"),
                           ("model", model_text), ("seed", lambda r: _g(r.config.get("seed")))):
        for label, text in shared_or_each(runs, describe):
            out.append(f"{name}: {text}" if label is None else f"{name} ({label}): {text}")
    if any(is_jpeg(r.record.dataset) for r in runs):
        out += ["", f"NOTE: {JPEG_NOTE}"]
    configs = {run.label: config_summary(run) for run in runs}
    keys = ["rule", "optimiser", "lr", "weight decay"] + (
        ["scale"] if any(c["scale"] != "-" for c in configs.values()) else [])
    rows = [summary(run) for run in runs]
    status = any(r.status != "completed" for r in rows)  # a column only when it says something
    columns = [*(by_label(k, {label: c[k] for label, c in configs.items()}) for k in keys),
               "best val %", "test %", "best epoch", *published_cells(published),
               *(["status"] if status else [])]
    out += ["", format_results(rows, columns, label="method")]
    on_test = [r.label for r in rows if r.selected_on == "test"]
    if on_test:
        out += ["", "best epoch chosen on the test set (no validation split), so 'best val %' is a test "
                f"accuracy for: {', '.join(on_test)}"]
    last = [r.label for r in rows if r.selected_on == "last"]
    if last:
        out += ["", f"no model selection (train.select_on: last): the last epoch is tested for: "
                f"{', '.join(last)}"]
    if seed_groups:
        from ..training.compare_text import format_seed_results

        out += ["", "Mean ± sample std over seeds (runs whose configs differ only in the seed):",
                format_seed_results(seed_groups, label="method")]
    if notes:
        out += ["", "Notes:", *(f"- {note}" for note in notes)]
    out += ["", "Runs:", *(f"- {run.label}: {run.path}" for run in runs)]
    return "\n".join(out) + "\n"


def published_cells(published: Mapping[str, Mapping[str, float]]) -> list[Column]:
    """The published columns (title -> {label: %}) as results-table columns, "-" where absent."""
    return [by_label(title, {label: f"{v:.2f}" for label, v in values.items()})
            for title, values in published.items()]
