"""What every reproduction target shares: its context, its outcome, the registry and the
machine-readable summary ``results.json``.

A target is a function ``run(ctx) -> Outcome`` registered with :func:`register_target`.  It
trains through ``ctx.compare`` / ``ctx.compare_seeds`` (or ``ctx.add`` for runs it trains
itself), which also enter each method's runs into the summary; ``ctx.measure`` adds numbers of
the target's own (a loss table, bits per character).  The summary is rewritten after every
comparison, sweep or run entered, so a target that stops part-way leaves a partial summary
(``"status": "running"``) saying how far it got.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..provenance import git_commit
from ..report.analyses import confusion_matrices
from ..training.compare import run_compare, run_compare_seeds, run_label, seed_run_dir
from ..training.config import ExperimentConfig, load_config, parse_config, set_values
from ..training.record import RunRecord, write_json
from ..training.results import ResultRow

RESULTS = "results.json"
RESULTS_SCHEMA = 1


class ReproduceError(ValueError):
    """Unknown target or scale, or an output directory holding another reproduction."""


@dataclass
class Outcome:
    run_dirs: list[Path]
    published: dict[str, float | None]  # label, run dir name or rule -> published test acc (%)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, Path, str]] = field(default_factory=list)  # (title, png, caption)
    extra_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Target:
    name: str
    title: str
    citation: str
    run: Callable[[Context], Outcome]
    #: what the published numbers are (the summary's ``published_metric``)
    metric: str = "test accuracy %"
    #: parts that can be run on their own (``falign reproduce NAME --part P``); () for none
    parts: tuple[str, ...] = ()


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"reproduction '{target.name}' is registered twice")
    TARGETS[target.name] = target
    return target


@dataclass
class Context:
    out: Path
    scale: str
    resume: bool
    log: Callable[[str], None]
    download: bool = False  # fetch missing datasets (data.download in every config)
    target: Target | None = None
    methods: list[dict[str, Any]] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    parts: tuple[str, ...] | None = None  # the parts asked for (None: all)
    done_parts: list[str] = field(default_factory=list)  # parts earlier calls completed

    @property
    def smoke(self) -> bool:
        return self.scale == "smoke"

    def wants(self, part: str) -> bool:
        """Whether this call runs ``part`` of the target."""
        return self.parts is None or part in self.parts

    def config(self, name: str, smoke: dict[str, Any]) -> ExperimentConfig:
        """A shipped config, shrunk for the smoke scale (dotted keys -> values)."""
        cfg = load_config(name)
        values = {**(smoke if self.smoke else {}), **({"data.download": True} if self.download else {})}
        if not values:
            return cfg
        where = f"{name} (smoke scale)" if self.smoke else name
        return parse_config(set_values(cfg.to_dict(), values, where=where), where=where)

    def compare(self, cfg: ExperimentConfig, rules, sub: str, *,
                published: dict[str, float] | None = None) -> tuple[Path, list[ResultRow]]:
        """``run_compare`` into ``out/sub`` (resumed), with its validation-accuracy figure; each
        method enters the summary (part ``sub``) with its ``published`` number."""
        from ..plots import NothingToPlot, plot_val_curves

        out = self.out / sub
        rows = run_compare(cfg, rules, out, resume=True, log=self.log)
        for row in rows:
            self.add(row.label, [out / run_label(row.label)], part=sub,
                     published=(published or {}).get(row.label))
        try:
            plot_val_curves(rows, out / "val_acc",
                            title=f"{cfg.data.name} / {cfg.model.name}: validation accuracy")
        except NothingToPlot:
            pass
        return out, rows

    def compare_seeds(self, cfg: ExperimentConfig, rules, seeds: Sequence[int], sub: str, *,
                      published: dict[str, float] | None = None):
        """``run_compare_seeds`` into ``out/sub`` (resumed), with its figure over seeds; each
        method enters the summary with every seed's run."""
        from ..plots import NothingToPlot, plot_seed_summary

        out = self.out / sub
        groups = run_compare_seeds(cfg, rules, seeds, out, resume=True, log=self.log)
        for g in groups:
            self.add(g.label, [out / seed_run_dir(g.label, s) for s in g.seeds], part=sub,
                     published=(published or {}).get(g.label))
        try:
            plot_seed_summary({g.label: g.rows for g in groups}, out / "seeds",
                              title=f"{cfg.data.name} / {cfg.model.name}")
        except NothingToPlot:
            pass
        return out, groups

    def add(self, label: str, run_dirs: Sequence[Path], *, part: str | None = None,
            published: float | None = None) -> None:
        """Enter one method's runs (one a seed) into the summary, and rewrite it."""
        self.methods = [m for m in self.methods if (m["part"], m["method"]) != (part, label)]
        self.methods.append(method_summary(label, run_dirs, self.out, part=part, published=published))
        self.write("running")

    def keep_earlier(self) -> None:
        """On a resume, start from the summary an earlier call left (another part's methods
        stay in it; what this call enters again replaces its earlier entry)."""
        import json

        path = self.out / RESULTS
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        name = self.target.name if self.target else None
        if old.get("target") == name and old.get("scale") == self.scale:
            self.methods = list(old.get("methods") or [])
            self.measures = dict(old.get("measures") or {})
            self.done_parts = list(old.get("parts_completed") or [])

    def measure(self, key: str, value: Any) -> None:
        """A number (or table) of the target's own, kept in the summary under ``measures``."""
        self.measures[key] = value
        self.write("running")

    def write(self, status: str) -> Path:
        path = self.out / RESULTS
        write_json(path, summary(self, status))
        return path


