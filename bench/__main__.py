"""Every benchmark, one table of ratios against plain PyTorch measured in the same run.

    python -m bench [--quick] [--only step_time,data_pipeline,streaming,alignment,scaling] [--threads N]

* step_time      -- forward + backward + SGD step of every rule against plain backprop
                    (MLP 784-1000-10, Arch 1, ResNet-20; batch 128),
* data_pipeline  -- ``falign.training.train`` against a bare PyTorch loop doing the same
                    training (target: within 5%),
* streaming      -- a streamed image folder (``imagefolder`` with ``stream: true``): images/s
                    of falign's ``batches`` against a plain DataLoader over the same files with
                    the same decode and workers (target >= 0.95), and the data-wait share of a
                    small model's training step,
* alignment      -- ``train.alignment_every: 20`` against 0 (target <= 1.10),
* scaling        -- ``torchrun --nproc_per_node 2 -m falign train`` against 1 process
                    (indicative only on a small shared machine),
* sequence       -- a converted transformer block and LSTM against the same modules under BP
                    (the LSTM also against BP through falign's unrolled loop).

Each is also a module of its own: ``python -m bench.step_time`` etc.  ``--quick`` is a CI-size
run (measured on 2 busy cores: about 1 minute with ``--threads 1``, 4 minutes without); a full
run has more rules, rounds and steps and takes several times as long.
Timings are never asserted: the table prints each ratio beside its target.

On a machine shared with other jobs pass ``--threads 1``: with more intra-op threads than free
cores, every op waits for its slowest thread (on a busy 2-core machine one process with 2 threads ran an
epoch 9x slower than with 1), and the ratios drown in that noise.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
import traceback

import torch

from . import alignment_overhead, data_pipeline, scaling, sequence, step_time, streaming
from ._common import Row, data_dir, format_rows

BENCHMARKS = {
    "step_time": step_time.run,
    "data_pipeline": data_pipeline.run,
    "streaming": streaming.run,
    "alignment": alignment_overhead.run,
    "scaling": scaling.run,
    "sequence": sequence.run,
}
ALIASES = {"alignment_overhead": "alignment", "step": "step_time", "data": "data_pipeline",
           "ddp": "scaling", "stream": "streaming"}


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = []
    for raw in only.split(","):
        key = raw.strip().replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in BENCHMARKS:
            near = difflib.get_close_matches(key, list(BENCHMARKS), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise SystemExit(f"bench: unknown benchmark '{raw}'{hint} (known: {', '.join(BENCHMARKS)})")
        names.append(key)
    return names


def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "load average n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-size run: fewer rules, rounds, steps")
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads for the in-process benchmarks (0: torch's default)")
    args = ap.parse_args(argv)
    names = _selected(args.only)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_dir()
    header = (f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} "
              f"threads in-process, data {root}, {'quick' if args.quick else 'full'} run")
    print(f"{header}; {_load()} at start", flush=True)

    rows: list[Row] = []
    failed: list[str] = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            rows += BENCHMARKS[name](args.quick, log=lambda s: print(s, flush=True))
        except Exception:  # one broken benchmark must not hide the others' numbers
            failed.append(name)
            traceback.print_exc()
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)

    print()
    print(f"{header}; {_load()} at the end; {time.perf_counter() - t_all:.0f} s in all")
    print("ratio = falign / plain, median over interleaved rounds (DDP rows: as their configuration "
          "says); no timing is asserted")
    print()
    print(format_rows(rows))
    missed = [f"{r.benchmark}: {r.config}" for r in rows if r.met is False]
    if missed:
        print("\ntargets missed (on a shared machine, rerun before concluding):")
        print("\n".join(f"  - {m}" for m in missed))
    if any(r.benchmark == "DDP scaling" for r in rows):
        print(f"\nDDP scaling on {os.cpu_count()} cores shared with other jobs is indicative only.")
    if failed:
        print(f"\nfailed: {', '.join(failed)} (traceback above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
