"""``results.txt``: the report's numbers as a fixed-width table, like a paper's results file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..rules import rule_spec
from .runs import Run, pct, summary

__all__ = ["JPEG_NOTE", "config_summary", "format_results", "is_jpeg", "model_text", "numeric_columns",
           "shared_or_each", "table"]

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
    return {"rule": rule_text, "optimiser": _g(optim.get("name")), "lr": _g(optim.get("lr")),
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


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def numeric_columns(rows: Sequence[Sequence[str]]) -> list[bool]:
    """Per column: every cell a number (or "-"), so it is right-aligned."""
    return [all(is_number(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Fixed-width table: numeric columns right-aligned, the others left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = numeric_columns(rows) or [False] * len(headers)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_results(runs: Sequence[Run], title: str, published: Mapping[str, Mapping[str, float]],
                   notes: Sequence[str] = ()) -> str:
    """The whole of ``results.txt``; ``published`` is title -> {label: %} (see published_columns)."""
    out = [title, "=" * len(title), ""]
    for name, describe in (("dataset", lambda r: r.tracking.get("dataset") or "unknown"),
                           ("model", model_text), ("seed", lambda r: _g(r.config.get("seed")))):
        for label, text in shared_or_each(runs, describe):
            out.append(f"{name}: {text}" if label is None else f"{name} ({label}): {text}")
    if any(is_jpeg(str(r.tracking.get("dataset") or "")) for r in runs):
        out += ["", f"NOTE: {JPEG_NOTE}"]
    configs = [config_summary(run) for run in runs]
    keys = ["rule", "optimiser", "lr", "weight decay"] + (
        ["scale"] if any(c["scale"] != "-" for c in configs) else [])
    summaries = [summary(run) for run in runs]
    status = any(s["status"] != "completed" for s in summaries)  # a column only when it says something
    headers = ["method", *keys, "best val %", "test %", "best epoch", *published,
               *(["status"] if status else [])]
    rows = []
    for run, cfg, s in zip(runs, configs, summaries, strict=True):
        rows.append([run.label, *(cfg[k] for k in keys), pct(s["best_val_acc"]), pct(s["test_acc"]),
                     _g(s["best_epoch"]),
                     *(f"{col[run.label]:.2f}" if run.label in col else "-" for col in published.values()),
                     *([s["status"]] if status else [])])
    out += ["", *table(headers, rows)]
    on_test = [run.label for run, s in zip(runs, summaries, strict=True) if s["selected_on"] != "val"]
    if on_test:
        out += ["", "best epoch chosen on the test set (no validation split), so 'best val %' is a test "
                f"accuracy for: {', '.join(on_test)}"]
    if notes:
        out += ["", "Notes:", *(f"- {note}" for note in notes)]
    out += ["", "Runs:", *(f"- {run.label}: {run.path}" for run in runs)]
    return "\n".join(out) + "\n"
