"""The evidence queue: every reproduction target as units that fit a few hours of one core,
whose progress lives in the repository.

    python -m falign.reproduce.queue status [NAME ...]        each unit: done, pending or running
    python -m falign.reproduce.queue collect NAME UNIT --runs DIR
    python -m falign.reproduce.queue summarise NAME
    python -m falign.reproduce.queue run --runs DIR [--jobs 2] [--commit] [NAME ...]

A *unit* (:class:`falign.reproduce.base.Unit`) is one method's runs of one part of a target,
or one method x seed: ``falign reproduce NAME --scale full --part UNIT --out DIR/NAME`` trains
exactly that unit (the units of one target share the folder ``DIR/NAME``, each its own run
directories).  A unit is *done* when each of its runs' record says ``completed`` with a test
accuracy.  Its records are the repository's copy of it: ``collect`` copies each run's
``config.yaml``, ``tracking.json`` (and ``steps.jsonl``, where the run logged steps) into
``results/runs/NAME/<the run's path>`` (a sweep unit's grid trials too), and ``summarise``
rebuilds ``results/NAME.json`` from every committed record (``"status": "partial"`` until every
unit is in, then ``"completed"``).  Methods no record covers keep the entry of the summary
they had (numbers trained before the queue existed, whose run directories are gone).

``run`` is the queue itself: it keeps ``--jobs`` units training (one thread each, ``nice``),
in the order the targets are given (default :data:`ORDER`) and each target's own order,
skipping units that are done or running; each unit trains from a checkout of one commit
(``--code``, default the repository's HEAD), so the code that trained it is recorded; when a
unit ends, ``run`` collects it, summarises its target and, with ``--commit``, commits those
files.  Stop it and start it again at any time: a unit's runs resume from their checkpoints.
``python -m falign.reproduce.recheck results/runs/NAME/...`` re-checks a committed record.

Units that need trained models (``--runs`` says where they are): a *model* unit retrains one
finished run whose model (``best.pt``) is not in ``RUNS/NAME`` (lost with a machine change)
from its committed config; it is ``waiting`` while the run's own training unit is pending,
``pending`` once the run is committed and its model is missing, ``done`` while the model is
there (machine-local: it is not in the summary's units); its comparison with the committed
record (``retrain.json``) is committed beside it, and where no record of the run was committed
(only the summary's numbers), the new record too.  An *analyses* unit is ``waiting`` until every
model it needs is in ``RUNS/NAME``, then ``pending``; it is ``done`` once its record
(``analyses.json``, and its PNG figures) is committed under ``results/runs/NAME/analyses``.
A training unit that trains from another run's config (a final run at another seed, Lance &
Kieu's ``spread`` units, or with the paper's hyper-parameters set, its ``paper-config`` units)
is ``waiting`` until that run's ``config.yaml`` is committed.
The queue starts only ``pending`` units and moves on past ``waiting`` ones; it starts them in
the target's order, so units declared after the analyses take the jobs the analyses leave.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..records import ModelRetrain, RecordError, ReproductionSummary, UnitsSummary
from .base import (
    ANALYSES_FILE,
    RECORD_FILES,
    RETRAIN_FILE,
    TARGETS,
    Unit,
    analyses_record,
    finished_record,
    hardware,
    has_model,
    method_summary,
    plan,
    target_measures,
    trial_entries,
    unit_finished,
)

#: the order of the queue (the evidence issue's): the targets with long runs left first
ORDER = ("lance-kieu-2026", "rule-guide", "biotorch-lenet", "lillicrap-2016", "akrout-2019",
         "transformers", "dkp-2020", "hardware-feedback")


def records_dir(results: Path, name: str) -> Path:
    return Path(results) / "runs" / name


def _old_summary(results: Path, name: str, scale: str) -> ReproductionSummary | None:
    """The committed summary ``results/NAME.json`` of ``scale``, if there is one that reads."""
    try:
        old = ReproductionSummary.load(Path(results) / f"{name}.json")
    except RecordError:
        return None
    return old if old.scale == scale else None


def _legacy_done(old: ReproductionSummary | None, unit: Unit) -> bool:
    """Whether a summary written before the queue holds the unit's runs finished (their run
    directories are gone; only the summary's numbers remain)."""
    m = old.method(unit.part, unit.method) if old is not None else None
    if m is None:
        return False
    runs = {r.run_dir: r for r in m.runs}
    return all((r := runs.get(rel)) is not None and r.status == "completed" and r.test_acc is not None
               for rel in unit.run_dirs)