# -- the summary ------------------------------------------------------------------------------

def _run_entry(run_dir: Path, root: Path) -> dict[str, Any]:
    path = run_dir / "tracking.json"
    if not path.is_file():
        return {"run_dir": os.path.relpath(run_dir, root), "status": "missing"}
    r = RunRecord.read(path)
    return {"seed": r.config.get("seed"), "run_dir": os.path.relpath(run_dir, root),
            "status": r.status, "test_acc": r.test_acc, "test_loss": r.test_loss,
            "best_val_acc": r.best_val_acc, "best_epoch": r.best_epoch, "epochs": len(r.epochs),
            "selected_on": r.selected_on, "seconds": sum(e.seconds or 0.0 for e in r.epochs),
            "threads": r.environment.get("threads"), "device": r.environment.get("device"),
            "trained_by": r.environment.get("git")}  # the commit that trained it (None before 0.2)


def method_summary(label: str, run_dirs: Sequence[Path], root: Path, *, part: str | None,
                   published: float | None) -> dict[str, Any]:
    from ..training.compare import mean_std

    runs = [_run_entry(Path(d), root) for d in run_dirs]
    config = None
    first = Path(run_dirs[0]) / "tracking.json" if run_dirs else None
    if first is not None and first.is_file():
        config = RunRecord.read(first).config
    mean, std = mean_std([r.get("test_acc") for r in runs])
    return {"part": part, "method": label, "config": config, "seeds": [r.get("seed") for r in runs],
            "runs": runs, "test_acc_mean": mean, "test_acc_std": std, "published": published}


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _completed_parts(ctx: Context, status: str) -> list[str]:
    """Every part a call has completed: earlier calls' and, once completed, this call's."""
    done = list(ctx.done_parts)
    if status == "completed":
        now = ctx.parts if ctx.parts is not None else ctx.target.parts if ctx.target else ()
        done += [p for p in now if p not in done]
    return done


def summary(ctx: Context, status: str) -> dict[str, Any]:
    target = ctx.target
    return {
        "schema": RESULTS_SCHEMA, "target": target.name if target else None,
        "title": target.title if target else None, "citation": target.citation if target else None,
        "scale": ctx.scale, "status": status,
        "parts": list(ctx.parts if ctx.parts is not None else target.parts if target else ()),
        "parts_completed": _completed_parts(ctx, status),
        "all_parts": list(target.parts) if target else [],
        "falign": __version__, "git": git_commit(),
        "torch": torch.__version__, "hardware": hardware(),
        "published_metric": target.metric if target else None,
        "wall_seconds_this_call": round(time.time() - ctx.started, 1),
        "compute_seconds": round(sum(r.get("seconds") or 0.0 for m in ctx.methods for r in m["runs"]), 1),
        "methods": ctx.methods, "measures": ctx.measures,
    }


# -- analyses shared by targets ----------------------------------------------------------------

def best_model(run_dir: Path, device: torch.device):
    from ..training.loop import load_model

    return load_model(run_dir / "best.pt", map_location=device)


def dataset_of(cfg: ExperimentConfig, device: torch.device):
    from ..training.loop import build_dataset

    return build_dataset(cfg, device)


def confusion_figures(ctx: Context, runs: dict[str, Path], cfg: ExperimentConfig,
                      outcome: Outcome) -> None:
    """Confusion matrix and per-class precision / recall / F1 of each run's best model."""
    device = torch.device("cpu")
    models = {label: best_model(run_dir, device) for label, run_dir in runs.items()}
    section = confusion_matrices(models, dataset_of(cfg, device), ctx.out / "analysis")
    outcome.figures += section.figures
    outcome.notes += [f"{heading}\n{text}" for heading, text in section.texts]
