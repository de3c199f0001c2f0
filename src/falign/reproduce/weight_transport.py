"""Targets on learning without weight transport in fully connected networks: Akrout et al.
2019 (weight mirror, Kolen-Pollack) and the linear FA vs BP loss table of L0SG's PyTorch
implementation of Lillicrap et al. 2016.  Protocols: docs/protocols.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..training.compare import mean_std
from ..training.record import RunRecord
from .base import Context, Outcome, Target, register_target

AKROUT_PUBLISHED = {
    "mnist": {"bp": 98.50, "fa": 97.80, "wm": 98.49, "kp": 98.45},
    "cifar10": {"bp": 48.18, "fa": 42.96, "wm": 46.20, "kp": 47.57},
}
#: final angle between the hidden layer's error signal and backprop's, CIFAR-10 (degrees)
AKROUT_ANGLES = {"fa": 49.0, "wm": 8.0, "kp": 2.0}
AKROUT_SEEDS = [1111, 1112, 1113]


def final_delta_angles(run_dir: Path) -> dict[str, float]:
    """Layer -> the delta angle of the run's last alignment probe."""
    record = RunRecord.read(run_dir / "tracking.json")
    for probe in reversed(record.alignment):
        values = {layer: m.get("delta_angle") for layer, m in probe.layers.items()}
        values = {k: float(v) for k, v in values.items() if v is not None}
        if values:
            return values
    return {}


def _hidden(angles: dict[str, float]) -> tuple[str, float] | None:
    """The first layer's delta angle: the hidden layer of a one-hidden-layer network (the output
    layer's error is e under every rule: 0 degrees)."""
    return next(iter(angles.items()), None)


def akrout(ctx: Context) -> Outcome:
    from ..plots import NothingToPlot, plot_alignment

    outcome = Outcome(run_dirs=[], published={}, notes=[
        "Published (Akrout et al. 2019, the authors' code, final test accuracy, 400 epochs): MNIST "
        "784-500-10 BP 98.50, FA 97.80, WM 98.49, KP 98.45 %; CIFAR-10 3072-1000-10 BP 48.18, "
        "FA 42.96, WM 46.20, KP 47.57 %; final angle between the hidden layer's error signal and "
        "backprop's on CIFAR-10 about 49 deg (FA), 8 (WM), 2 (KP).",
    ])
    parts = (("mnist", "akrout-mnist", {"data.subset": 1500, "train.epochs": 2, "train.alignment_every": 4}),
             ("cifar10", "akrout-cifar10", {"data.subset": 500, "train.epochs": 1,
                                            "train.alignment_every": 2}))
    angles: dict[str, dict[str, Any]] = dict(ctx.measures.get("final_delta_angle_deg") or {})
    for part, name, smoke in parts:
        if not ctx.wants(part):
            if (ctx.out / part / "compare.json").is_file():  # an earlier call's: in the report too
                outcome.run_dirs.append(ctx.out / part)
            continue
        cfg = ctx.config(name, smoke)
        seeds = AKROUT_SEEDS[:1] if ctx.smoke or part == "cifar10" else AKROUT_SEEDS
        published = AKROUT_PUBLISHED[part]
        folder, groups = ctx.compare_seeds(cfg, cfg.compare, seeds, part, published=published)
        outcome.run_dirs.append(folder)
        if part == "mnist":
            outcome.published.update(published)
        label_dirs = {g.label: folder / g.label / f"seed{seeds[0]}" for g in groups}
        try:
            paths = plot_alignment({k: RunRecord.read(v / "tracking.json")
                                    for k, v in label_dirs.items() if k != "bp"},
                                   folder / "delta_angle", "delta_angle",
                                   title=f"{part}: the error each layer receives vs backprop's "
                                   f"(seed {seeds[0]})")
            outcome.figures.append((f"Delta angle ({part})", paths[0],
                                    "Degrees between the error signal a layer receives (its output "
                                    "gradient) under the rule and under backprop, over training: "
                                    "Akrout et al.'s measure. The output layer's is 0 under every rule."))
        except NothingToPlot:
            pass
        part_angles = {}
        for g in groups:
            finals = [_hidden(final_delta_angles(folder / g.label / f"seed{s}")) for s in g.seeds]
            values = [v for _, v in filter(None, finals)]
            if values:
                mean, std = mean_std(values)
                published_angle = AKROUT_ANGLES.get(g.label) if part == "cifar10" else None
                part_angles[g.label] = {"layer": finals[0][0] if finals[0] else None, "mean": mean,
                                        "std": std, "seeds": values, "published": published_angle}
                outcome.notes.append(f"{part} {g.label}: final hidden-layer delta angle {mean:.1f} ± "
                                     f"{std:.1f} deg over {len(values)} seed(s)")
        angles[part] = part_angles
        ctx.measure("final_delta_angle_deg", angles)
    ctx.trained()
    return outcome


