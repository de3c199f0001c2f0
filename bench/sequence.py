"""Step time of converted attention and recurrent layers against the same modules under BP.

    python -m bench.sequence [--quick] [--rules fa,usf,brsf,kp,dfa] [--repeats 7] [--steps 5]

* attention block -- an ``nn.TransformerEncoderLayer`` (pre-norm, d 128, 4 heads, batch 32 x
  64 tokens): each rule against the plain module under torch's backprop.  falign's attention
  runs its own forward (projections as slots, ``F.scaled_dot_product_attention``), so the
  ``bp`` row is the price of that forward alone.
* LSTM -- an ``nn.LSTM`` (d 128, batch 32 x 64 steps).  torch's LSTM is one fused oneDNN /
  cuDNN kernel, which no rule can use: falign unrolls the recurrence.  The honest comparison
  is therefore twofold: each rule against BP through the same unrolled loop (falign with rule
  ``bp``) -- the cost of the rule --, and that unrolled BP against the fused kernel -- the cost of
  unrolling, paid by every rule.

Ratios are medians over interleaved rounds (plain, rule, plain, rule, ...); nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import falign

from ._common import Row, format_rows

RULES = ["bp", "fa", "usf", "brsf", "kp", "dfa"]


def attention_block() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True, norm_first=True)
    return nn.Sequential(layer, nn.Linear(128, 10)), torch.randn(32, 64, 128)


class _LSTMHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


def lstm() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _LSTMHead(), torch.randn(32, 64, 128)


def _step(model: nn.Module, x: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    y = torch.randint(0, 10, x.shape[:2])

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).reshape(-1, 10), y.reshape(-1)).backward()
        opt.step()

    return step


def _time(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def _ratio(a, b, repeats: int, steps: int) -> tuple[float, float, float]:
    for s in (a, b):
        s()
    ta, tb, r = [], [], []
    for _ in range(repeats):
        x, y = _time(a, steps), _time(b, steps)
        ta.append(x)
        tb.append(y)
        r.append(y / x)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb), statistics.median(r)


def collect(quick: bool, rules: list[str] | None = None, repeats: int | None = None,
            steps: int | None = None, log=print) -> list[Row]:
    rules = rules or (["bp", "fa", "dfa"] if quick else RULES)
    repeats = repeats or (2 if quick else 7)
    steps = steps or (1 if quick else 3)
    rows = []
    for name, make in (("attention block", attention_block), ("LSTM", lstm)):
        base, x = make()
        plain = _step(base, x)
        unrolled = _step(falign.convert(base, "bp", warn=False), x) if name == "LSTM" else None
        if unrolled is not None:
            log("sequence: LSTM, fused kernel vs falign's unrolled loop (BP)")
            p, r, ratio = _ratio(plain, unrolled, repeats, steps)
            rows.append(Row("sequence", "LSTM d128, b32 x 64 steps: unrolled BP vs torch's fused kernel",
                            p, r, "ms", ratio))
        for rule in rules:
            if name == "LSTM" and rule == "bp":
                continue
            log(f"sequence: {name}, {rule}")
            model = falign.convert(base, rule, warn=False, example_input=x)
            ref = unrolled if unrolled is not None else plain
            if unrolled is not None:
                what = "d128, b32 x 64 steps, vs BP through the same unrolled loop"
            else:
                what = "d128, 4 heads, b32 x 64 tokens, vs the plain module (BP)"
            p, r, ratio = _ratio(ref, _step(model, x), repeats, steps)
            rows.append(Row("sequence", f"{name}, {rule} ({what})", p, r, "ms", ratio))
    return rows


def run(quick: bool, log=print) -> list[Row]:
    """The rows for ``python -m bench``."""
    return collect(quick, log=log)


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rules", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = collect(args.quick, args.rules.split(",") if args.rules else None, args.repeats, args.steps)
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
