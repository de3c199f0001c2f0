"""Hardware-aware feedback, measured: does FA / DFA still learn when B has few levels, few
connections, low rank, device variation and noisy reads?

``falign reproduce hardware-feedback --scale full`` trains, for FA and DFA, the MNIST MLP
784-1000-1000-10 (ReLU) with one hardware key of the feedback path set at a time
(``rule: {name: fa, hardware: {b_rank: 16}}``, see docs/hardware.md), three seeds:

* ``b_rank`` full, 256, 64, 16, 4 (rank on the 1000 x 1000 B of the second hidden layer);
* ``b_density`` 1, 0.5, 0.1, one connection per row;
* ``b_levels`` full precision, 16, 4, 3, 2;
* ``b_noise`` (device variation) and ``signal_noise`` (read noise) 0, 0.05, 0.2, 0.5;
* the error's levels (DFA only): full e, ``error_levels: 2``, and ``sdfa`` itself, which
  ``error_levels: 2`` equals bit for bit (an end-to-end check of that identity);

then the CNN of falign's CIFAR-10 protocol (Arch 1, on the JPEG copy) under ``b_levels`` and
``b_density``, one seed; and Crafton et al. 2019's sparse DFA in their own MNIST setting.  The
ideal feedback path (every key off) is measured once a rule and seed and is the first point of
every axis.  Each point reports the test accuracy and the final alignment angle: the mean, over
the hidden layers, of the angle between the rule's weight update and backprop's gradient at
the last alignment probe (one probe an epoch, the last within the final epoch).

Units of the evidence queue: one (axis, rule, seed), several short runs trained one after
another (``ctx.train_runs``).  ``python -m falign.reproduce.queue status hardware-feedback``
lists them; the docs section "Measured curves" of docs/hardware.md and its figures are made
from the committed records (:func:`write_page`, which the queue calls after each unit).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import RecordError, ReproductionSummary
from ..training.config import ExperimentConfig, parse_config
from ..training.record import RunRecord
from .base import Context, Outcome, Target, register_target

NAME = "hardware-feedback"

#: ``b_density`` for one connection per row: max(1, round(d x n)) is 1 for every row shorter
#: than 500,000 entries, so every receiving unit keeps exactly one (Crafton et al.'s sparsest B)
ONE_PER_ROW = 1e-6


@dataclass(frozen=True)
class Axis:
    """One hardware key swept over ``values`` (the ideal path, every key off, is its first
    point, labelled ``ideal``), for ``rules``; ``extra`` are rules measured at the last value
    only, without the key (``sdfa`` beside ``dfa`` with ``error_levels: 2``)."""

    key: str
    title: str
    ideal: str
    values: tuple[Any, ...]
    rules: tuple[str, ...] = ("fa", "dfa")
    extra: tuple[str, ...] = ()

    def label(self, value: Any) -> str:
        """The value as the run directories and the tables name it."""
        if self.key == "b_density" and value == ONE_PER_ROW:
            return "1-per-row"
        return f"{value:g}" if isinstance(value, float) else str(value)

    def labels(self) -> list[str]:
        return [self.ideal, *(self.label(v) for v in self.values)]


def _accepted(key: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Those of ``values`` the hardware model accepts for ``key`` (``error_levels: 3`` joins
    the axis as soon as :class:`~falign.rules.hardware.Hardware` accepts it)."""
    from ..rules.hardware import Hardware, HardwareError

    out = []
    for v in values:
        try:
            Hardware(**{key: v})
        except HardwareError:
            continue
        out.append(v)
    return tuple(out)


MNIST_AXES: dict[str, Axis] = {
    "rank": Axis("b_rank", "rank of B", "full", (256, 64, 16, 4)),
    "density": Axis("b_density", "density of B", "1", (0.5, 0.1, ONE_PER_ROW)),
    "levels": Axis("b_levels", "levels of B", "full", (16, 4, 3, 2)),
    "b_noise": Axis("b_noise", "device variation σ of B", "0", (0.05, 0.2, 0.5)),
    "signal_noise": Axis("signal_noise", "read noise σ of the signal", "0", (0.05, 0.2, 0.5)),
    "error_levels": Axis("error_levels", "levels of the error e", "full",
                         _accepted("error_levels", (3, 2)), rules=("dfa",), extra=("sdfa",)),
}
CNN_AXES: dict[str, Axis] = {"levels": MNIST_AXES["levels"], "density": MNIST_AXES["density"]}