# -- the linear network: FA vs BP loss table ----------------------------------------------------

#: (epoch, step, FA loss, BP loss): the single-batch losses of L0SG's feedback-alignment-pytorch
#: README (train_fa_vs_bp_linear_model.py, MNIST, 784-1000-10 without a non-linearity)
LINEAR_TABLE = [
    (0, 1000, 0.46798, 0.35344), (0, 1875, 0.42992, 0.39659), (1, 1000, 0.43433, 0.37663),
    (1, 1875, 0.29304, 0.21735), (2, 1000, 0.41269, 0.38590), (2, 1875, 0.23184, 0.24429),
    (3, 1000, 0.35857, 0.25014), (3, 1875, 0.08632, 0.06498), (4, 1000, 0.18751, 0.13469),
    (4, 1875, 0.45113, 0.39115), (5, 1000, 0.26102, 0.16991), (5, 1875, 0.16346, 0.13278),
    (6, 1000, 0.29775, 0.14079), (6, 1875, 0.50019, 0.42758), (7, 1000, 0.26730, 0.20934),
    (7, 1875, 0.18355, 0.11935), (8, 1000, 0.46082, 0.27962), (8, 1875, 0.16061, 0.15758),
    (9, 1000, 0.17815, 0.10925), (9, 1875, 0.23911, 0.17510), (10, 1000, 0.55483, 0.36205),
    (10, 1875, 0.09864, 0.07822), (11, 1000, 0.22050, 0.06755), (11, 1875, 0.30027, 0.28331),
    (12, 1000, 0.30410, 0.22639), (12, 1875, 0.23802, 0.12401), (13, 1000, 0.38504, 0.31829),
    (13, 1875, 0.31254, 0.17021), (14, 1000, 0.30799, 0.16914), (14, 1875, 0.08483, 0.05910),
    (15, 1000, 0.11392, 0.07960), (15, 1875, 0.33861, 0.30033), (16, 1000, 0.53456, 0.25107),
    (16, 1875, 0.29415, 0.14761), (17, 1000, 0.14059, 0.07061), (17, 1875, 0.10071, 0.06098),
    (18, 1000, 0.34540, 0.13852), (18, 1875, 0.32415, 0.16791), (19, 1000, 0.34725, 0.24961),
    (19, 1875, 0.34411, 0.19213), (20, 1000, 0.14642, 0.09837), (20, 1875, 0.06806, 0.04413),
    (21, 1000, 0.16839, 0.04480), (21, 1875, 0.15662, 0.08321), (22, 1000, 0.24548, 0.09513),
    (22, 1875, 0.24273, 0.07480), (23, 1000, 0.33001, 0.14574), (23, 1875, 0.27394, 0.17840),
    (24, 1000, 0.27252, 0.10221), (24, 1875, 0.39897, 0.24693), (25, 1000, 0.25453, 0.12092),
    (25, 1875, 0.51975, 0.14524), (26, 1000, 0.24217, 0.09227),
]
LINEAR_STEPS = 1875  # batches of 32 in MNIST's 60,000 training images


def step_losses(run_dir: Path) -> dict[int, float]:
    from ..training.loggers import read_steps

    return {int(e["step"]): float(e["loss"]) for e in read_steps(run_dir)}


def loss_table(fa: list[dict[int, float]], bp: list[dict[int, float]], points: list[tuple[int, int]],
               steps_per_epoch: int) -> dict[str, Any]:
    """At each (epoch, step-in-epoch) point: the seeds' mean FA and BP losses; per seed, how many
    points have FA above BP; and the mean over the points."""
    rows = []
    for epoch, at in points:
        step = epoch * steps_per_epoch + at
        f = [run[step] for run in fa if step in run]
        b = [run[step] for run in bp if step in run]
        if len(f) == len(fa) and len(b) == len(bp):
            rows.append({"epoch": epoch, "step": at, "fa": mean_std(f)[0], "bp": mean_std(b)[0],
                         "fa_seeds": f, "bp_seeds": b})
    above = [sum(r["fa_seeds"][i] > r["bp_seeds"][i] for r in rows) for i in range(min(len(fa), len(bp)))]
    return {"rows": rows, "points": len(rows), "fa_above_bp_per_seed": above,
            "fa_mean": mean_std([r["fa"] for r in rows])[0], "bp_mean": mean_std([r["bp"] for r in rows])[0]}


