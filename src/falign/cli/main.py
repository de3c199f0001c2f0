"""The ``falign`` command: parse, build a config, call the library.  Nothing else lives here.

Every flag a command takes is honoured or refused with one line ``falign: error: ...`` (exit 2);
none is accepted and then ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
from pathlib import Path
from typing import NoReturn

from ..errors import FalignError

COMPARE_RULES = "bp,fa,dfa,usf,frsf"

# Defaults of `falign compare` without --config: a quick, fair comparison (< 5 min on 2 CPU cores
# for MNIST).  Every rule gets the same optimiser, data order and seed.  With --config the
# config's own values stand, and only the flags given replace them.
COMPARE_DEFAULTS = {
    "dataset": "mnist",
    "model": "mlp",
    "seed": 0,
    "device": "auto",
    "optim": {"name": "adam", "lr": 1e-3},
    "epochs": 5,
    "batch_size": 128,
}


class UsageError(FalignError):
    """A command line that cannot be carried out as written; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``falign: error:`` line, like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _data_dir(args, cfg):
    """``--data-dir`` over a config's own ``data.root`` (a config without one finds it through
    the root `main` sets for the whole command)."""
    if getattr(args, "data_dir", None) and cfg.data.root is not None:
        cfg.data.root = str(Path(args.data_dir).resolve())
    return cfg


def _settings(args) -> contextlib.AbstractContextManager:
    """``--data-dir`` and ``--threads`` for every run and dataset of this command, handed to the
    library as scoped settings (the user's ``$FALIGN_DATA`` and ``$FALIGN_THREADS`` stay as they
    are)."""
    stack = contextlib.ExitStack()
    if getattr(args, "data_dir", None):
        from ..data import using_data_root

        stack.enter_context(using_data_root(Path(args.data_dir).resolve()))
    if getattr(args, "threads", None):
        from ..training.loop import using_threads

        stack.enter_context(using_threads(args.threads))
    return stack


def _download(args, cfg):
    """``--download``: fetch the config's dataset when it is missing (``data.download``)."""
    if getattr(args, "download", False):
        cfg.data.download = True
    return cfg


def _require_data(cfg) -> None:
    """The dataset of ``cfg`` is under its data root, or ``data.download`` fetches it; checked
    before anything is written."""
    from ..data import data_root
    from ..data.fetch import missing_dataset
    from ..data.registry import _canonical as dataset_key

    if not cfg.data.download:
        missing = missing_dataset(dataset_key(cfg.data.name), data_root(cfg.data.root))
        if missing is not None:
            raise missing


def cmd_train(args) -> int:
    from ..training.config import load_config
    from ..training.loop import train

    cfg = _download(args, _data_dir(args, load_config(args.config, args.set)))
    _require_data(cfg)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    record = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"run: {out} ({record.status})")
    return 0 if record.status == "completed" else 1


def compare_flags(args) -> dict:
    """The config keys that `falign compare`'s flags set, for the flags given."""
    given = {"seed": args.seed, "device": args.device, "data.subset": args.subset,
             "train.batch_size": args.batch_size, "train.epochs": args.epochs}
    return {key: value for key, value in given.items() if value is not None}


def compare_base(args):
    from ..models.registry import compare_options
    from ..training.config import apply_overrides, check_override_keys, parse_config, set_values

    dataset = args.dataset or COMPARE_DEFAULTS["dataset"]
    model = args.model or COMPARE_DEFAULTS["model"]
    data = {
        "name": f"compare-{dataset}-{model}",
        "seed": COMPARE_DEFAULTS["seed"],
        "device": COMPARE_DEFAULTS["device"],
        "data": {"name": dataset},
        "model": {"name": model, "options": {}},
        "optim": dict(COMPARE_DEFAULTS["optim"]),
        "train": {"epochs": COMPARE_DEFAULTS["epochs"], "batch_size": COMPARE_DEFAULTS["batch_size"]},
    }
    data["model"]["options"] = compare_options(model, dataset)  # as the model's registration says
    check_override_keys(args.set)
    data = set_values(data, compare_flags(args), where="falign compare")
    return parse_config(apply_overrides(data, args.set), where="falign compare")


