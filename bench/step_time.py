"""Training-step time of each rule relative to plain PyTorch backprop, measured in the same run.

    python -m bench.step_time [--models mlp,arch1] [--rules ...] [--repeats 7] [--device cpu]

A step is forward + backward + SGD step on a fixed batch.  Every configuration is timed in
interleaved rounds (plain, rule, plain, rule, ...) and the ratio is the median over rounds of
rule-time / plain-time, so slow drifts of a shared machine cancel.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import falign

RULES = ["bp", "fa", "fa:dense", "usf", "frsf", "brsf", "usf_norm", "sign_tracking", "kp", "dfa"]


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10)), (1, 28, 28)


def arch1() -> tuple[nn.Module, tuple[int, ...]]:
    from falign.models import create_model

    return create_model("arch1", num_classes=10), (3, 24, 24)


MODELS = {"mlp": mlp, "arch1": arch1}


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
            device: str) -> list[dict]:
    torch.manual_seed(0)
    base, in_shape = MODELS[model_name]()
    base = base.to(device)
    x = torch.randn(batch, *in_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    rows = []
    for spec in rules:
        if spec == "fa:dense" and model_name == "mlp":
            continue
        plain_step = make_step(base, x, y)
        rule_step = make_step(convert_rule(base, spec).to(device), x, y)
        for s in (plain_step, rule_step):  # warm-up (lazy B, allocator, caches)
            for _ in range(3):
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
        })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | rule | plain BP ms/step | rule ms/step | ratio |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['rule']} | {r['plain_ms']:.2f} | {r['rule_ms']:.2f} | "
                     f"{r['ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,arch1")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for m in args.models.split(","):
        rows += measure(m, args.rules.split(","), batch=args.batch, repeats=args.repeats,
                        steps=args.steps, device=args.device)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}; ratio = median over {args.repeats} interleaved rounds of "
          f"{args.steps} steps")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