#: task -> (title, its axes)
TASKS: dict[str, tuple[str, dict[str, Axis]]] = {
    "mnist": ("MNIST, MLP 784-1000-1000-10 (ReLU), 3 seeds", MNIST_AXES),
    "cifar": ("CIFAR-10 (JPEG copy), Arch 1 CNN, 1 seed", CNN_AXES),
}
MNIST_SEEDS = (0, 1, 2)
#: the CNN's rule options: FA's scale is the one Lance & Kieu's grid chose on this network
CNN_RULES = {"fa": {"scale": 0.1}, "dfa": {}}

#: steps of one epoch: 55,000 MNIST / 45,000 CIFAR-10 training images in batches of 128
MNIST_STEPS, CNN_STEPS = math.ceil(55000 / 128), math.ceil(45000 / 128)


def mnist_config(smoke: bool) -> ExperimentConfig:
    """The MNIST protocol: the rule guide's MNIST MLP task (docs/choosing-a-rule.md), where Adam
    at lr 1e-3, batch 128, was the best measured setting of both FA and DFA, with a second
    hidden layer of 1000 (so rank and density act on a 1000 x 1000 B) and 20 epochs in place
    of the guide's 2 (the alignment settles); the best validation epoch is tested.  One
    alignment probe every ``steps - 1`` steps: one an epoch, the last in the final epoch."""
    data: dict[str, Any] = {
        "name": "hardware-feedback-mnist", "seed": 0,
        "data": {"name": "mnist", "val_size": 5000},
        "model": {"name": "mlp", "options": {"sizes": [784, 1000, 1000, 10], "activation": "relu"}},
        "rule": {"name": "fa"}, "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 20, "batch_size": 128, "checkpoint_every_epoch": False,
                  "alignment_every": MNIST_STEPS - 1}}
    if smoke:
        data["data"].update(subset=600, val_size=200)
        data["train"].update(epochs=1, alignment_every=2)
    return parse_config(data, where="hardware-feedback (MNIST)")


def cnn_config(ctx: Context) -> ExperimentConfig:
    """The shipped ``arch1-cifar10`` protocol (Adam lr 1e-3, batch 128, 24 x 24 crops and flips,
    the best validation epoch), 15 epochs in place of 50, no per-epoch checkpoints."""
    cfg = ctx.config("arch1-cifar10", {"data.subset": 300, "data.val_size": 100})
    cfg.train.epochs = 1 if ctx.smoke else 15
    cfg.train.checkpoint_every_epoch = False
    cfg.train.alignment_every = 2 if ctx.smoke else CNN_STEPS - 1
    cfg.compare, cfg.sweep = [], None
    return cfg


def run_config(base: ExperimentConfig, name: str, rule: str, options: dict[str, Any],
               hardware: dict[str, Any], seed: int) -> ExperimentConfig:
    data = base.to_dict()
    data.update(name=name, seed=seed)
    data["rule"] = {"name": rule, "options": dict(options),
                    **({"hardware": dict(hardware)} if hardware else {})}
    return parse_config(data, where=f"hardware-feedback ({name})")


# -- Crafton et al. 2019 -------------------------------------------------------------------------

#: Crafton et al. 2019's sparse DFA on MNIST as their code runs it (github.com/bcrafton/ssdfa,
#: commit 661f905, results.py ``mnist_fc_dfa`` / ``mnist_fc_sparse`` with mnist_fc.py):
#: 784-400-10 tanh, softmax cross-entropy averaged over the batch, batch 32, 300 epochs, Adam
#: lr 0.01 with epsilon 1, B uniform in +-1/sqrt(400), the best test accuracy over the epochs.
#: ``sparse = 1``: every hidden neuron receives one of the 10 errors (one connection per row).
CRAFTON_SETTINGS = {
    "source": "github.com/bcrafton/ssdfa @ 661f905 (results.py, mnist_fc.py, lib/FeedbackMatrix.py)",
    "network": "784-400-10, tanh hidden layer, softmax output",
    "optimizer": "Adam lr 0.01, epsilon 1.0, batch 32, 300 epochs",
    "feedback": "dense: B ~ U(-1/sqrt(400), 1/sqrt(400)); sparse 1: one error per hidden neuron",
    "selection": "the best test accuracy over the 300 epochs (get_results.py: max(test_acc))",
}
#: the published numbers: None where none could be read from the paper or the code
CRAFTON_PUBLISHED: dict[str, float | None] = {"dfa": None, "dfa-1-per-row": None}