def _rule_list(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def _check_names(cfg, rules) -> None:
    """The dataset, model and every rule exist, asked of their registries (each raises its own
    one-line error with the nearest name) before `run_compare` makes any directory."""
    from ..data.registry import _canonical as dataset_key
    from ..models.registry import _resolve as model_builder
    from ..rules import get_rule
    from ..training.compare import method

    dataset_key(cfg.data.name)
    model_builder(cfg.model.name)
    for r in rules:
        _, name, opts = method(r)
        get_rule(name, **opts)


def cmd_compare(args) -> int:
    from ..plots import plot_seed_summary, plot_val_curves
    from ..training.compare import compare_configs, run_compare, run_compare_seeds
    from ..training.config import load_config

    if args.seeds is not None and args.seed is not None:
        raise UsageError("--seed and --seeds cannot be combined (--seeds 3 trains on seed 3 alone)")
    if args.config:
        clash = [flag for flag, value in (("--dataset", args.dataset), ("--model", args.model))
                 if value is not None]
        if clash:
            raise UsageError(f"{' and '.join(clash)} cannot be combined with --config (the config "
                             "names its dataset and model); use --set data.name=... or "
                             "--set model.name=...")
        base = load_config(args.config, args.set, values=compare_flags(args))
        rules = _rule_list(args.rules) if args.rules else (base.compare or _rule_list(COMPARE_RULES))
    else:
        base = compare_base(args)
        rules = _rule_list(args.rules or COMPARE_RULES)
    base = _download(args, _data_dir(args, base))
    out = Path(args.out) if args.out else Path("runs") / base.name
    _check_names(base, rules)
    for cfg in compare_configs(base, rules).values():
        _require_data(cfg)
    setting = f"{base.data.name} / {base.model.name}"
    if args.seeds is not None:
        groups = run_compare_seeds(base, rules, args.seeds, out, resume=args.resume,
                                   overwrite=args.overwrite)
        statuses = [r.status for g in groups for r in g.rows]
        figure = _draw(plot_seed_summary, {g.label: g.rows for g in groups}, out / "seeds",
                       title=f"{setting}: mean ± std over seeds")
    else:
        rows = run_compare(base, rules, out, resume=args.resume, overwrite=args.overwrite)
        statuses = [r.status for r in rows]
        figure = _draw(plot_val_curves, rows, out / "val_acc", title=f"{setting}: validation accuracy")
    print(f"summary: {out / 'summary.md'}; {figure}")
    return 0 if all(s == "completed" for s in statuses) else 1


def _draw(plot, *args, **kwargs) -> str:
    """"figure: PATH" of a `falign.plots` function's PNG, or why it drew none."""
    from ..plots import NothingToPlot

    try:
        return f"figure: {plot(*args, **kwargs)[0]}"
    except NothingToPlot as err:
        return f"no figure ({err})"


def cmd_sweep(args) -> int:
    from ..training.config import load_config
    from ..training.sweep import SweepError, run_sweep

    cfg = _data_dir(args, load_config(args.config, args.set))
    spec = cfg.sweep
    if spec is None:
        from ..training.config import shipped_configs_with

        raise SweepError(f"{args.config}: no 'sweep' section; the shipped configs with one: "
                         f"{', '.join(shipped_configs_with('sweep'))} (see the config reference, "
                         "docs/config.md#sweep)")
    if args.worker and args.overwrite:
        raise UsageError("--worker joins the sweep in --out and cannot --overwrite it (replace it "
                         "with one run with --overwrite and without --worker)")
    if args.trials is not None and spec.sampler == "grid" and not args.worker:
        raise UsageError("--trials: a grid sweep runs every point of its grid; --trials sets the "
                         "budget of a tpe sweep, or limits one --worker")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{cfg.name}"
    run_sweep(cfg, spec, out, storage=args.storage, worker=args.worker, resume=args.resume,
              overwrite=args.overwrite, n_trials=args.trials, heartbeat=args.heartbeat)
    return 0


def _published(path: str, run_dirs: list[str]) -> dict:
    """The ``--published`` file: {metric: {method: percent}}, naming at least one of the runs."""
    import yaml

    from ..report import ReportError, load_runs
    from ..report.runs import published_columns

    where = f"--published {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{where}: cannot read it ({type(err).__name__})") from None
    except yaml.YAMLError:
        raise ReportError(f"{where}: invalid YAML") from None
    numbers = (isinstance(data, dict) and all(
        isinstance(by, dict) and all(v is None or isinstance(v, int | float) and not isinstance(v, bool)
                                     for v in by.values()) for by in data.values()))
    if not numbers:
        raise ReportError(f"{where}: expected {{metric: {{method: percent}}}}, "
                          "e.g. {test_acc: {bp: 98.2, fa: 97.9}}")
    runs = load_runs(run_dirs)
    if not published_columns(runs, data):
        labels = ", ".join(sorted({r.label for r in runs}))
        raise ReportError(f"{where}: names none of the runs (their labels: {labels}; a rule or "
                          "run directory name also matches)")
    return data


