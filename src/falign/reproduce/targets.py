"""The reproduction targets of the first papers: DFA on MNIST, Lillicrap et al. 2016, BioTorch's
LeNet benchmark, the sign-tracking confound, Lance & Kieu 2026.  Published numbers are the
papers' own (see docs/protocols.md)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..report.analyses import predictions as predictions  # its home before report/analyses.py
from ..training.compare import method, run_label
from ..training.config import ExperimentConfig
from .base import Context as Context
from .base import Outcome, ReproduceError, Target, confusion_figures, register_target

# -- targets ---------------------------------------------------------------------------------

MNIST_SMOKE = {"data.subset": 1500, "train.epochs": 2}


def seeds_of(ctx: Context, cfg: ExperimentConfig, n: int = 3) -> list[int]:
    """The config's seed and the next ``n - 1`` (one seed at the smoke scale)."""
    return [cfg.seed + i for i in range(1 if ctx.smoke else n)]


def dfa_mnist(ctx: Context) -> Outcome:
    cfg = ctx.config("dfa-mnist", MNIST_SMOKE)
    seeds = seeds_of(ctx, cfg)
    # the report's BP number belongs to its own BP twin (Adam, squared error): bp-adam-mse;
    # falign's bp trains with DFA's optimiser and loss, and has no published number
    published = {"dfa": 97.23, "bp-adam-mse": 97.24}
    compare_dir, _ = ctx.compare_seeds(cfg, cfg.compare, seeds, "compare", published=published)
    first = seeds[0]
    runs = {f"dfa (seed {first})": compare_dir / "dfa" / f"seed{first}",
            f"bp (seed {first})": compare_dir / "bp" / f"seed{first}"}
    for loop in ("batch", "class"):
        for step in ("mean", "sum"):  # the report's update, and one at the per-sample step size
            loop_cfg = cfg.model_copy(deep=True)
            loop_cfg.rule.options = {**cfg.rule.options, "average": loop, "average_step": step}
            name = f"dfa-{loop}" + ("" if step == "mean" else "-sum")
            loop_cfg.name = f"{cfg.name}-{name[4:]}"
            ctx.log(f"== dfa, {loop}-averaged loop, {step} step")
            ctx.train(loop_cfg, name, part="averaged-loops")
            runs[f"dfa ({loop}-averaged{'' if step == 'mean' else ', summed step'})"] = ctx.out / name
    ctx.trained()
    # the averaged loops are DFA runs with no published number: None stops the report's lookup
    # of a run's number at its directory name, before it reaches the rule's
    loops = list(runs.values())[2:]
    outcome = Outcome(run_dirs=[compare_dir, *loops],
                      published={**published, **{path.name: None for path in loops}}, notes=[
        f"Published (the DFA framework report): DFA 97.23%, BP 97.24% test accuracy, one run each; "
        f"falign trains seeds {', '.join(map(str, seeds))}. The report's BP twin used Adam with "
        "MSE, so it is not like for like: falign's 'bp' uses the same SGD/BCE setting as DFA, and "
        "'bp-adam-mse' is the report's twin (Adam, lr 1e-4, squared error on the logits).",
        "The batch- and class-averaged loops make one update per batch (per class) from averaged "
        "activations and errors, as the report describes; the report gives no accuracy for them "
        f"(one seed, {first}). 'summed step' multiplies each averaged update by the number of "
        "samples averaged, the step size of the summed per-sample update: what remains between it "
        "and per-sample DFA is the update built from batch means (mean delta times mean h), which "
        "loses the correlation of each input with its own error.",
        "bp-adam-mse misses the report's 97.24% by more than 0.3 points because of its inputs: the "
        "report's code scales pixels to [0, 1], trains on all 60,000 images and tests the last "
        "epoch; falign standardises pixels (mean 0.1307, std 0.3081), holds out 5,000 and tests "
        "the best-validation epoch. Trained as the report did, the twin reaches 97.21 ± 0.13% "
        "(seeds 0, 1, 2); with standardised pixels and the same data and selection 97.71 and "
        "97.52% (seeds 0, 1), 0.40 and 0.46 above the same seeds on [0, 1] pixels, which learn "
        "more slowly (training accuracy after 80 epochs 98.1-98.2 against 98.9-99.0%). Records: "
        "results/runs/dfa-mnist/twin-inputs; commands: docs/experiments/results.md.",
    ])
    confusion_figures(ctx, {k: v for k, v in runs.items() if "seed" in k}, cfg, outcome)
    return outcome


