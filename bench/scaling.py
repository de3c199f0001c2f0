"""Data-parallel scaling on CPU: ``torchrun --nproc_per_node 2 -m falign train`` against 1 process.

    python -m bench.scaling [--quick] [--subset N] [--epochs E] [--rounds R]

The same config (the workload of bench.alignment_overhead: Arch 1 + FA on CIFAR-10 JPEG, or
the MLP on MNIST) is trained as whole ``falign train`` commands, interleaved in rounds:

* 1 process, OMP_NUM_THREADS=1 -- the baseline of the scaling efficiency,
* 2 processes (torchrun --standalone, gloo), OMP_NUM_THREADS=1 each,
* 1 process, one thread per core -- what the same cores give without DDP.

Time per epoch is the last epoch's training-loop ``seconds`` in tracking.json (rank 0; start-up,
data loading and evaluation excluded).  Efficiency = throughput(2 processes) /
(2 x throughput(1 process, 1 thread)).  On a 2-core machine shared with other jobs this is
indicative only: the two ranks compete with everything else for the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import Row, data_dir, format_rows, write_config
from .alignment_overhead import workload

CORES = os.cpu_count() or 1


def _launch(kind: str, cfg: Path, out: Path) -> tuple[float, float]:
    """(seconds of the last epoch's training loop, wall seconds of the whole command)."""
    threads = CORES if kind == "1x_all" else 1
    env = {**os.environ, "FALIGN_DATA": str(data_dir()), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "falign", "train", str(cfg), "--out", str(out)]
    if kind == "2x1":
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    tracking = json.loads((out / "tracking.json").read_text())
    return tracking["epochs"][-1]["seconds"], wall


def run(quick: bool, *, subset: int | None = None, epochs: int | None = None,
        rounds: int | None = None, log=print) -> list[Row]:
    subset = subset or (1280 if quick else 5120)
    epochs = epochs or (1 if quick else 2)
    rounds = rounds or (1 if quick else 2)
    base, desc = workload(quick, subset)
    base["train"] = {**base["train"], "epochs": epochs}
    kinds = ("1x1", "2x1", "1x_all")
    epoch_s: dict[str, list[float]] = {k: [] for k in kinds}
    wall_s: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="falign-bench-") as tmp:
        cfg = write_config(Path(tmp) / "scaling.yaml", base)
        for r in range(rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                log(f"scaling: round {r + 1}/{rounds}, {kind}")
                e, w = _launch(kind, cfg, Path(tmp) / f"{kind}-{r}")
                epoch_s[kind].append(e)
                wall_s[kind].append(w)
    # per round: throughput ratio / 2 = T(1 proc) / (2 T(2 procs))
    eff = statistics.median(a / (2 * b) for a, b in zip(epoch_s["1x1"], epoch_s["2x1"], strict=True))
    vs_threads = statistics.median(a / b for a, b in zip(epoch_s["1x_all"], epoch_s["2x1"], strict=True))
    wall_eff = statistics.median(a / (2 * b) for a, b in zip(wall_s["1x1"], wall_s["2x1"], strict=True))
    med = {k: statistics.median(v) for k, v in epoch_s.items()}
    wmed = {k: statistics.median(v) for k, v in wall_s.items()}
    where = f"{desc}, global b128, {epochs} epoch(s), {rounds} round(s), gloo"
    note = f"indicative only ({CORES} shared cores)"
    return [
        Row("DDP scaling", f"{where}: efficiency = T(1 proc x 1 thread) / (2 T(2 procs x 1 thread)), "
            "s/epoch", med["1x1"], med["2x1"], "s", eff, note),
        Row("DDP scaling", f"{where}: speed-up of 2 procs x 1 thread over 1 proc x {CORES} threads = "
            "T(1 proc) / T(2 procs), s/epoch", med["1x_all"], med["2x1"], "s", vs_threads, note),
        Row("DDP scaling", f"{where}: efficiency of the whole command (start-up, data, eval included), "
            "wall s", wmed["1x1"], wmed["2x1"], "s", wall_eff, note),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    rows = run(args.quick, subset=args.subset, epochs=args.epochs, rounds=args.rounds)
    print(format_rows(rows))
    print(f"\nNote: {CORES} CPU cores shared with other jobs; DDP scaling here is indicative only.")
    return rows


if __name__ == "__main__":
    main()