def _report_analyses(args) -> dict:
    """The analyses `falign report`'s flags ask for, by their registered names."""
    asked = {"confusion": args.confusion, "cka": args.cka, "gradcam": args.gradcam}
    return {name: option for name, option in asked.items() if option}


def cmd_report(args) -> int:
    from ..report import write_report

    published = _published(args.published, args.runs) if args.published else None
    path = write_report(args.runs, Path(args.out), title=args.title, published=published,
                        notes=args.note, analyses=_report_analyses(args), device=args.device)
    print(f"report: {path}")
    return 0


def cmd_evaluate(args) -> int:
    from ..training.results import format_table
    from ..training.run import evaluate_checkpoint

    root = str(Path(args.data_dir).resolve()) if args.data_dir else None
    result = evaluate_checkpoint(args.checkpoint, split=args.split, device=args.device, data_root=root)
    report = result.report  # a ClassificationReport
    total = int(report.support.sum())
    correct = int(report.confusion.diagonal().sum())
    epoch = "" if result.epoch is None else f" (epoch {result.epoch})"
    print(f"checkpoint: {result.path}{epoch}")
    print(f"data: {result.dataset}; {result.split} split, {total} examples")
    print(f"accuracy: {100 * result.accuracy:.2f}% ({correct} / {total} correct)")
    print(f"loss: {result.loss:.4f} (mean per example)")
    if report.num_classes <= 30:
        names = report.class_names
        cells = [[name, *(str(int(v)) for v in row)] for name, row in zip(names, report.confusion.tolist(),
                                                                          strict=True)]
        print("\nconfusion matrix (rows: true class, columns: predicted class):")
        print(format_table(["true \\ predicted", *names], cells))
    else:
        print(f"\nconfusion matrix: {report.num_classes} classes, not printed (falign report --confusion "
              "draws it)")
    print("\nper-class report:")
    print(report.to_text().rstrip())
    return 0


def cmd_reproduce(args) -> int:
    from ..reproduce import reproduce

    reproduce(args.name, scale=args.scale, out=args.out, resume=args.resume,
              overwrite=args.overwrite, download=args.download, parts=args.part,
              records=args.records)
    return 0


def cmd_rules(args) -> int:
    from ..rules import rules

    for name, text in rules().items():
        print(f"{name:<14} {text}")
    return 0


def cmd_download(args) -> int:
    from ..data import data_root, download

    root = data_root(args.data_dir)
    for name in args.names:
        download(name, root, base_url=args.mirror)
        print(f"{name}: ready in {root}")
    return 0


