"""The ``falign`` command: parse, build a config, call the library.  Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

COMPARE_RULES = "bp,fa,dfa,usf,frsf"

# Defaults of `falign compare` per dataset: a quick, fair comparison (< 5 min on 2 CPU cores
# for MNIST).  Every rule gets the same optimiser, data order and seed.
COMPARE_DEFAULTS = {
    "optim": {"name": "adam", "lr": 1e-3},
    "epochs": 5,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data import DatasetError
    from ..models import ModelError
    from ..report import ReportError
    from ..reproduce import ReproduceError
    from ..rules import RuleError
    from ..training.checkpoint import CheckpointError
    from ..training.config import ConfigError
    from ..training.loop import RunDirError

    errors: list[type[BaseException]] = [DatasetError, ModelError, RuleError, CheckpointError,
                                         ConfigError, RunDirError, ReportError, ReproduceError]
    try:
        from ..training.sweep import SweepError

        errors.append(SweepError)
    except ImportError:  # optuna not installed
        pass
    return tuple(errors)


def _data_dir(args) -> None:
    if getattr(args, "data_dir", None):
        os.environ["FALIGN_DATA"] = str(Path(args.data_dir).resolve())


def cmd_train(args) -> int:
    from ..training.config import load_config
    from ..training.loop import train

    _data_dir(args)
    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    tracking = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"run written to {out}")
    return 0 if tracking["status"] == "completed" else 1


def compare_base(args):
    from ..training.config import apply_overrides, parse_config

    data = {
        "name": f"compare-{args.dataset}-{args.model}",
        "seed": args.seed,
        "device": args.device,
        "data": {"name": args.dataset, "subset": args.subset},
        "model": {"name": args.model, "options": {}},
        "optim": dict(COMPARE_DEFAULTS["optim"]),
        "train": {"epochs": args.epochs if args.epochs is not None else COMPARE_DEFAULTS["epochs"],
                  "batch_size": args.batch_size},
    }
    if args.model == "mlp":
        data["model"]["options"] = {"activation": "tanh"}
        if args.dataset in ("mnist", "fashion-mnist"):
            data["model"]["options"]["sizes"] = [784, 256, 256, 10]
    return parse_config(apply_overrides(data, args.set), where="falign compare")


def _rule_list(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def cmd_compare(args) -> int:
    from ..training.compare import run_compare
    from ..training.config import load_config

    _data_dir(args)
    if args.config:
        base = load_config(args.config, args.set)
        if args.epochs is not None:
            base.train.epochs = args.epochs
        rules = _rule_list(args.rules) if args.rules else (base.compare or _rule_list(COMPARE_RULES))
    else:
        base = compare_base(args)
        rules = _rule_list(args.rules or COMPARE_RULES)
    out = Path(args.out) if args.out else Path("runs") / base.name
    from ..rules import get_rule
    from ..training.compare import method

    for r in rules:
        _, name, opts = method(r)
        get_rule(name, **opts)  # fail fast on an unknown rule or option, before any training
    rows = run_compare(base, rules, out, resume=args.resume, overwrite=args.overwrite)
    print(f"summary: {out / 'summary.md'}; figure: {out / 'val_acc.png'}")
    return 0 if all(r["status"] == "completed" for r in rows) else 1


def cmd_sweep(args) -> int:
    from ..training.config import load_config
    from ..training.sweep import SweepError, run_sweep

    _data_dir(args)
    cfg = load_config(args.config, args.set)
    spec = cfg.sweep
    if spec is None:
        raise SweepError(f"{args.config}: no 'sweep' section (see configs/*sweep*.yaml)")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{cfg.name}"
    run_sweep(cfg, spec, out, storage=args.storage, worker=args.worker, resume=args.resume,
              overwrite=args.overwrite, n_trials=args.trials, heartbeat=args.heartbeat)
    return 0


def cmd_report(args) -> int:
    import yaml

    from ..report import write_report

    published = None
    if args.published:
        published = yaml.safe_load(Path(args.published).read_text())
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="falign", description="Learning rules without weight "
                                 "transport: train, compare, sweep, analyse.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, out=True):
        p.add_argument("--data-dir", help="dataset root (else $FALIGN_DATA, else ./data)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
        if out:
            p.add_argument("--out", help="run directory")
            p.add_argument("--resume", action="store_true", help="continue the run in --out")
            p.add_argument("--overwrite", action="store_true", help="replace the run in --out")

    p = sub.add_parser("train", help="train one configuration")
    p.add_argument("config", help="YAML experiment config")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules on identical data and seeds")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--config", help="YAML experiment config to use as the base (its 'compare' "
                   "list gives the rules); --dataset/--model are then ignored")
    p.add_argument("--rules", default=None, help=f"comma-separated (default {COMPARE_RULES})")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=int, default=None, help="use only N examples per split")
    p.add_argument("--device", default="auto")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="hyper-parameter search with Optuna")
    p.add_argument("config", help="YAML experiment config with a 'sweep' section")
    p.add_argument("--storage", help="Optuna storage URL (default: a file in --out)")
    p.add_argument("--worker", action="store_true",
                   help="join the shared study as one more worker (trials only; finish the sweep "
                   "with one run without --worker, e.g. --resume)")
    p.add_argument("--trials", type=int, default=None,
                   help="a worker runs at most N trials (TPE: N new ones); else the TPE budget")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                   help="a running trial beats every SECONDS; one silent for 6 beats is taken "
                   "for a dead worker's, failed and queued again (default 10)")
    common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="HTML report + results table of runs or comparisons")
    p.add_argument("runs", nargs="+", help="run directories or comparison directories")
    p.add_argument("--out", default="report", help="output directory (default: ./report)")
    p.add_argument("--title")
    p.add_argument("--published", help="YAML: {test_acc: {method: percent}}")
    p.add_argument("--note", action="append", default=[], help="a note for the page (repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="one published result end to end, ending with the report")
    p.add_argument("name", help="lance-kieu-2026, biotorch-lenet, dfa-mnist, lillicrap-2016, "
                   "sign-tracking")
    p.add_argument("--scale", choices=["smoke", "full"], default="smoke")
    p.add_argument("--out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("rules", help="list the learning rules")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("download", help="download datasets (checksums verified)")
    p.add_argument("names", nargs="+")
    p.add_argument("--data-dir")
    p.add_argument("--mirror", help="base URL of a mirror")
    p.set_defaults(func=cmd_download)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"falign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("falign: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
