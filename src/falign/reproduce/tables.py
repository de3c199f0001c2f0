"""The tables of measured against published numbers, made from reproductions' ``results.json``.

``python -m falign.reproduce.tables results/ --write README.md docs/experiments/results.md``
rewrites the block between ``<!-- falign:results -->`` and ``<!-- /falign:results -->`` of each
file from the summaries in ``results/``, so the published tables are the committed data (a
test checks they agree).  One table per target: each method's test accuracy over its seeds
(mean ± sample std), the published number, both gaps to BP, and whether the difference is
within the tolerance of its dataset:

* CIFAR-10 (the JPEG copy): 3.5 points, and each method's gap to BP within 2 points of the
  published gap;
* MNIST: 0.3 points; Fashion-MNIST: 1.0 point.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..records import MethodSummary, RecheckRecord, ReproductionSummary
from ..training.statistics import mean_std

BEGIN, END = "<!-- falign:results -->", "<!-- /falign:results -->"

#: dataset -> (points of test accuracy, points of the gap to BP); None: no gap condition
TOLERANCE = {"cifar10-jpeg": (3.5, 2.0), "cifar10": (3.5, 2.0), "mnist": (0.3, None),
             "fashion-mnist": (1.0, None)}


@dataclass(frozen=True)
class Committed:
    """A committed summary ``results/NAME.json`` and its re-check ``results/checks/NAME.json``
    (``python -m falign.reproduce.recheck``), where there is one."""

    summary: ReproductionSummary
    recheck: RecheckRecord | None = None


def load_results(folder: str | Path) -> list[Committed]:
    """The summaries ``folder/NAME.json``, each with its re-check where there is one."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        check = path.parent / "checks" / path.name
        out.append(Committed(ReproductionSummary.load(path),
                             RecheckRecord.load(check) if check.is_file() else None))
    return out


def provenance_lines(summary: ReproductionSummary, check: RecheckRecord | None = None) -> list[str]:
    """Which code trained the runs, when it is not the code that wrote the summary, and what
    the re-check of their first epoch on later code found."""
    made_by = summary.commit
    trained = {r.commit for m in summary.methods for r in m.runs
               if not r.missing and r.trained_by_recorded}
    # (summaries written before runs recorded their commit have no "trained_by": nothing to say)
    lines = []
    if trained and trained != {made_by}:
        by = [", ".join(sorted(c[:10] for c in trained if c))]
        if None in trained:
            by.append("falign code from before runs recorded their commit")
        lines.append("Runs trained by " + " and ".join(b for b in by if b) + ".")
    if check:
        runs = check.checks
        same = sum(r.passed for r in runs)
        weights = sum(r.same_epoch_1_weights is True for r in runs)
        at = (check.commit or "?")[:10]
        lines.append(f"Re-check on {at} (`python -m falign.reproduce.recheck`): the first epoch of "
                     f"{same} of {len(runs)} runs retrained with an identical record"
                     + (f", {weights} with identical epoch-1 weights" if weights else "") + ".")
    return ["", " ".join(lines)] if lines else []


