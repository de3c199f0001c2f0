"""``reproduce(name, scale=...)``: run a registered target into its folder, resumably, and end
with the HTML report and the machine-readable summary ``results.json``.

``results.json`` is also the folder's marker: which target and scale it holds and how far the
last call got (``status``: running, interrupted, completed; then the report's path and the
target's extra rows).  A folder an older falign made has a ``reproduce.json`` beside it, read
in its place and removed once ``results.json`` says the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..records import RecordError, ReproductionSummary
from ..training.loop import RunDirError, signals_interrupt
from .base import ANALYSES_FILE, RESULTS, TARGETS, Context, ReproduceError, _Stop, finished_record, plan

#: the marker an older falign wrote beside ``results.json`` (still read)
OLD_MARKER = "reproduce.json"


def read_marker(out: Path) -> ReproductionSummary | None:
    """What ``out`` holds: the target, scale and run-state of its summary (``reproduce.json``
    first, in a folder an older falign made), None when it holds neither;
    :class:`~falign.records.RecordError` when the file cannot be read."""
    if (out / OLD_MARKER).is_file():
        return ReproductionSummary.load_marker(out / OLD_MARKER)
    if (out / RESULTS).is_file():
        return ReproductionSummary.load(out / RESULTS)
    return None


def reproduce(name: str, *, scale: str = "smoke", out: str | Path | None = None, resume: bool = False,
              overwrite: bool = False, download: bool = False, parts: list[str] | None = None,
              records: str | Path | None = None, log: Callable[[str], None] = print) -> Path | None:
    """Run target ``name`` at ``scale`` into ``out``; returns the path of the HTML report.
    ``download`` fetches the datasets it needs when they are missing (``data.download``).
    ``out/results.json`` summarises the runs (every method's config, each seed's test and best
    validation accuracy, the published number) as they finish; ``"status": "completed"`` once
    the target has.  The same target and scale again into a finished ``out`` is a resume: the
    runs are read back, none is trained, and the report is written again.  ``parts`` runs only
    those parts of a target that has several (``TARGETS[name].parts``; all by default), or one
    *unit* (``PART/METHOD[/seedK]``, or an analyses unit's ``PART``, see
    :func:`falign.reproduce.base.plan`): then only that unit trains, and no report or summary is
    written (the queue, :mod:`falign.reproduce.queue`, makes the summary from the
    unit's records); returns None.  ``records`` is the folder of committed run records
    (``results/runs/NAME``): units it holds finished are read from it, not trained again."""
    TARGETS.lookup(name)  # an unknown name: one line with the nearest
    if scale not in ("smoke", "full"):
        raise ReproduceError(f"scale must be 'smoke' or 'full', not '{scale}'")
    target = TARGETS[name]
    unit = None
    # a part the target does not have may be a unit (PART/METHOD[/seedK], or an analyses unit)
    known = [u.name for u in plan(target, scale=scale)] if any(
        p not in target.parts for p in parts or []) else []
    if parts and any("/" in p or p in known for p in parts):
        if len(parts) > 1:
            raise ReproduceError("--part: give one unit (PART/METHOD[/seedK]) at a time")
        unit = parts[0]
        if unit not in known:
            import difflib

            near = difflib.get_close_matches(unit, known, n=1)
            raise ReproduceError(f"reproduction '{name}' has no unit '{unit}'"
                                 + (f"; did you mean '{near[0]}'?" if near else "")
                                 + f" (python -m falign.reproduce.queue status {name} lists them)")
        parts = None
    if parts:
        unknown = [p for p in parts if p not in target.parts]
        if unknown:
            have = ", ".join(target.parts) if target.parts else "none: it runs as a whole"
            raise ReproduceError(f"reproduction '{name}' has no part '{unknown[0]}' (its parts: {have})")
    out = Path(out) if out else Path("runs") / f"reproduce-{name}-{scale}"
    records = Path(records) if records is not None else None
    if records is not None and not records.is_dir():
        raise ReproduceError(f"--records {records}: no such folder")
    fresh = not out.exists() and unit is None  # units of one target share its folder
    try:
        info = read_marker(out)
    except RecordError as err:
        if not overwrite:
            raise RunDirError(f"{err}; use another --out or --overwrite") from None
        info = ReproductionSummary(target=None, scale=None, status="unknown")
    if info is not None:
        if (info.target, info.scale) != (name, scale) and not overwrite:
            raise RunDirError(f"{out}: holds the reproduction {info.target} "
                              f"({info.scale}); use another --out or --overwrite")
        if not (resume or overwrite):
            if info.status != "completed":
                raise RunDirError(f"{out}: holds this reproduction, not finished ({info.status}); "
                                  "use --resume to continue it or --overwrite to start again")
            log(f"{out}: this reproduction is finished; it is resumed, so its runs are read back "
                "and none is trained")
            resume = True
        if overwrite and not resume:
            import shutil

            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, scale=scale, resume=resume, log=log, download=download, target=target,
                  parts=tuple(parts) if parts else None, unit=unit, records=records)
    if resume and unit is None:
        ctx.keep_earlier()
    if unit is None:  # a unit writes no summary: the queue makes it from the unit's records
        ctx.write("running")
        (out / OLD_MARKER).unlink(missing_ok=True)  # results.json says what it said
    log(f"== reproduce {name} ({scale} scale{'' if unit is None else ', unit ' + unit}) into {out}")
    try:
        with signals_interrupt():  # SIGTERM, like Ctrl-C, leaves runs and markers "interrupted"
            outcome = target.run(ctx)
    except _Stop:
        done = ctx.trained_unit
        if done is None:
            raise ReproduceError(f"reproduction '{name}': unit '{unit}' was not reached") from None
        if done.kind == "analyses":
            log(f"unit {unit}: {out / done.run_dirs[0] / ANALYSES_FILE} written")
            return None
        for rel in done.run_dirs:
            record = finished_record(out / rel)
            log(f"unit {unit}: {rel} " + (f"test accuracy {100 * record.test_acc:.2f}%" if record
                                          else "NOT finished"))
        return None
    except BaseException as err:
        if fresh and _no_run_yet(out):  # refused before any run (e.g. a missing dataset): leave
            import shutil  # nothing that a rerun would have to step over

            shutil.rmtree(out, ignore_errors=True)
        elif isinstance(err, KeyboardInterrupt):
            ctx.write("interrupted")
        raise

    from ..report import write_report

    notes = list(outcome.notes)
    if scale == "smoke":
        notes.insert(0, "SMOKE SCALE: small subsets and few epochs, to check the pipeline; the "
                        "numbers are not comparable with the published ones. Use --scale full.")
    report = write_report(outcome.run_dirs, out / "report", title=f"{target.title} ({scale} scale)",
                          published={"test_acc": outcome.published}, notes=notes,
                          extra_figures=outcome.figures)
    log((out / "report" / "results.txt").read_text())
    ctx.report, ctx.extra_rows = str(report), list(outcome.extra_rows)
    ctx.write("completed")
    log(f"report: {report}")
    log(f"summary: {out / RESULTS}")
    return report


def _no_run_yet(out: Path) -> bool:
    """Whether ``out`` holds no run yet: only the markers of the reproduction and of the
    comparisons or sweeps it was about to start (no run record, checkpoint or figure)."""
    markers = {RESULTS, OLD_MARKER, "compare.json", "sweep.json"}
    return all(p.is_dir() or p.name in markers for p in out.rglob("*"))
