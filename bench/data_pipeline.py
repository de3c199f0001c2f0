"""What ``falign.training.train`` costs over a bare PyTorch loop doing the same computation.

    python -m bench.data_pipeline [--quick] [--subset 10000] [--epochs 2] [--rounds 5]

Both train the same model (falign's builders, same seed) with the same optimiser on the same
batches: the bare loop draws the permutation and augments each batch with the dataset's own
transform from a generator seeded as ``train`` seeds its own, over the tensors
``falign.data.load_dataset`` returns, and evaluates on the validation split after every epoch
as ``train`` does.  The final weights are compared to prove the two did the same thing.

Two ratios: the training loop alone (``train``'s per-epoch ``seconds`` against the bare loop's;
target within 5%) and the whole call per epoch (dataset load, model build, validation,
checkpoints and tracking files included), for information.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._common import Row, data_dir, format_rows, median_ratio

TARGET = 1.05


def config(subset: int, epochs: int) -> dict[str, Any]:
    return {
        "name": "bench-data-pipeline", "seed": 0, "device": "cpu",
        "data": {"name": "mnist", "subset": subset, "val_size": 1000},
        "model": {"name": "mlp", "options": {"sizes": [784, 1000, 10]}},
        "rule": {"name": "fa"},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"epochs": epochs, "batch_size": 128},
    }


def falign_run(cfg, out: Path) -> tuple[list[float], float, dict[str, torch.Tensor]]:
    """(training-loop seconds per epoch, whole-call seconds, final state_dict)."""
    from falign.training import load_checkpoint, train

    t0 = time.perf_counter()
    tracking = train(cfg, out, log=None, progress=False)
    total = time.perf_counter() - t0
    return [e["seconds"] for e in tracking["epochs"]], total, load_checkpoint(out / "last.pt")["model"]


def bare_run(cfg) -> tuple[list[float], float, dict[str, torch.Tensor]]:
    """The same training as ``train(cfg)`` written as a plain PyTorch loop."""
    from falign.data import load_dataset
    from falign.training.loop import build_model, build_optimizer

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    d = cfg.data
    data = load_dataset(d.name, d.root, val_size=d.val_size, split_seed=d.split_seed, subset=d.subset)
    model = build_model(cfg, data)
    opt = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all, n, bs = data.train.x, data.train.y, len(data.train), cfg.train.batch_size
    seconds = []
    for _ in range(cfg.train.epochs):
        model.train()
        t_epoch = time.perf_counter()
        loss_sum, correct = 0.0, 0
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            x, y = data.train_transform(x_all[idx], gen), y_all[idx]  # (B, 1, 28, 28) float
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * y.shape[0]
            correct += int((out.argmax(1) == y).sum())
        seconds.append(time.perf_counter() - t_epoch)
        _evaluate(model, data.val, data.eval_transform, cfg.train.eval_batch_size)
    _evaluate(model, data.test, data.eval_transform, cfg.train.eval_batch_size)
    return seconds, time.perf_counter() - t0, model.state_dict()


@torch.no_grad()
def _evaluate(model, split, transform, batch: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(split), batch):
        out = model(transform(split.x[start:start + batch]))
        correct += int((out.argmax(1) == split.y[start:start + batch]).sum())
    return correct / len(split)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(quick: bool, *, subset: int | None = None, epochs: int = 2, rounds: int | None = None,
        log=print) -> list[Row]:
    from falign.data import load_dataset
    from falign.training import parse_config

    data_dir()
    subset = subset or (4000 if quick else 10000)
    rounds = rounds or (2 if quick else 5)
    cfg = parse_config(config(subset, epochs))
    load_dataset("mnist", subset=subset, val_size=1000)  # decode / cache before timing
    bare_run(parse_config(config(256, 1)))  # first use in this process away from the timed runs
    loop_plain, loop_falign, call_plain, call_falign = [], [], [], []
    same = True
    with tempfile.TemporaryDirectory(prefix="falign-bench-") as tmp:
        for r in range(rounds):
            log(f"data pipeline: round {r + 1}/{rounds}")
            # alternate who goes first, so a machine that speeds up or slows down favours neither
            for which in (("bare", "falign") if r % 2 == 0 else ("falign", "bare")):
                if which == "bare":
                    secs, total, bare_state = bare_run(cfg)
                    loop_plain.append(sum(secs) / epochs)
                    call_plain.append(total / epochs)
                else:
                    secs, total, falign_state = falign_run(cfg, Path(tmp) / f"run{r}")
                    loop_falign.append(sum(secs) / epochs)
                    call_falign.append(total / epochs)
            same = same and _same_weights(bare_state, falign_state)
    desc = f"MLP 784-1000-10 fa, MNIST {subset // 1000}k subset, b128, {epochs} epochs, {rounds} rounds"
    if not same:
        log("data pipeline: WARNING the bare loop and train() ended with different weights")
    loop_ratio = median_ratio(loop_falign, loop_plain)
    med = statistics.median
    return [
        Row("data pipeline", f"{desc}: training loop s/epoch (same weights: {'yes' if same else 'NO'})",
            med(loop_plain), med(loop_falign), "s", loop_ratio, f"<= {TARGET:.2f}", loop_ratio <= TARGET),
        Row("data pipeline", f"{desc}: whole train() call per epoch (load, eval, checkpoints)",
            med(call_plain), med(call_falign), "s", median_ratio(call_falign, call_plain)),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    rows = run(args.quick, subset=args.subset, epochs=args.epochs, rounds=args.rounds)
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