def lillicrap(ctx: Context) -> Outcome:
    cfg = ctx.config("lillicrap-mnist", {**MNIST_SMOKE, "train.alignment_every": 5})
    seeds = seeds_of(ctx, cfg)
    compare_dir, _ = ctx.compare_seeds(cfg, ["bp", "fa"], seeds, "compare", published={"fa": 97.9})
    ctx.trained()
    return Outcome(run_dirs=[compare_dir], published={"fa": 97.9}, notes=[
        "Published (Lillicrap et al. 2016): FA reaches about 2.1% test error (97.9% accuracy); the "
        "angle between FA's and backprop's hidden updates falls from about 90 deg to 25-45 deg "
        f"within the first epochs (update-alignment figure). Seeds {', '.join(map(str, seeds))}.",
    ])


BIOTORCH_ERR = {
    "mnist": {"bp": 0.91, "fa": 1.70, "dfa": 1.61, "usf": 0.94, "brsf": 0.91, "frsf": 0.97},
    "fashion-mnist": {"bp": 9.20, "fa": 13.06, "dfa": 12.81, "usf": 9.69, "brsf": 10.02, "frsf": 9.61},
}


def biotorch_lenet(ctx: Context) -> Outcome:
    dirs, published, notes = [], {}, []
    for ds in ("mnist", "fashion-mnist"):
        cfg = ctx.config(f"lenet-{ds}", {"data.subset": 1000, "train.epochs": 1})
        compare_dir, rows = ctx.compare(cfg, cfg.compare, f"lenet-{ds}",
                                        published={k: 100 - v for k, v in BIOTORCH_ERR[ds].items()})
        dirs.append(compare_dir)
        for r in rows:
            err = BIOTORCH_ERR[ds].get(r.label)
            if err is not None and r.test_acc is not None:
                notes.append(f"{ds} {r.label}: test error {100 - 100 * r.test_acc:.2f}% "
                             f"(published {err:.2f}%)")
        published.update({k: 100 - v for k, v in BIOTORCH_ERR["mnist"].items()})
    ctx.trained()
    notes.insert(0, "Published: BioTorch (Sanfiz & Akrout 2021) top-1 test error, single runs, "
                    "model selected on the test set; the results table compares MNIST accuracy, "
                    "the lines below both datasets' errors.")
    return Outcome(run_dirs=dirs, published=published, notes=notes)


def sign_tracking(ctx: Context) -> Outcome:
    smoke = {**MNIST_SMOKE, "train.epochs": 1, "sweep.trial_epochs": 1, "sweep.final_seeds": [0],
             "sweep.final_epochs": 1}
    cfg = ctx.config("sign-tracking-mnist", smoke)
    compare_dir, fixed_rows = ctx.compare(cfg, cfg.compare, "fixed-lr")
    spec = cfg.sweep
    if ctx.smoke:
        for space in spec.rules.values():
            space.params = {"optim.lr": [0.001, 0.03]}
    summary = ctx.sweep(cfg, spec, "tuned-lr")
    ctx.trained()
    notes = [f"One shared learning rate ({cfg.optim.lr}), then each rule with its own tuned rate "
             "(grid search, final runs over several seeds). A gap between sign tracking and BP at "
             "the shared rate that disappears once each is tuned is a learning-rate confound: "
             "B = sign(W) has another norm than W, which rescales the effective step."]
    fixed = {r.label: r.test_acc for r in fixed_rows}
    extra = []
    for label, entry in summary.rules.items():
        mean = entry.final.test_acc_mean if entry.final else None
        std = entry.final.test_acc_std if entry.final else None
        lr = (entry.best_params or {}).get("optim.lr")
        shared = fixed.get(label)
        extra.append({"method": label, "shared_lr_test": shared, "tuned_lr": lr,
                      "tuned_test_mean": mean, "tuned_test_std": std})
        notes.append(f"{label}: shared lr {100 * shared:.2f}%" if shared is not None else label)
        if mean is not None:
            notes[-1] += f"; tuned lr {lr}: {100 * mean:.2f} ± {100 * (std or 0):.2f}%"
    ctx.measure("shared_vs_tuned_lr", extra)
    final_dirs = sorted((ctx.out / "tuned-lr" / "final").glob("*"))
    return Outcome(run_dirs=[compare_dir, *final_dirs], published={}, notes=notes, extra_rows=extra)


