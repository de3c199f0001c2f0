"""Training-step time of each rule relative to plain PyTorch backprop, measured in the same run.

    python -m bench.step_time [--quick] [--models mlp,arch1,resnet20] [--rules ...]
                              [--repeats 7] [--steps 10] [--device cpu]

A step is forward + backward + SGD step on a fixed batch.  Every configuration is timed in
interleaved rounds (plain, rule, plain, rule, ...) and the ratio is the median over rounds of
rule-time / plain-time, so slow drifts of a shared machine cancel.  Each model has its own plan
(rules, rounds, steps a round); ``--repeats`` / ``--steps`` / ``--rules`` override it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

import falign

from ._common import Row, format_rows

RULES = ["bp", "fa", "fa:dense", "usf", "frsf", "brsf", "usf_norm", "sign_tracking", "kp", "dfa"]
#: the rules issue 2 holds to BP's step time (fa with kernel feedback; brsf pays for its draws
#: and dfa for its B_i e products, still held to the same target); fa:dense is reported beside the
#: cost of its extra dense matrix product
SAME_COST_AS_BP = {"bp", "fa", "usf", "frsf", "brsf", "usf_norm", "sign_tracking", "kp", "dfa"}
STEP_TARGET = 1.05


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10)), (1, 28, 28)


def arch1() -> tuple[nn.Module, tuple[int, ...]]:
    from falign.models import create_model

    return create_model("arch1", num_classes=10), (3, 24, 24)


def resnet20() -> tuple[nn.Module, tuple[int, ...]]:
    from falign.models import create_model

    return create_model("resnet20", in_shape=(3, 32, 32), num_classes=10), (3, 32, 32)


MODELS = {"mlp": mlp, "arch1": arch1, "resnet20": resnet20}
DESCRIPTION = {"mlp": "MLP 784-1000-10", "arch1": "Arch 1", "resnet20": "ResNet-20"}


@dataclass(frozen=True)
class Plan:
    rules: tuple[str, ...]
    repeats: int  # interleaved rounds
    steps: int  # steps timed per round
    warmup: int  # untimed steps of each model first (lazy B, allocator, caches)


# dense conv FA on ResNet-20 would hold a (16*32*32)^2 matrix per 16-channel layer (1 GiB each)
_NO_DENSE = tuple(r for r in RULES if r != "fa:dense")
PLANS = {
    "full": {"mlp": Plan(tuple(RULES), 7, 10, 3), "arch1": Plan(tuple(RULES), 7, 10, 3),
             "resnet20": Plan(_NO_DENSE, 5, 2, 1)},
    "quick": {"mlp": Plan(tuple(RULES), 3, 5, 2),
              "arch1": Plan(("bp", "fa", "fa:dense", "usf", "dfa"), 2, 2, 1),
              "resnet20": Plan(("bp", "fa", "usf"), 2, 1, 1)},
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def time_steps(step, n: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def convert_rule(model: nn.Module, spec: str) -> nn.Module:
    name, _, variant = spec.partition(":")
    options = {"conv_feedback": variant} if variant else {}
    return falign.convert(model, name, warn=False, **options)


def measure(model_name: str, rules: list[str], *, batch: int, repeats: int, steps: int,
            device: str, warmup: int = 3) -> list[dict]:
    torch.manual_seed(0)
    base, in_shape = MODELS[model_name]()
    base = base.to(device)
    x = torch.randn(batch, *in_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in base.modules())
    rows = []
    for spec in rules:
        if spec == "fa:dense" and not has_conv:
            continue
        plain_step = make_step(base, x, y)
        rule_step = make_step(convert_rule(base, spec).to(device), x, y)
        for s in (plain_step, rule_step):
            for _ in range(warmup):
                s()
        plain_t, rule_t, ratios = [], [], []
        for _ in range(repeats):
            p = time_steps(plain_step, steps, device)
            r = time_steps(rule_step, steps, device)
            plain_t.append(p)
            rule_t.append(r)
            ratios.append(r / p)
        rows.append({
            "model": model_name, "rule": spec, "plain_ms": 1e3 * statistics.median(plain_t),
            "rule_ms": 1e3 * statistics.median(rule_t), "ratio": statistics.median(ratios),
            "batch": batch, "repeats": repeats, "steps": steps,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | rule | plain BP ms/step | rule ms/step | ratio |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['rule']} | {r['plain_ms']:.2f} | {r['rule_ms']:.2f} | "
                     f"{r['ratio']:.3f} |")
    return "\n".join(lines)


def summary_rows(rows: list[dict]) -> list[Row]:
    out = []
    for r in rows:
        same_cost = r["rule"] in SAME_COST_AS_BP
        out.append(Row(
            benchmark="step time", unit="ms",
            config=f"{DESCRIPTION.get(r['model'], r['model'])} b{r['batch']}, {r['rule']} "
                   f"({r['repeats']}x{r['steps']} steps)",
            plain=r["plain_ms"], falign=r["rule_ms"], ratio=r["ratio"],
            target=f"<= {STEP_TARGET:.2f}" if same_cost else "-",
            met=(r["ratio"] <= STEP_TARGET) if same_cost else None,
        ))
    return out


def collect(*, quick: bool, models: list[str] | None = None, rules: list[str] | None = None,
            repeats: int | None = None, steps: int | None = None, batch: int = 128,
            device: str = "cpu", log=print) -> list[dict]:
    plans = PLANS["quick" if quick else "full"]
    rows = []
    for m in models or list(plans):
        plan = plans.get(m, plans["arch1"])
        log(f"step time: {m} ({len(rules or plan.rules)} rules)")
        rows += measure(m, list(rules or plan.rules), batch=batch, repeats=repeats or plan.repeats,
                        steps=steps or plan.steps, device=device, warmup=plan.warmup)
    return rows


def run(quick: bool, log=print) -> list[Row]:
    """The rows for ``python -m bench``."""
    return summary_rows(collect(quick=quick, log=log))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rules, rounds and steps")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rules", default=None, help="comma-separated (default: each model's plan)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = collect(quick=args.quick, models=args.models.split(","),
                   rules=args.rules.split(",") if args.rules else None, repeats=args.repeats,
                   steps=args.steps, batch=args.batch, device=args.device)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}; ratio = median over interleaved rounds of rule-time / plain-time")
    print(format_table(rows))
    print()
    print(format_rows(summary_rows(rows)))
    return rows


if __name__ == "__main__":
    main()