def unit_states(name: str, results: Path, scale: str = "full",
                runs: Path | None = None) -> list[tuple[Unit, str]]:
    """Each unit of target ``name`` with ``"done"`` (committed records), ``"done (summary
    only)"`` (a summary from before the queue), ``"pending"`` (it can run now) or ``"waiting"``
    (it needs models that are not in ``runs/NAME`` yet; see the module docstring).  Model units
    are listed only with ``runs`` (whether a model exists is a fact of that folder)."""
    root = records_dir(results, name)
    here = Path(runs) / name if runs is not None else None
    old = _old_summary(results, name, scale)
    out: list[tuple[Unit, str]] = []
    trained: dict[str, str] = {}  # run dir -> the state of the training unit that makes it
    for u in plan(TARGETS[name], scale=scale):
        if u.kind == "model":
            if here is None:
                continue
            rel = u.run_dirs[0]
            if has_model(here / rel) and (here / rel / RETRAIN_FILE).is_file() \
                    and not (root / rel / RETRAIN_FILE).is_file():
                # retrained, its comparison not committed yet (by a queue stopped while it ran):
                # pending, so that the queue collects it (it trains nothing: the model is there)
                out.append((u, "pending"))
            elif has_model(here / rel):
                out.append((u, "done"))
            elif trained.get(rel, "pending") == "pending" or not (root / rel / "config.yaml").is_file():
                out.append((u, "waiting"))  # its training unit makes the model
            else:
                out.append((u, "pending"))
        elif u.kind == "analyses":
            if all(analyses_record(root / rel) is not None for rel in u.run_dirs):
                out.append((u, "done"))
            elif here is not None and all(has_model(here / rel) for rel in u.needs):
                out.append((u, "pending"))
            else:
                out.append((u, "waiting"))
        elif all(finished_record(root / rel) is not None for rel in u.run_dirs):
            out.append((u, "done"))
        elif _legacy_done(old, u):
            out.append((u, "done (summary only)"))
        elif not all((root / rel / "config.yaml").is_file() for rel in u.needs):
            out.append((u, "waiting"))  # it trains from a config not committed yet
        else:
            out.append((u, "pending"))
        if u.kind == "train":
            trained.update((rel, out[-1][1]) for rel in u.run_dirs)
    return out


def _done(state: str) -> bool:
    return state.startswith("done")


def _unit(name: str, unit_name: str, scale: str = "full") -> Unit:
    for u in plan(TARGETS[name], scale=scale):
        if u.name == unit_name:
            return u
    raise SystemExit(f"error: reproduction '{name}' has no unit '{unit_name}'")


def collect(name: str, unit: Unit, runs: Path, results: Path) -> list[Path]:
    """Copy the records of ``unit``'s runs from the target's folder ``runs/NAME`` into the
    repository's ``results/runs/NAME``; returns the run directories copied."""
    src, dst = Path(runs) / name, records_dir(results, name)
    if unit.kind == "analyses":  # its record and its PNG figures
        copied = []
        for rel in unit.run_dirs:
            if analyses_record(src / rel) is None:
                continue
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for f in [src / rel / ANALYSES_FILE, *sorted((src / rel).glob("*.png"))]:
                shutil.copy2(f, dst / rel / f.name)
            copied.append(dst / rel)
        return copied
    if unit.kind == "model":  # its comparison; the run's record only where none is committed
        copied = []
        for rel in unit.run_dirs:
            if not (src / rel / RETRAIN_FILE).is_file():
                continue
            (dst / rel).mkdir(parents=True, exist_ok=True)
            names = (RETRAIN_FILE,) if finished_record(dst / rel) else (RETRAIN_FILE, *RECORD_FILES)
            for f in names:
                if (src / rel / f).is_file():
                    shutil.copy2(src / rel / f, dst / rel / f)
            copied.append(dst / rel)
        return copied
    dirs = [src / rel for rel in unit.run_dirs]
    for pattern in unit.extra:
        dirs += sorted(p for p in src.glob(pattern) if p.is_dir())
    copied = []
    for d in dirs:
        if not (d / "tracking.json").is_file():
            continue
        target = dst / d.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for f in RECORD_FILES:
            if (d / f).is_file():
                shutil.copy2(d / f, target / f)
        copied.append(target)
    return copied