def crafton_config(smoke: bool) -> ExperimentConfig:
    """Their setting in falign's keys.  Deviations: Adam with epsilon 1 takes steps of about lr
    x the gradient's running mean while gradients are far below 1, that is SGD with momentum
    0.9 at lr 0.001 (falign's Adam has no epsilon option); weights start Xavier-uniform (their
    DFA runs start from zero, which falign's models do not offer); pixels are normalised by the
    dataset's mean and std (theirs per image); B ~ N(0, 0.0289^2), the std of their
    U(+-0.05), and the sparse B keeps that RMS (theirs is rescaled differently, about 0.55x)."""
    data: dict[str, Any] = {
        "name": "crafton-mnist", "seed": 0, "data": {"name": "mnist", "val_size": 0},
        "model": {"name": "mlp", "options": {"sizes": [784, 400, 10], "activation": "tanh",
                                             "init": "xavier"}},
        "rule": {"name": "dfa", "options": {"scale": 0.05 / math.sqrt(3)}},
        "optim": {"name": "sgd", "lr": 0.001, "momentum": 0.9},
        "train": {"epochs": 300, "batch_size": 32, "select_on": "test",
                  "alignment_every": math.ceil(60000 / 32) - 1}}
    if smoke:
        data["data"].update(subset=600)
        data["train"].update(epochs=1, alignment_every=2)
    return parse_config(data, where="hardware-feedback (Crafton et al. 2019)")


# -- Launay et al. 2020 -------------------------------------------------------------------------

#: What the parts of Launay et al. 2020 ("Light-in-the-loop", arXiv 2006.01475) falign's authors
#: could read say, and what they leave unknown: the ``optical`` hardware key models the device; a
#: unit also needs their network and protocol
LAUNAY_PLAN = {
    "source": "arXiv 2006.01475 (its abstract and introduction: the parts read)",
    "task": "a neural network for handwritten digits (MNIST) trained with DFA",
    "feedback": "the error projection B e computed by LightOn's optical co-processor",
    "needs": "the `optical` hardware key (complex Gaussian transmission matrix, binary or "
             "ternary input, intensity detection, camera quantisation)",
    "not found": "network sizes, epochs, optimizer and the test accuracies (the results section "
                 "are in the parts of the paper that could not be read)",
}


# -- the target ---------------------------------------------------------------------------------

def _rel(part: str, rule: str, label: str | None, seed: int) -> str:
    return f"{part}/{rule}/{label}/seed{seed}" if label is not None else f"{part}/{rule}/seed{seed}"


def axis_runs(base: ExperimentConfig, task: str, axis_name: str, axis: Axis, rule: str,
              seed: int, smoke: bool, options: dict[str, Any]) -> dict[str, ExperimentConfig]:
    """The runs of one unit: ``rule`` (and the axis's extra rules) at each value of the axis."""
    part = f"{task}-{axis_name}"
    values = axis.values[-1:] if smoke else axis.values
    runs = {}
    for v in values:
        label = axis.label(v)
        runs[_rel(part, rule, label, seed)] = run_config(
            base, f"{NAME}-{part}-{rule}-{label}", rule, options, {axis.key: v}, seed)
    for extra in axis.extra:
        label = axis.label(axis.values[-1])
        runs[_rel(part, extra, label, seed)] = run_config(
            base, f"{NAME}-{part}-{extra}", extra, {}, {}, seed)
    return runs


