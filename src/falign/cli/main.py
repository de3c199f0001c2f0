"""The ``falign`` command: parse, build a config, call the library.  Nothing else lives here.

Every flag a command takes is honoured or refused with one line ``falign: error: ...`` (exit 2);
none is accepted and then ignored.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

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


class UsageError(Exception):
    """A command line that cannot be carried out as written; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``falign: error:`` line, like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data import DatasetError
    from ..models import ModelError
    from ..report import ReportError
    from ..reproduce import ReproduceError
    from ..rules import RuleError
    from ..training.checkpoint import CheckpointError
    from ..training.config import ConfigError
    from ..training.loop import RunDirError
    from ..training.record import RecordError

    errors: list[type[BaseException]] = [UsageError, DatasetError, ModelError, RuleError,
                                         CheckpointError, ConfigError, RunDirError, RecordError,
                                         ReportError, ReproduceError]
    try:
        from ..training.sweep import SweepError

        errors.append(SweepError)
    except ImportError:  # optuna not installed
        pass
    return tuple(errors)


def _data_dir(args, cfg=None):
    """``--data-dir``: the dataset root of this command, also over a config's own ``data.root``."""
    if getattr(args, "data_dir", None):
        root = str(Path(args.data_dir).resolve())
        os.environ["FALIGN_DATA"] = root
        if cfg is not None and cfg.data.root is not None:
            cfg.data.root = root
    return cfg


def cmd_train(args) -> int:
    from ..training.config import load_config
    from ..training.loop import train

    cfg = _data_dir(args, load_config(args.config, args.set))
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    record = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"run written to {out}")
    return 0 if record.status == "completed" else 1


def compare_flags(args) -> dict:
    """The config keys that `falign compare`'s flags set, for the flags given."""
    given = {"seed": args.seed, "device": args.device, "data.subset": args.subset,
             "train.batch_size": args.batch_size, "train.epochs": args.epochs}
    return {key: value for key, value in given.items() if value is not None}


def compare_base(args):
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
    if model == "mlp":
        data["model"]["options"] = {"activation": "tanh"}
        if dataset in ("mnist", "fashion-mnist"):
            data["model"]["options"]["sizes"] = [784, 256, 256, 10]
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
    from ..plots import NothingToPlot, plot_val_curves
    from ..training.compare import run_compare
    from ..training.config import load_config

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
    base = _data_dir(args, base)
    out = Path(args.out) if args.out else Path("runs") / base.name
    _check_names(base, rules)
    rows = run_compare(base, rules, out, resume=args.resume, overwrite=args.overwrite)
    try:
        figure = plot_val_curves(rows, out / "val_acc", title=f"{base.data.name} / {base.model.name}: "
                                 "validation accuracy")[0]
    except NothingToPlot:
        print(f"summary: {out / 'summary.md'}; no figure (no run recorded a validation accuracy)")
    else:
        print(f"summary: {out / 'summary.md'}; figure: {figure}")
    return 0 if all(r.status == "completed" for r in rows) else 1


def cmd_sweep(args) -> int:
    from ..training.config import load_config
    from ..training.sweep import SweepError, run_sweep

    cfg = _data_dir(args, load_config(args.config, args.set))
    spec = cfg.sweep
    if spec is None:
        raise SweepError(f"{args.config}: no 'sweep' section (see configs/*sweep*.yaml)")
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


def cmd_report(args) -> int:
    from ..report import write_report

    published = _published(args.published, args.runs) if args.published else None
    path = write_report(args.runs, Path(args.out), title=args.title, published=published,
                        notes=args.note)
    print(f"report: {path}")
    return 0


def cmd_reproduce(args) -> int:
    from ..reproduce import reproduce

    _data_dir(args)
    reproduce(args.name, scale=args.scale, out=args.out, resume=args.resume,
              overwrite=args.overwrite)
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
count = _number(int, 0, strict=False)
positive_float = _number(float, 0, strict=True)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="falign", description="Learning rules without weight transport: train, "
                 "compare, sweep, analyse.")
    sub = ap.add_subparsers(dest="command", required=True)

    def data_dir(p, config=True):
        also = "; replaces the config's own data.root" if config else ""
        p.add_argument("--data-dir", help=f"dataset root (else $FALIGN_DATA, else ./data){also}")

    def overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")

    def out_dir(p, what="run"):
        p.add_argument("--out", help=f"{what} directory")
        again = p.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true", help=f"continue the {what} in --out")
        again.add_argument("--overwrite", action="store_true", help=f"replace the {what} in --out")

    p = sub.add_parser("train", help="train one configuration")
    p.add_argument("config", help="YAML experiment config, or the name of a shipped one")
    data_dir(p)
    overrides(p)
    out_dir(p)
    p.set_defaults(func=cmd_train)

    # Defaults None: a flag given replaces the --config's value, a flag not given leaves it.
    p = sub.add_parser("compare", help="train several rules on identical data and seeds")
    p.add_argument("--config", help="YAML experiment config (or shipped name) to use as the base; "
                   "its 'compare' list gives the rules, the flags below replace its values")
    p.add_argument("--dataset", help=f"without --config (default {COMPARE_DEFAULTS['dataset']})")
    p.add_argument("--model", help=f"without --config (default {COMPARE_DEFAULTS['model']})")
    p.add_argument("--rules", default=None, help=f"comma-separated (default {COMPARE_RULES})")
    p.add_argument("--epochs", type=count, help=f"default {COMPARE_DEFAULTS['epochs']}")
    p.add_argument("--seed", type=int, help=f"default {COMPARE_DEFAULTS['seed']}")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"default {COMPARE_DEFAULTS['batch_size']}")
    p.add_argument("--subset", type=positive_int, help="use only N examples per split")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N, mps (default {COMPARE_DEFAULTS['device']})")
    data_dir(p)
    overrides(p)
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
                   "for a dead worker's, failed and queued again (default 10)")
    data_dir(p)
    overrides(p)
    out_dir(p, "sweep")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="HTML report + results table of runs or comparisons")
    p.add_argument("runs", nargs="+", help="run directories or comparison directories")
    p.add_argument("--out", default="report", help="output directory (default: ./report)")
    p.add_argument("--title", help="page title (default: from the runs' dataset and model)")
    p.add_argument("--published", help="YAML: {test_acc: {method: percent}}")
    p.add_argument("--note", action="append", default=[], help="a note for the page (repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="one published result end to end, ending with the report")
    p.add_argument("name", help="lance-kieu-2026, biotorch-lenet, dfa-mnist, lillicrap-2016, "
                   "sign-tracking")
    p.add_argument("--scale", choices=["smoke", "full"], default="smoke")
    data_dir(p, config=False)
    out_dir(p, "reproduction")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("rules", help="list the learning rules")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("download", help="download datasets (checksums verified)")
    p.add_argument("names", nargs="+")
    data_dir(p, config=False)
    p.add_argument("--mirror", help="base URL of a mirror")
    p.set_defaults(func=cmd_download)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except _user_errors() as err:
        print(f"falign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("falign: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