def summarise(name: str, results: Path, scale: str = "full") -> Path:
    """Rebuild ``results/NAME.json`` from the committed records (and, for methods no record
    covers, the entries of the summary it replaces)."""
    import torch

    from .. import __version__
    from ..provenance import git_commit

    target = TARGETS[name]
    root = records_dir(results, name)
    old = _old_summary(results, name, scale)
    old_methods = {(m.part, m.method): m for m in old.methods} if old is not None else {}
    states = unit_states(name, results, scale)
    groups: dict[tuple[str, str], list[Unit]] = {}
    for u, _ in states:
        if u.kind == "train":
            groups.setdefault((u.part, u.method), []).append(u)
    methods = []
    for (part, label), units in groups.items():
        rels = [rel for u in units for rel in u.run_dirs]
        if any((root / rel / "tracking.json").is_file() for rel in rels):
            entry = method_summary(label, [root / rel for rel in rels], root, part=part,
                                   published=units[0].published)
            trials = [t for u in units for t in trial_entries(root, u.extra)]
            if trials:
                entry = replace(entry, trials=tuple(trials))
        elif (part, label) in old_methods:  # the published number is the target's, not the run's
            entry = old_methods[(part, label)].with_published(units[0].published)
        else:
            entry = method_summary(label, [root / rel for rel in rels], root, part=part,
                                   published=units[0].published)
        methods.append(entry)
    done = [u.name for u, s in states if _done(s)]
    pending = [u.name for u, s in states if not _done(s)]
    parts_done = [p for p in target.parts
                  if all(_done(s) for u, s in states if u.part == p)]
    measures = {k: v for k, v in (old.measures if old is not None else {}).items()
                if k != "progress when stopped"}
    retrained = {p.parent.relative_to(root).as_posix(): ModelRetrain.load(p).to_dict()
                 for p in sorted(root.rglob(RETRAIN_FILE))} if root.is_dir() else {}
    if retrained:
        measures["retrained models"] = retrained
    for u, s in states:
        if u.kind == "analyses" and s == "done":
            measures[u.name] = analyses_record(root / u.run_dirs[0]).to_dict()
    seconds = sum(r.seconds or 0.0 for m in methods for r in m.runs)
    seconds += sum(t.seconds or 0.0 for m in methods for t in m.trials)
    summary = ReproductionSummary(
        target=name, title=target.title, citation=target.citation,
        scale=scale, status="partial" if pending else "completed",
        parts=target.parts, parts_completed=tuple(parts_done), all_parts=target.parts,
        falign=__version__, git=git_commit(), torch=torch.__version__,
        hardware=hardware(), published_metric=target.metric,
        compute_seconds=round(seconds, 1),
        units=UnitsSummary(total=len(states), done=tuple(done), pending=tuple(pending),
                           made_by="python -m falign.reproduce.queue"),
        methods=tuple(methods), measures=target_measures(target, methods, measures))
    path = Path(results) / f"{name}.json"
    summary.save(path)
    return path


# -- the queue --------------------------------------------------------------------------------

def _safe(unit_name: str) -> str:
    return unit_name.replace("/", "--").replace(":", "-")


def _pid_file(runs: Path, name: str, unit: Unit) -> Path:
    return Path(runs) / name / "units" / f"{_safe(unit.name)}.pid"


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def running(runs: Path, name: str, unit: Unit) -> bool:
    """Whether a process (the queue's, or one started by hand that wrote the unit's pid file
    ``RUNS/NAME/units/<unit>.pid``) is training the unit now."""
    return _alive(_pid_file(runs, name, unit))


def _checkout(repo: Path, code: str, runs: Path) -> Path:
    """A checkout of commit ``code`` (its own clone, so runs record that commit)."""
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    where = Path(runs) / "code" / sha[:12]
    if not (where / "src" / "falign").is_dir():
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(where)], check=True)
        subprocess.run(["git", "-C", str(where), "checkout", "-q", sha], check=True)
    return where


def _commit(repo: Path, paths: Sequence[Path], message: str, log) -> None:
    rel = [os.path.relpath(p, repo) for p in paths]
    for attempt in range(20):  # another git command may hold the index for a moment
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *rel], capture_output=True, text=True)
        if add.returncode == 0:
            done = subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", message, "--", *rel],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                log(f"committed: {message.splitlines()[0]}")
                return
            err = done.stderr or done.stdout
        else:
            err = add.stderr
        if "index.lock" not in err:
            log(f"commit failed: {err.strip()}")
            return
        time.sleep(3 + attempt)
    log("commit failed: the index stayed locked")