def hardware_feedback(ctx: Context) -> Outcome:
    outcome = Outcome(run_dirs=[], published={}, notes=[
        "falign's own experiment: accuracy and final alignment angle of FA and DFA against each "
        "hardware constraint of the feedback path, one at a time; beside it Crafton et al. "
        "2019's sparse DFA in their own MNIST setting. CIFAR-10 is the JPEG copy."])
    entered: dict[tuple[str, str], list[Path]] = {}

    def train(runs: dict[str, ExperimentConfig], part: str, rule: str, seed: int | None) -> None:
        done = ctx.train_runs(runs, part=part, method=rule, seed=seed)
        entered.setdefault((part, rule), []).extend(done)

    for task, (_, axes) in TASKS.items():
        base = mnist_config(ctx.smoke) if task == "mnist" else cnn_config(ctx)
        seeds = (42,) if task == "cifar" else MNIST_SEEDS[:1] if ctx.smoke else MNIST_SEEDS
        rules = CNN_RULES if task == "cifar" else {"fa": {}, "dfa": {}}
        ideal = f"{task}-ideal"
        if ctx.wants(ideal):
            for rule, opts in rules.items():
                for seed in seeds:
                    run = run_config(base, f"{NAME}-{ideal}-{rule}", rule, opts, {}, seed)
                    train({_rel(ideal, rule, None, seed): run}, ideal, rule, seed)
        for axis_name, axis in axes.items():
            part = f"{task}-{axis_name}"
            if not ctx.wants(part):
                continue
            for rule in axis.rules:
                for seed in seeds:
                    train(axis_runs(base, task, axis_name, axis, rule, seed, ctx.smoke, rules[rule]),
                          part, rule, seed)
    if ctx.wants("crafton-mnist"):
        cfg = crafton_config(ctx.smoke)
        for method, hardware in (("dfa", {}), ("dfa-1-per-row", {"b_density": ONE_PER_ROW})):
            train({f"crafton-mnist/{method}": run_config(cfg, f"crafton-mnist-{method}", "dfa",
                                                         cfg.rule.options, hardware, cfg.seed)},
                  "crafton-mnist", method, None)
    for (part, rule), dirs in entered.items():
        if dirs:
            published = CRAFTON_PUBLISHED.get(rule) if part == "crafton-mnist" else None
            ctx.add(rule, dirs, part=part, published=published)
            outcome.run_dirs += dirs
    ctx.trained()

    table = curves(ctx.out)
    ctx.measure("curves", table)
    ctx.measure("crafton", crafton_table(ctx.out))
    for task, axes in table.items():
        for axis_name in axes:
            path = draw(table, task, axis_name, ctx.out / "figures" / f"{task}-{axis_name}.png")
            if path is not None:
                outcome.figures.append((f"{task}: {MNIST_AXES[axis_name].title}", path,
                                        "Test accuracy and final update angle (mean ± std over seeds) "
                                        "against the constraint's value; the first point is the ideal path."))
    outcome.notes += summary_lines(table)
    return outcome


# -- the curves, from run records only ------------------------------------------------------------

def final_angle(record: RunRecord) -> float | None:
    """The mean over the hidden layers (every measured layer but the last, the output layer,
    whose error is e under every rule) of the update angle at the record's last probe."""
    for probe in reversed(record.alignment):
        angles = [m.get("update_angle") for m in probe.layers.values()][:-1]
        angles = [float(a) for a in angles if a is not None]
        if angles:
            return sum(angles) / len(angles)
    return None