def _number(kind: type, low: float, *, strict: bool):
    """An argparse type: a ``kind`` above ``low`` (``strict``) or at least ``low``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    return parse


positive_int = _number(int, 0, strict=True)
positive_float = _number(float, 0, strict=True)


def seed_list(text: str) -> list[int]:
    """``0,1,2``: distinct integer seeds."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed given twice in {text!r}")
    return seeds


def version_line() -> str:
    """falign's version, torch's and Python's, one line."""
    import torch

    from .. import __version__

    return f"falign {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


class _Version(argparse.Action):
    """``--version``: the line of `version_line`, then exit 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def _names(names) -> str:
    return ", ".join(names)


def build_parser() -> argparse.ArgumentParser:
    from ..data import available_datasets
    from ..models import available_models
    from ..reproduce import TARGETS
    from ..rules import rules

    ap = _Parser(prog="falign", description="Learning rules without weight transport: train, "
                 "compare, sweep, analyse.")
    ap.add_argument("--version", action=_Version, help="print falign's, torch's and Python's versions")
    sub = ap.add_subparsers(dest="command", required=True)

    def data_dir(p, config=True):
        also = "; replaces the config's own data.root" if config else ""
        p.add_argument("--data-dir", help=f"dataset root (else $FALIGN_DATA, else ./data){also}")

    def download(p):
        p.add_argument("--download", action="store_true",
                       help="fetch a missing dataset first (online; checksummed; sets data.download)")

    def overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")

    def threads(p):
        p.add_argument("--threads", type=positive_int, metavar="N",
                       help="intra-op CPU threads of each training process (over $FALIGN_THREADS; "
                       "default: half the CPUs, at most 8; a resumed run keeps its own)")

    def out_dir(p, what="run", *, reread=True):
        same = (f"; the same {what} there (the same config), once finished, is read back and "
                f"nothing trained; another {what} there is refused") if reread else ""
        p.add_argument("--out", help=f"{what} directory{same}")
        again = p.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true",
                           help=f"continue the {what} in --out (after a kill, Ctrl-C or SIGTERM)")
        again.add_argument("--overwrite", action="store_true", help=f"replace the {what} in --out")

    p = sub.add_parser("train", help="train one configuration")
    p.add_argument("config", help="YAML experiment config, or the name of a shipped one")
    data_dir(p)
    download(p)
    overrides(p)
    threads(p)
    out_dir(p)
    p.set_defaults(func=cmd_train)

    # Defaults None: a flag given replaces the --config's value, a flag not given leaves it.  The
    # defaults shown are those without --config.
    d = COMPARE_DEFAULTS
    p = sub.add_parser("compare", help="train several rules on identical data and seeds")
    p.add_argument("--config", help="YAML experiment config (or shipped name) to use as the base; "
                   "its 'compare' list gives the rules, the flags below replace its values")
    p.add_argument("--dataset", metavar="NAME",
                   help=f"one of: {_names(available_datasets())} (default {d['dataset']}; not with --config)")
    p.add_argument("--model", metavar="NAME",
                   help=f"one of: {_names(available_models())} (default {d['model']}; not with --config)")
    p.add_argument("--rules", default=None, metavar="RULE,...",
                   help=f"comma-separated, each one of: {_names(rules())}, or a variant such as "
                   f"fa:dense (default {COMPARE_RULES}; with --config, the config's compare list)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help=f"default {d['epochs']}")
    p.add_argument("--seed", type=int, help=f"default {d['seed']}")
    p.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                   help="train every rule on each of these seeds (runs OUT/RULE/seedS) and report "
                   "mean ± std over them, with a figure with error bars (not with --seed)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help=f"default {d['batch_size']}")
    p.add_argument("--subset", type=positive_int, metavar="N", help="use only N examples per split")
    p.add_argument("--device", metavar="DEVICE",
                   help=f"one of: auto, cpu, cuda, cuda:N, mps (default {d['device']})")
    data_dir(p)
    download(p)
    overrides(p)
    threads(p)
    out_dir(p, "comparison")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="hyper-parameter search with Optuna")
    p.add_argument("config", help="YAML experiment config with a 'sweep' section")
    p.add_argument("--storage", help="Optuna storage URL (default: a file in --out)")
    p.add_argument("--worker", action="store_true",
                   help="join the shared study as one more worker (trials only; finish the sweep "
                   "with one run without --worker, e.g. --resume)")
    p.add_argument("--trials", type=positive_int, default=None,
                   help="a worker runs at most N trials (TPE: N new ones); else the TPE budget")
    p.add_argument("--heartbeat", type=positive_float, default=10.0, metavar="SECONDS",
                   help="a running trial beats every SECONDS; one silent for 6 beats is taken "
                   "for a dead worker's, failed and queued again (default %(default)g)")
    data_dir(p)
    overrides(p)
    threads(p)
    out_dir(p, "sweep", reread=False)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("evaluate", help="a checkpoint's accuracy, loss, confusion matrix and "
                       "per-class report on its run's data")
    p.add_argument("checkpoint", help="any falign checkpoint (best.pt, last.pt, epoch_NNN.pt), or a "
                   "run directory (its best.pt); the dataset is rebuilt from the config it holds")
    p.add_argument("--split", choices=["test", "val"], default="test", help="default %(default)s")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="one of: auto, cpu, cuda, cuda:N, mps (default %(default)s)")
    data_dir(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="HTML report + results table of runs, comparisons, sweeps "
                       "or reproductions")
    p.add_argument("runs", nargs="+", help="run, comparison, sweep or reproduction directories")
    p.add_argument("--out", default="report", help="output directory (default ./%(default)s)")
    p.add_argument("--title", help="page title (default: from the runs' dataset and model)")
    p.add_argument("--published", help="YAML: {test_acc: {method: percent}}")
    p.add_argument("--note", action="append", default=[], help="a note for the page (repeatable)")
    p.add_argument("--confusion", action="store_true",
                   help="confusion matrix and per-class report of each run's best model (test split)")
    p.add_argument("--cka", action="store_true",
                   help="CKA between the layers of each run's best model and the bp run's")
    p.add_argument("--gradcam", metavar="LAYER",
                   help="Grad-CAM: the most important channels of LAYER and their top test images")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="where the analyses run (default %(default)s)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="one published result end to end, ending with the report")
    p.add_argument("name", metavar="NAME", help=f"one of: {_names(TARGETS)}")
    p.add_argument("--scale", choices=["smoke", "full"], default="smoke", help="default %(default)s")
    p.add_argument("--part", action="append", default=None, metavar="PART",
                   help="run only this part of a target that has several (repeatable): "
                   + "; ".join(f"{t.name}: {', '.join(t.parts)}" for t in TARGETS.values() if t.parts)
                   + "; or one unit, PART/METHOD[/seedK] (python -m falign.reproduce.queue status "
                   "NAME lists them)")
    p.add_argument("--records", metavar="DIR", default=None,
                   help="committed run records of this target (results/runs/NAME): units they hold "
                   "finished are read, not trained again")
    threads(p)
    data_dir(p, config=False)
    download(p)
    out_dir(p, "reproduction")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("rules", help="list the learning rules")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("download", help="download datasets (checksums verified)")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="one of: mnist, fashion-mnist, cifar10, cifar10-jpeg (a mirror only)")
    data_dir(p, config=False)
    p.add_argument("--mirror", help="base URL of a mirror")
    p.set_defaults(func=cmd_download)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with _settings(args):
            return args.func(args)
    except FalignError as err:
        print(f"falign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM while training (training.loop.Interrupted)
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"falign: interrupted by {signal.Signals(signum).name} (the runs say so; continue "
              "with --resume)", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