def refresh(name: str, results: Path, repo: Path) -> list[Path]:
    """Rewrite what is made from the committed summaries: the tables of README.md and of
    docs/experiments/results.md, and the target's own page if it has one; the files changed."""
    from . import tables

    changed = []
    block = tables.render(tables.load_results(results))
    for rel in ("README.md", "docs/experiments/results.md"):
        path = Path(repo) / rel
        if path.is_file() and not _edited(repo, path) and tables.rewrite(path, block):
            changed.append(path)
    page = TARGETS[name].page
    if page is not None:
        changed += page(Path(results), Path(repo))
    return changed


def _edited(repo: Path, path: Path) -> bool:
    """Whether ``path`` has changes not committed (someone is editing it): the queue then leaves
    it alone rather than commit their edits with its tables."""
    diff = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", str(path)],
                          capture_output=True)
    return diff.returncode == 1


def _finish(name: str, unit: Unit, *, runs: Path, results: Path, repo: Path, scale: str,
            commit: bool, log) -> None:
    """A unit's runs are finished: collect its records, summarise its target, rewrite the tables
    and pages made from the summaries, commit all of it."""
    copied = collect(name, unit, runs, results)
    path = summarise(name, results, scale)
    made = refresh(name, results, repo) if scale == "full" else []
    records = [finished_record(runs / name / rel) for rel in unit.run_dirs]
    accs = ", ".join(f"{100 * r.test_acc:.2f}%" for r in records if r is not None)
    hours = sum(e.seconds or 0.0 for r in records if r is not None for e in r.epochs) / 3600
    trials = trial_entries(records_dir(results, name), unit.extra)
    hours += sum(t.seconds or 0.0 for t in trials) / 3600
    what = f"test {accs or '-'}, {hours:.1f} h of training on one core"
    if unit.kind == "model":  # what the retrained record says beside the committed one
        checks = [ModelRetrain.load(runs / name / rel / RETRAIN_FILE) for rel in unit.run_dirs
                  if (runs / name / rel / RETRAIN_FILE).is_file()]
        what += "; " + "; ".join(c.describe() for c in checks)
    elif unit.kind == "analyses":
        what = "alignment, sign concordance, CKA and exemplars of the final models"
    log(f"queue: {name}:{unit.name} done: {what}; {len(copied)} records")
    if commit:
        trained = {((r.environment.get("git") or {}).get("commit") or "?")[:10]
                   for r in records if r is not None}
        by = f", trained by {', '.join(sorted(trained))}" if trained else ""
        _commit(repo, [records_dir(results, name), path, *made],
                f"Evidence queue: {name} unit {unit.name} done ({what}){by}", log)


def _pending(names: Sequence[str], runs: Path, results: Path, skip: set[str],
             scale: str) -> list[tuple[str, Unit]]:
    out = []
    for name in names:
        for u, state in unit_states(name, results, scale, runs):
            key = f"{name}:{u.name}"
            if state == "pending" and key not in skip and not running(runs, name, u):
                out.append((name, u))
    return out