def _pct(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + (f" ± {100 * (std or 0):.2f}" if n > 1 else "")


def verdict(method: MethodSummary, bp: MethodSummary | None) -> str:
    """"yes" / "no" / "-": whether the measured accuracy (and gap to BP) is within tolerance."""
    tol = TOLERANCE.get(method.dataset or "")
    mean, published = method.test_acc_mean, method.published
    if tol is None or mean is None or published is None:
        return "-"
    ok = abs(100 * mean - published) <= tol[0]
    if tol[1] is not None and bp is not None and method is not bp and bp.test_acc_mean is not None \
            and bp.published is not None:
        gap, published_gap = 100 * (mean - bp.test_acc_mean), published - bp.published
        ok = ok and abs(gap - published_gap) <= tol[1]
    return "yes" if ok else "no"


def _unfinished(method: MethodSummary) -> str:
    """The measured cell of a method with no finished run: how far its runs got."""
    if all(r.missing for r in method.runs):
        return "not run"
    total = ((method.config or {}).get("train") or {}).get("epochs")
    done = ", ".join(str(r.epochs or 0) for r in method.runs)
    return f"unfinished: {done}" + (f" of {total} epochs" if total else " epochs")


def by_setting(method: MethodSummary) -> list[MethodSummary]:
    """A method whose runs are settings x seeds (run directories ``part/RULE/SETTING/seedN``, as
    a sweep over one constraint's values, where RULE is the method or a rule measured beside it):
    one entry a rule and setting ("fa 256", "sdfa 2"), with its own seeds and mean over them,
    once one of its runs finished; otherwise the method itself (its runs are its seeds)."""
    prefix = f"{method.part}/"
    groups: dict[str, list] = {}
    for r in method.runs:
        rest = r.run_dir[len(prefix):].split("/") if r.run_dir.startswith(prefix) else []
        if len(rest) != 3 or not re.fullmatch(r"seed\d+", rest[2]):
            return [method]
        groups.setdefault(f"{rest[0]} {rest[1]}", []).append(r)
    if len(groups) < 2 or all(r.test_acc is None for r in method.runs):
        return [method]
    out = []
    for label, runs in groups.items():
        mean, std = mean_std([r.test_acc for r in runs])
        out.append(replace(method, method=label, runs=tuple(runs), seeds=tuple(r.seed for r in runs),
                           test_acc_mean=mean, test_acc_std=std))
    return out


def target_table(summary: ReproductionSummary, check: RecheckRecord | None = None) -> str:
    """Markdown: a heading, how it was made, and the table of the target's methods (and what the
    re-check ``check`` of its runs found)."""
    name, hw = summary.target, summary.hardware
    status = summary.status
    lines = [f"#### `{name}`: {summary.title}", ""]
    done, every = summary.parts_completed, summary.all_parts
    made = (f"`falign reproduce {name} --scale {summary.scale}"
            + ("" if set(done) == set(every) else "".join(f" --part {p}" for p in done)) + "`")
    hours = (summary.compute_seconds or 0) / 3600
    lines.append(f"{made}; falign {summary.falign}"
                 + (f" at {summary.commit[:10]}" if summary.commit else "")
                 + f", torch {summary.torch}; {hw.get('cpu') or 'CPU'} ({hw.get('cpus')} cores"
                 + (f", {hw['gpu']}" if hw.get("gpu") else "") + f"); {hours:.1f} h of training"
                 + ("" if status == "completed" else f"; **status: {status}**"
                    + ("" if status == "partial" else " (partial)")) + ".")
    lines.append("")
    methods = summary.methods
    has_published = any(m.published is not None for m in methods)
    parts = len({m.part for m in methods}) > 1
    metric = summary.published_metric or "published"
    # a published number that is not a test accuracy (a loss) has no accuracy gap or verdict
    accuracy = "accuracy" in metric
    head = (["part"] if parts else []) + ["method", "seeds", "test % (measured)"]
    if has_published:
        head += ([metric, "gap to BP (measured / published)", "within tolerance"] if accuracy
                 else [f"published: {metric}", "its gap to BP (published)"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in (row for method in methods for row in by_setting(method)):
        bp = next((o for o in methods if o.part == m.part and o.method == "bp"), None)
        n = sum(r.test_acc is not None for r in m.runs)
        row = ([m.part or ""] if parts else []) + [
            m.method, ", ".join(str(s) for s in m.seeds if s is not None) or "-",
            _pct(m.test_acc_mean, m.test_acc_std, n) if n else _unfinished(m)]
        pub = m.published
        gap = "-"
        if has_published and not accuracy:
            if bp is not None and m is not bp and pub is not None and bp.published is not None:
                gap = f"{pub - bp.published:+.4g}"
            row += ["-" if pub is None else f"{pub:g}", gap]
        elif has_published:
            if bp is not None and m is not bp and m.test_acc_mean is not None \
                    and bp.test_acc_mean is not None:
                gap = f"{100 * (m.test_acc_mean - bp.test_acc_mean):+.2f}"
                if pub is not None and bp.published is not None:
                    gap += f" / {pub - bp.published:+.2f}"
            row += ["-" if pub is None else f"{pub:g}", gap, verdict(m, bp)]
        lines.append("| " + " | ".join(row) + " |")
    if any("jpeg" in (m.dataset or "") for m in methods):
        lines += ["", "CIFAR-10 here is the lossy JPEG copy (\"CIFAR-10 (JPEG copy)\")."]
    lines += measure_lines(summary.measures)
    lines += provenance_lines(summary, check)
    return "\n".join(lines)


def measure_lines(measures: dict[str, Any]) -> list[str]:
    """The targets' own numbers: bits per character, delta angles, the linear loss table."""
    out: list[str] = []
    if measures.get("progress when stopped"):  # a stopped sweep: how far each method's search got
        out += _progress_lines(measures["progress when stopped"])
    by = measures.get("by_method") or {}
    if by.get("char") or by.get("vit"):
        labels = list(dict.fromkeys([*(by.get("char") or {}), *(by.get("vit") or {})]))
        out += ["", "| method | char model: test bits/char | ViT: test % |", "|---|---|---|"]
        for k in labels:
            bpc = (by.get("char") or {}).get(k, {}).get("test_bpc")
            acc = (by.get("vit") or {}).get(k, {}).get("test_acc")
            out.append(f"| {k} | {'-' if bpc is None else f'{bpc:.3f}'} | "
                       f"{'-' if acc is None else f'{100 * acc:.2f}'} |")
    angles = measures.get("final_delta_angle_deg") or {}
    if angles:
        out += ["", "| part | method | final hidden-layer delta angle (deg) | published |",
                "|---|---|---|---|"]
        for part, by_method in angles.items():
            for k, a in by_method.items():
                pub = a.get("published")
                out.append(f"| {part} | {k} | {a['mean']:.1f} ± {a.get('std') or 0:.1f} | "
                           f"{'-' if pub is None else f'about {pub:g}'} |")
    table = measures.get("loss_table")
    if table:
        m, p = table["measured"], table["published"]
        above = ", ".join(str(a) for a in m["fa_above_bp_per_seed"])
        out += ["", f"Single-batch losses at the table's {m['points']} points: FA above BP at {above} "
                f"points (per seed), published {p['fa_above_bp']} of {p['points']}; mean FA "
                f"{m['fa_mean']:.3f} vs BP {m['bp_mean']:.3f} (published {p['fa_mean']:.3f} vs "
                f"{p['bp_mean']:.3f})."]
    return out


def _progress_lines(progress: dict[str, Any]) -> list[str]:
    parts = []
    for label, p in progress.items():
        final = ", ".join(str(e) for e in p.get("final_epochs_done") or [])
        parts.append(f"{label} {p.get('trials_completed')}/{p.get('grid_points')} grid points, final "
                     f"run {final}/{p.get('final_epochs')} epochs")
    return ["", "Stopped with: " + "; ".join(parts) + "."]


def render(committed: Sequence[Committed]) -> str:
    if not committed:
        return "*No full-scale result is committed yet.*"
    return "\n\n".join(target_table(c.summary, c.recheck) if c.summary.target not in OWN_PAGE
                       else own_page(c.summary) for c in committed)


#: targets whose results have a docs page of their own, made from their summary
OWN_PAGE = {"rule-guide": "docs/choosing-a-rule.md"}


def own_page(summary: ReproductionSummary) -> str:
    name, units = summary.target, summary.units
    done = f"{len(units.done)} of {units.total} units" if units else summary.status
    return (f"#### `{name}`: {summary.title}\n\nIts tables and figure are on a page of their "
            f"own, `{OWN_PAGE[name]}` ({done}; status: {summary.status}).")


def rewrite(path: Path, block: str) -> bool:
    """Put ``block`` between the markers of ``path``; whether the file changed."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{block}\n{END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falign.reproduce.tables", description=__doc__.split("\n")[0])
    p.add_argument("results", help="folder of results/NAME.json summaries")
    p.add_argument("--write", nargs="*", default=[], metavar="FILE",
                   help=f"rewrite the {BEGIN} block of each file (else print the tables)")
    args = p.parse_args(argv)
    block = render(load_results(args.results))
    if not args.write:
        print(block)
    for f in args.write:
        print(f"{f}: {'rewritten' if rewrite(Path(f), block) else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