def linear_fa(ctx: Context) -> Outcome:
    from ..plots import plot_curves

    cfg = ctx.config("linear-mnist", {"data.subset": 1600, "train.epochs": 2, "train.log_every": 10})
    seeds = [cfg.seed] if ctx.smoke else [cfg.seed + i for i in range(3)]
    published = {"fa": LINEAR_TABLE[1][2], "bp": LINEAR_TABLE[1][3]}
    folder, groups = ctx.compare_seeds(cfg, cfg.compare, seeds, "compare", published=published)
    ctx.trained()
    runs = {g.label: [step_losses(folder / g.label / f"seed{s}") for s in g.seeds] for g in groups}
    steps_per_epoch = math.ceil(len_train(folder / "bp" / f"seed{seeds[0]}") / cfg.train.batch_size)
    if ctx.smoke:  # the table's steps do not exist in a small subset: its logged steps instead
        logged = sorted(set.intersection(*(set(r) for rs in runs.values() for r in rs)))
        points = [((s - 1) // steps_per_epoch, (s - 1) % steps_per_epoch + 1) for s in logged]
    else:
        points = [(e, s) for e, s, _, _ in LINEAR_TABLE]
    table = loss_table(runs["fa"], runs["bp"], points, steps_per_epoch)
    published_table = {"points": len(LINEAR_TABLE), "fa_above_bp": sum(f > b for _, _, f, b in LINEAR_TABLE),
                       "fa_mean": mean_std([f for _, _, f, _ in LINEAR_TABLE])[0],
                       "bp_mean": mean_std([b for _, _, _, b in LINEAR_TABLE])[0]}
    ctx.measure("loss_table", {"measured": table, "published": published_table,
                               "published_rows": [list(r) for r in LINEAR_TABLE]})
    notes = [
        "Published (L0SG's feedback-alignment-pytorch README): single-batch losses at steps 1000 and "
        f"1875 of each epoch; FA above BP at {published_table['fa_above_bp']} of {len(LINEAR_TABLE)} "
        f"points, mean {published_table['fa_mean']:.3f} (FA) against {published_table['bp_mean']:.3f} (BP).",
        f"Measured over seeds {', '.join(map(str, seeds))} at {table['points']} points: FA above BP at "
        f"{', '.join(map(str, table['fa_above_bp_per_seed']))} points (per seed); mean "
        + (f"{table['fa_mean']:.3f} (FA) against {table['bp_mean']:.3f} (BP)."
           if table["points"] else "-"),
    ]
    figures = []
    if table["rows"]:
        x = [r["epoch"] + r["step"] / steps_per_epoch for r in table["rows"]]
        series = {"FA (falign, seed mean)": [r["fa"] for r in table["rows"]],
                  "BP (falign, seed mean)": [r["bp"] for r in table["rows"]]}
        if not ctx.smoke:
            series["FA (published)"] = [f for _, _, f, _ in LINEAR_TABLE]
            series["BP (published)"] = [b for _, _, _, b in LINEAR_TABLE]
        paths = plot_curves(series, folder / "step_losses", "Epoch", "Single-batch loss (nats)",
                            "Linear 784-1000-10 on MNIST: FA vs BP", x=x)
        figures.append(("Single-batch losses", paths[0],
                        "The loss of one batch of 32 at the table's steps (1000 and 1875 of each epoch)."))
    return Outcome(run_dirs=[folder], published={}, notes=notes, figures=figures)


def len_train(run_dir: Path) -> int:
    """The number of training examples of a run (from its dataset description, "N/V/T")."""
    record = RunRecord.read(run_dir / "tracking.json")
    sizes = record.dataset.rsplit(",", 1)[-1].strip().split("/")
    return int(sizes[0])


register_target(Target("akrout-2019", "Akrout et al. 2019: weight mirror and Kolen-Pollack",
                       "Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, Deep learning without "
                       "weight transport, NeurIPS", akrout, parts=("mnist", "cifar10")))
register_target(Target("linear-fa", "FA vs BP on a linear network (MNIST)",
                       "L0SG, feedback-alignment-pytorch (after Lillicrap et al. 2016)", linear_fa,
                       metric="single-batch training loss at step 1875 of epoch 0"))