def run_queue(names: Sequence[str], *, runs: Path, results: Path, repo: Path, code: str | None = "HEAD",
              jobs: int = 2, threads: int = 1, commit: bool = False, poll: float = 30.0,
              scale: str = "full", log=print) -> None:
    """Keep ``jobs`` units training until none is pending (see the module docstring).
    ``code`` None trains with the falign this process imports (no checkout of a commit)."""
    runs, results, repo = Path(runs).resolve(), Path(results).resolve(), Path(repo).resolve()
    checkout = _checkout(repo, code, runs) if code is not None else None
    log(f"queue: units train from {checkout or 'the falign this process imports'} ({jobs} at a "
        f"time, {threads} thread(s) each)")
    active: dict[str, tuple[subprocess.Popen, str, Unit, float]] = {}
    failed: set[str] = set()
    stop = False

    def _stop(signum, frame):  # the units go on; a later queue finds them running
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while True:
        for key, (proc, name, unit, started) in list(active.items()):
            if proc.poll() is None:
                continue
            del active[key]
            _pid_file(runs, name, unit).unlink(missing_ok=True)
            if proc.returncode != 0:
                failed.add(key)
                log(f"queue: {key} FAILED (exit {proc.returncode}, after "
                    f"{(time.time() - started) / 3600:.2f} h); log: {runs / 'logs' / (_safe(key) + '.log')}")
                continue
            if not unit_finished(unit, runs / name):
                failed.add(key)  # ended well but left runs unfinished (e.g. a grid that all
                log(f"queue: {key} ended without finishing its runs; not started again "  # diverged)
                    f"(log: {runs / 'logs' / (_safe(key) + '.log')})")
                continue
            _finish(name, unit, runs=runs, results=results, repo=repo, scale=scale, commit=commit,
                    log=log)
        if stop:
            log("queue: stopped (running units go on; they write their pid files)")
            return
        # units trained by processes this queue did not start (pid files) count too
        others = sum(running(runs, n, u) for n in names for u, st in unit_states(n, results, scale, runs)
                     if st == "pending" and f"{n}:{u.name}" not in active)
        free = jobs - len(active) - others
        # every pass: collect what finished, start what the free jobs allow
        for name, unit in _pending(names, runs, results, failed | set(active), scale):
            key = f"{name}:{unit.name}"
            if unit_finished(unit, runs / name):
                # trained and not collected yet (by a process started by hand, or a queue
                # stopped before it collected): collect it, train nothing, whatever the jobs
                _finish(name, unit, runs=runs, results=results, repo=repo, scale=scale,
                        commit=commit, log=log)
                continue
            if free <= 0:
                continue
            free -= 1
            (runs / "logs").mkdir(parents=True, exist_ok=True)
            logf = open(runs / "logs" / (_safe(key) + ".log"), "a")  # noqa: SIM115
            env = {**os.environ, "FALIGN_THREADS": str(threads)}
            if checkout is not None:
                env["PYTHONPATH"] = str(checkout / "src")
            cmd = ["nice", "-n", "10", sys.executable, "-m", "falign", "reproduce", name,
                   "--scale", scale, "--part", unit.name, "--out", str(runs / name), "--resume",
                   "--records", str(records_dir(results, name)), "--threads", str(threads)]
            (runs / name).mkdir(parents=True, exist_ok=True)
            records_dir(results, name).mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    cwd=checkout or repo, start_new_session=True)
            logf.close()
            pid = _pid_file(runs, name, unit)
            pid.parent.mkdir(parents=True, exist_ok=True)
            pid.write_text(f"{proc.pid}\n")
            active[key] = (proc, name, unit, time.time())
            log(f"queue: started {key} (pid {proc.pid})")
        if not active and not others:
            log("queue: nothing pending" + (f" ({len(failed)} failed)" if failed else ""))
            return
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falign.reproduce.queue", description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=["smoke", "full"], default="full",
                   help="the scale of the units (default %(default)s)")
    p.add_argument("--results", default="results",
                   help="the repository's results folder (default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status", help="each unit: done, pending or running")
    s.add_argument("names", nargs="*", metavar="NAME")
    s.add_argument("--runs", default=None, help="the units' folder, to show which are running")
    c = sub.add_parser("collect", help="copy a finished unit's records into the repository, summarise")
    c.add_argument("name", metavar="NAME")
    c.add_argument("unit", metavar="UNIT")
    c.add_argument("--runs", required=True, help="the folder holding NAME/ (the units' --out's parent)")
    m = sub.add_parser("summarise", help="rebuild results/NAME.json from the committed records")
    m.add_argument("name", metavar="NAME")
    r = sub.add_parser("run", help="keep --jobs units training until none is pending")
    r.add_argument("names", nargs="*", metavar="NAME")
    r.add_argument("--runs", required=True, help="where units train (outside the work tree)")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--code", default="HEAD", help="the commit units train from (default HEAD)")
    r.add_argument("--repo", default=".", help="the repository (default the current folder)")
    r.add_argument("--commit", action="store_true", help="commit each unit's records when it ends")
    args = p.parse_args(argv)
    results = Path(args.results)
    names = getattr(args, "names", None) or [n for n in ORDER if n in TARGETS]
    for n in names if args.cmd in ("status", "run") else [args.name]:
        if n not in TARGETS:
            print(f"error: unknown reproduction '{n}' (known: {', '.join(TARGETS)})", file=sys.stderr)
            return 2
    if args.cmd == "status":
        for n in names:
            states = unit_states(n, results, args.scale, Path(args.runs) if args.runs else None)
            done = sum(_done(s) for _, s in states)
            print(f"{n}: {done} of {len(states)} units done")
            for u, s in states:
                if not _done(s) and args.runs and running(Path(args.runs), n, u):
                    s = "running"
                print(f"  {u.name:40s} {s}")
        return 0
    if args.cmd == "collect":
        unit = _unit(args.name, args.unit, args.scale)
        copied = collect(args.name, unit, Path(args.runs), results)
        print(f"{len(copied)} run records copied; summary {summarise(args.name, results, args.scale)}")
        return 0
    if args.cmd == "summarise":
        print(summarise(args.name, results, args.scale))
        return 0
    run_queue(names, runs=Path(args.runs), results=results, repo=Path(args.repo), code=args.code,
              jobs=args.jobs, threads=args.threads, commit=args.commit, scale=args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