def _read(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "tracking.json"
    if not path.is_file():
        return None
    try:
        record = RunRecord.read(path)
    except RecordError:
        return None
    if record.status == "diverged":
        return {"acc": 0.1, "angle": None, "diverged": True}
    if record.status != "completed" or record.test_acc is None:
        return None
    return {"acc": record.test_acc, "angle": final_angle(record), "diverged": False}


def _seeds(folder: Path) -> list[dict[str, Any]]:
    found = [_read(d) for d in sorted(folder.glob("seed*"))] if folder.is_dir() else []
    return [f for f in found if f is not None]


def curves(root: Path) -> dict[str, dict[str, Any]]:
    """task -> axis -> {"values": labels (ideal first), "rules": rule -> {"acc": [per value: the
    seeds' test accuracies], "angle": [per value: the seeds' final angles]}}, read from the run
    records under ``root`` (the target's folder, or the committed results/runs/NAME)."""
    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    for task, (_, axes) in TASKS.items():
        for axis_name, axis in axes.items():
            part = root / f"{task}-{axis_name}"
            labels = axis.labels()
            rules: dict[str, dict[str, list[list[float]]]] = {}
            for rule in (*axis.rules, *axis.extra):
                acc, angle = [], []
                for i, label in enumerate(labels):
                    if i == 0:
                        found = _seeds(root / f"{task}-ideal" / rule) if rule in axis.rules else []
                    else:
                        found = _seeds(part / rule / label)
                    acc.append([f["acc"] for f in found])
                    angle.append([f["angle"] for f in found if f["angle"] is not None])
                if any(acc):
                    rules[rule] = {"acc": acc, "angle": angle}
            if rules:
                out.setdefault(task, {})[axis_name] = {"values": labels, "rules": rules}
    return out


def crafton_table(root: Path) -> dict[str, Any]:
    """method -> its test accuracy (best over the epochs, their selection) and the published one."""
    out = {}
    for method, published in CRAFTON_PUBLISHED.items():
        found = _read(Path(root) / "crafton-mnist" / method)
        out[method] = {"test_acc": found["acc"] if found else None, "published": published}
    return out


def mean_std(xs: list[float]) -> tuple[float, float] | None:
    if not xs:
        return None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def draw(table: dict[str, dict[str, Any]], task: str, axis_name: str, path: Path) -> Path | None:
    """The figure of one axis (accuracy and angle against the value, per rule)."""
    from ..plots import NothingToPlot
    from ..plots.hardware import plot_transform_axis

    entry = table[task][axis_name]
    acc = {r: [None if (p := mean_std(v)) is None else (100 * p[0], 100 * p[1]) for v in s["acc"]]
           for r, s in entry["rules"].items()}
    angle = {r: [mean_std(v) for v in s["angle"]] for r, s in entry["rules"].items()}
    title = f"{TASKS[task][0]}: {MNIST_AXES[axis_name].title}"
    try:
        return plot_transform_axis(entry["values"], acc, angle, path, title=title,
                                   xlabel=MNIST_AXES[axis_name].key)
    except NothingToPlot:
        return None


def _cell(xs: list[float], scale: float = 100.0, digits: int = 2) -> str:
    p = mean_std(xs)
    if p is None:
        return "-"
    text = f"{scale * p[0]:.{digits}f}"
    return text + (f" ± {scale * p[1]:.{digits}f}" if len(xs) > 1 else "")


def summary_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    """One line an axis and rule: accuracy at the ideal point and at the harshest value."""
    lines = []
    for task, axes in table.items():
        for axis_name, entry in axes.items():
            for rule, s in entry["rules"].items():
                first = next((i for i, v in enumerate(s["acc"]) if v), None)
                if first is None:
                    continue
                text = f"{task} {axis_name} {rule}: {entry['values'][first]} {_cell(s['acc'][first])}%"
                if first < len(s["acc"]) - 1:
                    text += f" -> {entry['values'][-1]} {_cell(s['acc'][-1])}%"
                lines.append(text + " test accuracy")
    return lines


# -- the docs section ------------------------------------------------------------------------------

#: the docs page holding the section, the section's markers, the figures' folder (repository paths)
PAGE, FIGURES = "docs/hardware.md", "docs/figures"
BEGIN, END = "<!-- hardware-feedback:begin -->", "<!-- hardware-feedback:end -->"

#: the time estimate, measured before any full-scale run: seconds of one epoch at --threads 1
#: while two other single-thread trainings shared the machine's 2 cores (about half an idle
#: core's speed, the speed of the evidence queue, which runs two units at a time)
EPOCH_SECONDS = {"mnist": {"fa": 19.6, "dfa": 20.5}, "cifar": {"fa": 112.0, "dfa": 73.3},
                 "crafton-mnist": {"dfa": 29.1}}
#: epochs of each group's runs, and the seconds a run spends outside its epochs (data, test)
EPOCHS = {"mnist": 20, "cifar": 15, "crafton-mnist": 300}
RUN_OVERHEAD_S = 30.0


def estimate() -> dict[str, dict[str, float]]:
    """group (mnist, cifar, crafton-mnist) -> its units, runs, hours of one core, and the
    longest unit's hours, from the full-scale plan and the measured epoch times."""
    from .base import TARGETS, plan

    out: dict[str, dict[str, float]] = {}
    for u in plan(TARGETS[NAME]):
        group = "crafton-mnist" if u.part == "crafton-mnist" else u.part.split("-", 1)[0]
        epoch = max(EPOCH_SECONDS[group].values())
        hours = len(u.run_dirs) * (EPOCHS[group] * epoch + RUN_OVERHEAD_S) / 3600
        e = out.setdefault(group, {"units": 0, "runs": 0, "hours": 0.0, "longest_unit_hours": 0.0})
        e["units"] += 1
        e["runs"] += len(u.run_dirs)
        e["hours"] += hours
        e["longest_unit_hours"] = max(e["longest_unit_hours"], hours)
    return out


def section(summary: ReproductionSummary | None, table: dict[str, dict[str, Any]],
            crafton: dict[str, Any], figures: dict[tuple[str, str], str]) -> str:
    """The Markdown between the markers: status, the estimate, one table (and figure) an axis,
    the published settings and numbers beside falign's."""
    out = [BEGIN, "## Measured curves", "",
           "Made by `falign reproduce hardware-feedback --scale full` (units of the evidence queue: "
           "`python -m falign.reproduce.queue status hardware-feedback`) from the committed run "
           "records `results/runs/hardware-feedback/`; the summary is `results/hardware-feedback.json`. "
           "Each axis sets one key, everything else ideal; its first point is the ideal path "
           "(every key off). Accuracy: test accuracy at the best validation epoch, mean ± std over "
           "seeds. Angle: the final update angle, the mean over the hidden layers of the angle "
           "between the rule's weight update and backprop's gradient at the last alignment probe "
           "(one probe an epoch, the last within the final epoch).", ""]
    if summary is None:
        out += ["**Status: not measured yet** (no summary committed).", ""]
    elif summary.status != "completed":
        units = summary.units
        out += [f"**Status: {summary.status}** — {len(units.done) if units else 0} of "
                f"{units.total if units else '?'} units measured; the tables hold what is measured "
                "so far.", ""]
    est = estimate()
    total = {k: sum(e[k] for e in est.values()) for k in ("units", "runs", "hours")}
    secs = EPOCH_SECONDS
    out += ["**Protocol and cost.** MNIST: the MLP 784-1000-1000-10 (ReLU) with the rule guide's "
            "best measured setting of both FA and DFA on MNIST (Adam, lr 1e-3, batch 128; "
            "[Choosing a rule](choosing-a-rule.md)), 20 epochs, seeds 0, 1, 2; FA's and DFA's own "
            "B scale. CIFAR-10 (JPEG copy): Arch 1 under the shipped `arch1-cifar10` protocol "
            "(Adam lr 1e-3, crops and flips; FA's scale 0.1, the one Lance & Kieu's grid chose), "
            f"15 epochs, seed 42. {total['runs']:.0f} runs in {total['units']:.0f} units ("
            + ", ".join(f"{g}: {e['runs']:.0f} runs in {e['units']:.0f} units, about {e['hours']:.1f} "
                        f"hours, the longest unit {e['longest_unit_hours']:.1f}" for g, e in est.items())
            + "). Estimated before training from one epoch at `--threads 1` while two other "
            "single-thread trainings shared the machine's 2 cores (about half an idle core's "
            "speed; the evidence queue runs two units at a time, so this is its speed): the MNIST "
            f"MLP {secs['mnist']['fa']:.0f} s an epoch under FA, {secs['mnist']['dfa']:.0f} s under "
            f"DFA; Arch 1 on CIFAR-10 {secs['cifar']['fa']:.0f} s under FA, {secs['cifar']['dfa']:.0f} s "
            f"under DFA; Crafton et al.'s 784-400-10 at batch 32 {secs['crafton-mnist']['dfa']:.0f} s; "
            f"about {total['hours']:.0f} hours of one core in all, about {total['hours'] / 2:.0f} "
            "hours of the queue's two jobs.", ""]
    for task, (title, axes) in TASKS.items():
        out += [f"### {title}", ""]
        for axis_name, axis in axes.items():
            entry = table.get(task, {}).get(axis_name)
            out += [f"**{axis.title}** (`{axis.key}`)" + ("" if entry else ": not measured yet."), ""]
            if not entry:
                continue
            if (task, axis_name) in figures:
                out += [f"![{task}: {axis.title}]({figures[(task, axis_name)]})", ""]
            rules = list(entry["rules"])
            head = ["value", *[f"{r} test %" for r in rules], *[f"{r} angle (deg)" for r in rules]]
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for i, label in enumerate(entry["values"]):
                accs = [_cell(entry["rules"][r]["acc"][i]) for r in rules]
                angles = [_cell(entry["rules"][r]["angle"][i], 1.0, 1) for r in rules]
                out.append("| " + " | ".join([label, *accs, *angles]) + " |")
            out.append("")
    out += ["### Beside the published numbers", "",
            "**Crafton et al. 2019**, \"Direct Feedback Alignment With Sparse Connections for Local "
            "Learning\" (Front. Neurosci. 13:525; code github.com/bcrafton/ssdfa). Their MNIST "
            f"setting, read from the code ({CRAFTON_SETTINGS['source']}): {CRAFTON_SETTINGS['network']}; "
            f"{CRAFTON_SETTINGS['optimizer']}; {CRAFTON_SETTINGS['feedback']}; "
            f"{CRAFTON_SETTINGS['selection']}. falign runs it as `dfa` with `b_density` one per row "
            "(the `crafton-mnist` units), with SGD + momentum 0.9 at lr 0.001 for their Adam with "
            "epsilon 1 and Xavier in place of their zero start "
            "(`falign.reproduce.hardware_feedback.crafton_config` lists each deviation). Published "
            "accuracies: not found — only the paper's abstract could be read, and the "
            "repository commits no results (get_results.py reads .npy files it does not hold).", "",
            "| method | falign test % | published test % |", "|---|---|---|"]
    for method, row in crafton.items():
        acc = "-" if row.get("test_acc") is None else f"{100 * row['test_acc']:.2f}"
        pub = "not found" if row.get("published") is None else f"{row['published']:.2f}"
        out.append(f"| `{method}` | {acc} | {pub} |")
    out += ["", "**Launay et al. 2020**, \"Light-in-the-loop: using a photonics co-processor for "
            "scalable training of neural networks\" (arXiv 2006.01475): DFA on MNIST with the error "
            "projection computed by an optical processing unit. falign models the device with the "
            "`optical` key (a simulated optical random projection: complex Gaussian transmission "
            "matrix, ternary input as two binary frames, intensity detection, camera quantisation; "
            "see above), but no unit is planned: their network and protocol could not be read, and a "
            "unit in a guessed setting would compare with nothing. Once they are, the unit is `dfa` "
            "with `hardware: {optical: ...}` in that setting. What the paper's abstract and "
            "introduction say: "
            f"{LAUNAY_PLAN['task']}; {LAUNAY_PLAN['feedback']}. Not found: {LAUNAY_PLAN['not found']}.",
            "", END]
    return "\n".join(out)


def _figure_name(task: str, axis_name: str) -> str:
    return f"{NAME}-{task}-{axis_name}.png"


def write_page(results: Path, repo: Path) -> list[Path]:
    """Rewrite the section "Measured curves" of docs/hardware.md (between its markers) and its
    figures from ``results/hardware-feedback.json`` and the committed records; the files changed."""
    from .queue import records_dir

    page_path = Path(repo) / PAGE
    if not page_path.is_file():
        return []
    try:
        summary = ReproductionSummary.load(Path(results) / f"{NAME}.json")
    except RecordError:
        summary = None
    root = records_dir(Path(results), NAME)
    table, crafton = curves(root), crafton_table(root)
    figures, drawn = {}, []
    for task, axes in table.items():
        for axis_name in axes:
            path = draw(table, task, axis_name, Path(repo) / FIGURES / _figure_name(task, axis_name))
            if path is not None:
                figures[(task, axis_name)] = os.path.relpath(path, page_path.parent)
                drawn.append(path)
    text = page_path.read_text()
    new = rewrite(text, section(summary, table, crafton, figures))
    if new == text:
        return drawn
    page_path.write_text(new)
    return [page_path, *drawn]


def rewrite(text: str, block: str) -> str:
    """``text`` with the section between the markers replaced by ``block`` (appended when the
    page has no markers yet)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


register_target(Target(
    NAME, "Hardware-aware feedback: FA and DFA against rank, density, levels, variation and noise of B",
    "falign's own experiment; Crafton et al. 2019 (sparse DFA), Launay et al. 2020 (optical DFA)",
    hardware_feedback, metric="test accuracy % (Crafton et al.'s: best over the epochs)",
    parts=("mnist-ideal", *(f"mnist-{a}" for a in MNIST_AXES), "cifar-ideal",
           *(f"cifar-{a}" for a in CNN_AXES), "crafton-mnist"),
    page=write_page))
