"""What recording alignment during training costs: ``train.alignment_every: 20`` against 0.

    python -m bench.alignment_overhead [--quick] [--subset N] [--rounds R]

Arch 1 with FA on a subset of the CIFAR-10 JPEG copy when ``cifar10-jpeg.tar.gz`` is in the
data folder, else the MLP 784-1000-10 on MNIST.  Same config, seed and batches; the ratio is
the median over interleaved rounds of the training-loop seconds per epoch (``train``'s own
``seconds``, where the probe runs) with alignment on / off.  Each probe costs one extra exact
forward + backward on the step's batch, so every 20 steps should cost about 1/20 more.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from ._common import Row, format_rows, has_cifar_jpeg, median_ratio

TARGET = 1.10
EVERY = 20


def workload(quick: bool, subset: int | None = None) -> tuple[dict[str, Any], str]:
    """(config without ``alignment_every``, description).  Shared with bench.scaling."""
    if has_cifar_jpeg():
        n = subset or (2560 if quick else 10240)
        cfg = {"data": {"name": "cifar10-jpeg", "subset": n, "val_size": 1000},
               "model": {"name": "arch1"}, "rule": {"name": "fa"},
               "optim": {"name": "adam", "lr": 0.001}}
        desc = f"Arch 1 fa, CIFAR-10 (JPEG copy) {n} subset"
    else:
        n = subset or (5120 if quick else 20480)
        cfg = {"data": {"name": "mnist", "subset": n, "val_size": 1000},
               "model": {"name": "mlp", "options": {"sizes": [784, 1000, 10]}}, "rule": {"name": "fa"},
               "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9}}
        desc = f"MLP 784-1000-10 fa, MNIST {n} subset (no CIFAR-10 JPEG copy found)"
    return {"name": "bench", "seed": 0, "device": "cpu", **cfg,
            "train": {"epochs": 1, "batch_size": 128}}, desc


def run(quick: bool, *, subset: int | None = None, rounds: int | None = None, log=print) -> list[Row]:
    from falign.training import parse_config, train

    rounds = rounds or (2 if quick else 3)
    base, desc = workload(quick, subset)
    off = parse_config(base)
    on = parse_config({**base, "train": {**base["train"], "alignment_every": EVERY}})
    plain, probed = [], []
    with tempfile.TemporaryDirectory(prefix="falign-bench-") as tmp:
        # first use in this process (allocator, kernels' first calls) away from the timed runs
        warm = {**base, "data": {**base["data"], "subset": 256},
                "train": {**base["train"], "alignment_every": 1}}
        train(parse_config(warm), Path(tmp) / "warmup", log=None, progress=False)
        for r in range(rounds):
            log(f"alignment overhead: round {r + 1}/{rounds}")
            for cfg in ((off, on) if r % 2 == 0 else (on, off)):
                tracking = train(cfg, Path(tmp) / f"r{r}-{cfg.train.alignment_every}", log=None,
                                 progress=False)
                secs = statistics.fmean(e["seconds"] for e in tracking["epochs"])
                (probed if cfg.train.alignment_every else plain).append(secs)
                if cfg.train.alignment_every and not tracking["alignment"]:
                    raise RuntimeError("alignment_every is set but nothing was recorded")
    ratio = median_ratio(probed, plain)
    return [Row("alignment tracking", f"{desc}, b128, 1 epoch, {rounds} rounds: training loop s/epoch, "
                f"alignment_every {EVERY} vs 0", statistics.median(plain), statistics.median(probed),
                "s", ratio, f"<= {TARGET:.2f}", ratio <= TARGET)]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    rows = run(args.quick, subset=args.subset, rounds=args.rounds)
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