LK_PUBLISHED = {"bp": 75.80, "fa:dense": 35.77, "fa": 40.07, "frsf": 74.30, "usf_norm": 75.67}


def lance_kieu(ctx: Context) -> Outcome:
    from .lance_kieu import (
        PAPER_PART,
        PAPER_VALUES,
        SPREAD_METHODS,
        SPREAD_PART,
        SPREAD_SEEDS,
        analyse,
        paper_config_notes,
        spread_notes,
    )

    smoke = {"data.subset": 600, "train.epochs": 2, "sweep.final_epochs": 2, "sweep.trial_epochs": 1,
             "train.alignment_every": 2}
    cfg = ctx.config("arch1-cifar10", smoke)
    spec = cfg.sweep
    if ctx.smoke:  # one grid point per method (the middle of the paper's grid)
        for space in spec.rules.values():
            space.params = {k: [v[len(v) // 2]] for k, v in space.params.items()}
    ctx.sweep(cfg, spec, "sweep", published=LK_PUBLISHED)
    finals = {label: f"sweep/final/{run_label(label)}-seed{spec.final_seeds[0]}" for label in spec.rules}
    ctx.final_models(finals)  # a final whose model a machine change lost: retrained alone
    runs = {label: ctx.out / rel for label, rel in finals.items()}
    outcome = Outcome(run_dirs=list(runs.values()), published=dict(LK_PUBLISHED), notes=[
        "Published (Lance & Kieu 2026, CIFAR-10, best validation checkpoint, seed 42): test "
        "accuracy BP 75.80, FA dense 35.77, FA kernel 40.07, uSF Init 74.30, uSF SN 75.67%. "
        "CKA vs BP (diagonal): uSF variants 0.99 at conv1, 0.93-0.94 at conv2; FA kernel 0.72 at "
        "conv1, 0.06 at fc3; FA dense 0.60 at conv1, 0.09 at fc3.",
    ])

    def analyses():  # once the five models exist side by side
        feedback = fixed_feedback_check(runs)
        outcome.notes.extend(feedback)
        return analyse(ctx, cfg, finals, feedback, outcome)

    ctx.analyses(list(finals.values()), analyses)
    # the paper's number is seed 42's; FA's and BP's finals at two more seeds measure how far
    # one seed of this network can fall from another (FA misses the published 40.07% by 3.97)
    ctx.reseed({m: finals[m] for m in SPREAD_METHODS}, SPREAD_SEEDS, part=SPREAD_PART)
    # the grid chose another scale of B for FA than the paper's search: FA's finals again at
    # seed 42 with the paper's lr and s set, so that only the grid's choice differs
    ctx.substitute({m: finals[m] for m in PAPER_VALUES}, PAPER_VALUES, part=PAPER_PART)
    ctx.trained()
    outcome.notes += spread_notes(ctx.methods) + paper_config_notes(ctx.methods)
    return outcome


def fixed_feedback_check(runs: dict[str, Path]) -> list[str]:
    """Every rule that neither updates nor trains its stored feedback (fa, fa:dense, frsf, usf,
    dfa, ...) keeps it unchanged between its first and last checkpoint."""
    from ..rules import get_rule

    notes = []
    for label, run_dir in runs.items():
        _, rule, opts = method(label)
        r = get_rule(rule, **opts)
        if r.stateful or r.learned:
            continue
        checkpoints = sorted(run_dir.glob("epoch_*.pt"))
        if len(checkpoints) < 2:
            continue
        last = torch.load(checkpoints[-1], weights_only=True)["model"]
        keys = [k for k in last if k.endswith(".feedback")]
        if not keys:
            continue
        first = None
        for path in checkpoints:  # a lazy (dense) B exists from the first training epoch on
            state = torch.load(path, weights_only=True)["model"]
            if all(k in state for k in keys):
                first = state
                break
        same = first is not None and all(torch.equal(first[k], last[k]) for k in keys)
        notes.append(f"{label}: {len(keys)} fixed feedback tensors "
                     f"{'unchanged' if same else 'CHANGED'} from the first to the last checkpoint")
        if not same:
            raise ReproduceError(f"{run_dir}: a fixed feedback matrix changed during training")
    return notes


def _lk_page(results: Path, repo: Path) -> list[Path]:
    from .lance_kieu import write_page

    return write_page(results, repo)


def _lk_measures(methods) -> dict:
    from .lance_kieu import paper_config_measures, spread_measures

    return {**spread_measures(methods), **paper_config_measures(methods)}


for _target in (
    Target("lance-kieu-2026", "Lance & Kieu 2026: FA on a CIFAR-10 CNN (Arch 1)",
           "Lance & Kieu 2026, Interpretability Analysis of Feedback Alignment on CNN", lance_kieu,
           page=_lk_page, measures=_lk_measures),
    Target("biotorch-lenet", "BioTorch benchmark: LeNet on MNIST and Fashion-MNIST",
           "Sanfiz & Akrout 2021, Benchmarking the Accuracy and Robustness of Feedback Alignment",
           biotorch_lenet, metric="test accuracy % (100 - published top-1 error)"),
    Target("dfa-mnist", "DFA framework report: MNIST 784-200-10 with DFA and its averaged loops",
           "Bechet, a PyTorch framework for direct feedback alignment (technical report)", dfa_mnist),
    Target("lillicrap-2016", "Lillicrap et al. 2016: FA vs BP on MNIST with the alignment angle",
           "Lillicrap et al. 2016, Nat. Commun. 7:13276", lillicrap),
    Target("sign-tracking", "Sign tracking and the learning-rate confound",
           "Moskovitz, Litwin-Kumar & Abbott 2018 (sign-concordant feedback); falign's own experiment",
           sign_tracking, metric="none published (falign's own experiment)"),
):
    register_target(_target)


# -- Webster, Choi & Ahn 2020: direct Kolen-Pollack --------------------------------------------

#: their README: test accuracy %, mean of four randomly initialised trials of 50 epochs
DKP_PUBLISHED = {"bp": 70.47, "dfa": 61.02, "dkp": 67.52}
DKP_TRIALS = 4


def dkp_2020(ctx: Context) -> Outcome:
    cfg = ctx.config("dkp-cifar10", {"data.subset": 500, "train.epochs": 1})
    seeds = seeds_of(ctx, cfg, DKP_TRIALS)
    compare_dir, _ = ctx.compare_seeds(cfg, cfg.compare, seeds, "compare", published=DKP_PUBLISHED)
    ctx.trained()
    return Outcome(run_dirs=[compare_dir], published=dict(DKP_PUBLISHED), notes=[
        "Published (Webster, Choi & Ahn 2020, their public code's README, CIFAR-10, mean of 4 "
        "randomly initialised trials of 50 epochs): BP 70.47, DFA 61.02, DKP 67.52 % test "
        f"accuracy. falign trains seeds {', '.join(map(str, seeds))} on the CIFAR-10 JPEG copy "
        "and reports each run's final (last-epoch) model.",
        "Protocol (their code): conv 3->32 3x3 + BN + ReLU, conv 32->32 3x3 + BN + ReLU, max-pool "
        "2, FC 6272->128 + ReLU, 128->10; pixels in [-1, 1], no augmentation; batch 50; W by SGD "
        "with Nesterov momentum 0.9, lr 5e-4, weight decay 1e-6 for every method; DKP's B by its "
        "own Adam (lr 1e-4, weight decay 1e-6, rate x0.8 after every epoch: optim.feedback). "
        "Deviations: conv2's feedback arrives at fc1's input after the pool (theirs before it); "
        "B is Gaussian with the Xavier std (theirs Kaiming-uniform, the same std to 4%).",
    ])


register_target(Target("dkp-2020", "Webster, Choi & Ahn 2020: direct Kolen-Pollack on CIFAR-10",
                       "Webster, Choi & Ahn 2020, Learning the connections in direct feedback "
                       "alignment (code: github.com/webstah/dkp-gist)", dkp_2020))
