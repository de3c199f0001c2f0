"""Does a finished run still belong to today's code?  Retrain its first epoch and compare.

    python -m falign.reproduce.recheck RUN_DIR... [--out FILE.json]

A summary belongs to the code that made it.  When later commits touch what a run computes,
either rerun it or show that the new code reproduces its start exactly: for each run
directory this retrains the run's own config (its ``config.yaml``) for one epoch with the
thread count the run recorded, then compares the first epoch's record (losses, accuracies,
error counts, learning rate) and, where the run kept ``epoch_001.pt``, every weight and
feedback tensor it holds, bit for bit (tensors only today's code keeps, such as bookkeeping
buffers added later, are listed under ``keys_only_today``).  Prints one line per run and exits
non-zero if any differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from ..records import RecheckRecord, RunCheck

FIELDS = ("train_loss", "train_acc", "train_errors", "lr", "val_loss", "val_acc")


def recheck(run_dir: str | Path) -> RunCheck:
    from ..training.config import load_config
    from ..training.loop import train
    from ..training.record import RunRecord

    run_dir = Path(run_dir)
    old = RunRecord.read(run_dir / "tracking.json")
    cfg = load_config(str(run_dir / "config.yaml"))
    threads = int(old.environment.get("threads") or 1)
    with tempfile.TemporaryDirectory() as tmp:
        new = train(cfg, Path(tmp) / "run", log=None, stop_after=1, threads=threads, progress=False)
        a, b = old.epochs[0], new.epochs[0]
        fields = {f: (getattr(a, f), getattr(b, f)) for f in FIELDS}
        same_record = all(x == y for x, y in fields.values())
        weights, added = None, []
        ckpt = run_dir / "epoch_001.pt"
        if ckpt.is_file():
            mine = Path(tmp) / "run" / "epoch_001.pt"
            if not mine.is_file():  # the config keeps no per-epoch checkpoints: the last one
                mine = Path(tmp) / "run" / "last.pt"
            wa = torch.load(ckpt, weights_only=True)["model"]
            wb = torch.load(mine, weights_only=True)["model"]
            # every tensor the old checkpoint holds, bit for bit; tensors only today's code
            # keeps (e.g. a feedback layer's step counter, added later) are listed, not compared
            weights = set(wa) <= set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
            added = sorted(set(wb) - set(wa))
    return RunCheck(run=str(run_dir), threads=threads, same_first_epoch_record=same_record,
                    same_epoch_1_weights=weights, keys_only_today=tuple(added),
                    first_epoch={f: v[0] for f, v in fields.items()},
                    differences={f: v for f, v in fields.items() if v[0] != v[1]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falign.reproduce.recheck",
                                description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each with tracking.json and config.yaml)")
    p.add_argument("--out", help="write the checks as JSON to this file")
    args = p.parse_args(argv)
    results = []
    for run in args.runs:
        r = recheck(run)
        results.append(r)
        ok = r.passed
        print(f"{'same' if ok else 'DIFFERENT'}  {run}"
              + ("" if r.same_epoch_1_weights is None else
                 f"  (epoch-1 weights {'identical' if r.same_epoch_1_weights else 'differ'})")
              + ("" if ok else f"  {r.differences}"), flush=True)
    if args.out:
        from .. import __version__
        from ..provenance import git_commit

        RecheckRecord(checks=tuple(results), falign=__version__, git=git_commit(),
                      torch=torch.__version__).save(args.out)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
