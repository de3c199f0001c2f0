"""The transformer target: a character language model and a small ViT under BP, FA, uSF, brSF,
KP and direct feedback placed as Launay et al. 2020 place it ("macro": block outputs; "micro":
three points a block).  Protocols: docs/protocols.md (char-transformer, vit-cifar10)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..training.compare import run_label
from ..training.record import RunRecord
from .base import Context, Outcome, Target, register_target

BLOCK = re.compile(r"^blocks\.(\d+)\.")


def block_angles(run_dir: Path, measure: str = "update_angle") -> dict[int, float]:
    """Block index -> the mean ``measure`` of its converted layers at the run's last probe."""
    record = RunRecord.read(run_dir / "tracking.json")
    for probe in reversed(record.alignment):
        by_block: dict[int, list[float]] = {}
        for layer, values in probe.layers.items():
            m = BLOCK.match(layer)
            if m and values.get(measure) is not None:
                by_block.setdefault(int(m.group(1)), []).append(float(values[measure]))
        if by_block:
            return {b: sum(v) / len(v) for b, v in sorted(by_block.items())}
    return {}


def _part(ctx: Context, outcome: Outcome, part: str, name: str, smoke: dict[str, Any],
          metric: str) -> dict[str, Any]:
    from ..plots import NothingToPlot, plot_curves

    cfg = ctx.config(name, smoke)
    folder, rows = ctx.compare(cfg, cfg.compare, part)
    outcome.run_dirs.append(folder)
    table: dict[str, Any] = {}
    angles: dict[str, list[float]] = {}
    for row in rows:
        run = folder / run_label(row.label)
        record = RunRecord.read(run / "tracking.json")
        entry: dict[str, Any] = {"test_acc": record.test_acc, "test_loss": record.test_loss}
        if metric == "bpc" and record.test_loss is not None:
            entry["test_bpc"] = record.test_loss / math.log(2)
        blocks = block_angles(run)
        entry["update_angle_by_block"] = [blocks[b] for b in sorted(blocks)]
        if blocks and row.label != "bp":
            angles[row.label] = entry["update_angle_by_block"]
        table[row.label] = entry
    depth = max((len(v) for v in angles.values()), default=0)
    angles = {k: v for k, v in angles.items() if len(v) == depth}
    if depth:
        try:
            paths = plot_curves(angles, folder / "block_angles", "Block", "Update vs BP gradient (degrees)",
                                f"{part}: last probe, mean over each block's layers",
                                x=list(range(1, depth + 1)))
            outcome.figures.append((f"Alignment per block ({part})", paths[0],
                                    "The angle between each rule's weight updates and backprop's, "
                                    "averaged over the converted layers of each block, at the last "
                                    "probe of training (90 deg: no alignment)."))
        except NothingToPlot:
            pass
    return table


def transformers(ctx: Context) -> Outcome:
    outcome = Outcome(run_dirs=[], published={}, notes=[
        "Published anchor (Launay et al. 2020): DFA trains transformers, with a larger gap to BP "
        "than on their other tasks; no number at this scale. The character model is test bits per "
        "character (lower is better), the ViT test accuracy.",
    ])
    tables = dict(ctx.measures.get("by_method") or {})
    for part in ("char", "vit"):  # an earlier call's part: in the report too
        if not ctx.wants(part) and (ctx.out / part / "compare.json").is_file():
            outcome.run_dirs.append(ctx.out / part)
    if ctx.wants("char"):
        tables["char"] = _part(ctx, outcome, "char", "char-transformer",
                               {"data.options.limit": 60000, "data.options.seq_len": 32,
                                "train.epochs": 1, "train.alignment_every": 5, "model.options.dim": 32,
                                "model.options.depth": 2},
                               "bpc")
    if ctx.wants("vit"):
        tables["vit"] = _part(ctx, outcome, "vit", "vit-cifar10",
                              {"data.subset": 400, "train.epochs": 1, "train.alignment_every": 2,
                               "model.options.dim": 32, "model.options.depth": 2}, "acc")
    ctx.trained()
    ctx.measure("by_method", tables)
    char, vit = tables.get("char", {}), tables.get("vit", {})
    bpc = {k: e.get("test_bpc") for k, e in char.items()}
    acc = {k: e.get("test_acc") for k, e in vit.items()}
    labels = list(dict.fromkeys([*char, *vit]))

    def cell(value, base, scale=1.0, fmt="{:.3f}"):
        if value is None:
            return "-"
        text = fmt.format(scale * value)
        if base is not None and value is not base:
            text += f" ({scale * (value - base):+.2f})" if scale != 1.0 else f" ({value - base:+.3f})"
        return text

    cells = [[k, cell(bpc.get(k), bpc.get("bp")), cell(acc.get(k), acc.get("bp"), 100.0, "{:.2f}")]
             for k in labels]
    if cells:
        from ..training.results import format_table

        outcome.notes.append("Test bits per character (character model; gap to BP) and test accuracy % "
                             "(ViT; gap to BP)\n" + format_table(["method", "char bits/char", "ViT test %"],
                                                                 cells))
    if bpc.get("bp") is not None:
        base = bpc["bp"]
        gaps = {k: v - base for k, v in bpc.items() if k != "bp" and v is not None}
        if gaps:
            ctx.measure("char_gap_to_bp_bpc", gaps)
            order = sorted(gaps.items(), key=lambda kv: kv[1])
            outcome.notes.append("Gap to BP on the character model, relative to BP's bits/char: " + ", ".join(
                f"{k} {100 * v / base:+.1f}%" for k, v in order))
    return outcome


register_target(Target("transformers", "Transformers under BP, FA, sign symmetry, KP and DFA",
                       "Launay, Poli, Boniface & Krzakala 2020, Direct feedback alignment scales to "
                       "modern deep learning tasks and architectures, NeurIPS", transformers,
                       metric="none published at this scale (anchor: DFA's gap to BP)",
                       parts=("char", "vit")))
