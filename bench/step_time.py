"""Training-step time of each rule relative to plain PyTorch backprop, measured in the same run.

    python -m bench.step_time [--quick] [--models mlp,arch1,resnet20] [--rules ...]
                              [--repeats 7] [--steps 10] [--runs 3] [--device cpu]

A step is forward + backward + SGD step on a fixed batch.  Every configuration is timed in
interleaved rounds (plain, rule, plain, rule, ...) and a run's ratio is the median over rounds
of rule-time / plain-time, so slow drifts of a shared machine cancel; the table gives the median
of ``--runs`` such runs.  Each model has its own plan (rules, rounds, steps a round);
``--repeats`` / ``--steps`` / ``--rules`` override it.  The rules come from the registry, so a
rule of one's own is benchmarked by ``--rules mypkg.rules:MyRule``, and a rule with a hardware
model of its feedback path by ``--rules "dfa+b_levels=3+b_density=0.1"`` (held to its rule's
target: a fixed transform of B costs nothing per step) or ``--rules dfa+optical`` (the simulated
optical co-processor: four complex projections and a camera per backward, reported without a
target).

Targets: ``bp`` through falign is the noise floor; rules whose B is stored (``fa``) are held to
1.02, rules that recompute B from W or redraw it each step to 1.03; a rule whose maths adds
work (a dense matrix, B's own optimizer update, mirror steps) is reported without a target.

``--rules floor`` times a reference that is not a rule: plain PyTorch whose ``nn.Linear`` and
``nn.Conv2d`` layers (those classes exactly; a convolution with a padding mode or string
padding stays plain, as do subclasses) compute backprop's own maths in a minimal Python
``torch.autograd.Function`` wherever their input needs a gradient (no falign code).  Its ratio
is what routing a layer's backward through Python costs by itself, the least any rule falign
implements as an autograd Function can cost.  The bundled models' layers are all covered.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import falign

from ._common import Row, format_rows


def _registry_specs() -> list[str]:
    """Every registered rule, and every variant of a rule that has them ("fa:dense")."""
    specs = []
    for name in falign.rules():
        specs.append(name)
        cls = type(falign.get_rule(name))
        for choice in getattr(cls, f"_{cls.variant_option}_choices", ())[1:] if cls.variant_option else ():
            specs.append(f"{name}:{choice}")
    return specs


RULES = _registry_specs()
#: the step-time target of a rule (None: its maths costs more than BP's, reported only)
TARGETS = {"bp": 1.02, "fa": 1.02, "frsf": 1.03, "usf": 1.03, "usf_norm": 1.03, "brsf": 1.03,
           "sign_tracking": 1.03, "dfa": 1.03, "sdfa": 1.03, "drtp": 1.03}


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


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, targets: bool = False):
    """One SGD step; ``targets``: hand the step's labels to the model first, as a loop training
    a converted model does (rules that project the target need them; timed with the rule)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if targets:
            falign.layers.set_targets(model, y)
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


def _number(v: str) -> int | float:
    return int(v) if v.lstrip("-").isdigit() else float(v)


def parse_spec(spec: str) -> tuple[str, dict | None]:
    """``"dfa+b_levels=3+b_density=0.5"``: a rule and the hardware model of its feedback path
    (``falign.rules.hardware``), to time what a device's B costs; a bare key is switched on
    (``"dfa+optical"``: the simulated optical co-processor, 8-bit camera)."""
    name, *keys = spec.split("+")
    hardware = {k: _number(v) for k, v in (kv.split("=", 1) for kv in keys if "=" in kv)}
    hardware.update({k: True for k in keys if "=" not in k})
    return name, hardware or None


class _FloorFn(torch.autograd.Function):
    """Backprop's own gradients of a linear or 2-d convolution layer, from Python."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv):
        ctx.conv = conv
        ctx.save_for_backward(x, weight)
        return conv._conv_forward(x, weight, bias) if conv is not None else F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:3])
        if ctx.conv is not None:
            c = ctx.conv
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g, x, weight, [weight.shape[0]] if need[2] else None, list(c.stride), list(c.padding),
                list(c.dilation), False, [0, 0], c.groups, need)
            return gx, gw, gb, None
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        return (g @ weight if need[0] else None, g2.T @ x2 if need[1] else None,
                g2.sum(0) if need[2] else None, None)


class _FloorLinear(nn.Linear):
    def forward(self, x):
        if not x.requires_grad:  # (as falign's layers: no Function where the input needs no gradient)
            return F.linear(x, self.weight, self.bias)
        return _FloorFn.apply(x, self.weight, self.bias, None)


class _FloorConv2d(nn.Conv2d):
    def forward(self, x):
        if not x.requires_grad or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return _FloorFn.apply(x, self.weight, self.bias, self)


def floor_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose linear and 2-d convolution layers compute backprop's gradients
    in a minimal Python autograd Function (``--rules floor``)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = _FloorLinear
        elif type(m) is nn.Conv2d:
            m.__class__ = _FloorConv2d
    return model


def convert_rule(model: nn.Module, spec: str, example: torch.Tensor) -> nn.Module:
    if spec == "floor":
        return floor_model(model)
    name, hardware = parse_spec(spec)
    options = {"hardware": hardware} if hardware else {}
    return falign.convert(model, name, warn=False, example_input=example, **options)


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
        rule_step = make_step(convert_rule(base, spec, x).to(device), x, y, targets=spec != "floor")
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
        # the next rule is timed with nothing of this one alive: a converted direct-rule model
        # is a reference cycle (its wiring and layers), and while any wiring exists a step of a
        # model of another pathway pays for set_step's walk through it
        del plain_step, rule_step
        gc.collect()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | rule | plain BP ms/step | rule ms/step | ratio (median) | each run |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        each = ", ".join(f"{v:.3f}" for v in r.get("ratios", [r["ratio"]]))
        lines.append(f"| {r['model']} | {r['rule']} | {r['plain_ms']:.2f} | {r['rule_ms']:.2f} | "
                     f"{r['ratio']:.3f} | {each} |")
    return "\n".join(lines)


def summary_rows(rows: list[dict]) -> list[Row]:
    out = []
    for r in rows:
        name, hardware = parse_spec(r["rule"])
        # a fixed device B costs nothing a step; an optical device computes its own projection
        target = None if "optical" in (hardware or {}) else TARGETS.get(name)
        out.append(Row(
            benchmark="step time", unit="ms",
            config=f"{DESCRIPTION.get(r['model'], r['model'])} b{r['batch']}, {r['rule']} "
                   f"({r['runs']} runs of {r['repeats']}x{r['steps']} steps)",
            plain=r["plain_ms"], falign=r["rule_ms"], ratio=r["ratio"],
            target=f"<= {target:.2f}" if target else "-",
            met=(r["ratio"] <= target) if target else None,
        ))
    return out


def median_of_runs(runs: list[list[dict]]) -> list[dict]:
    """One row per (model, rule): the median over runs of each run's median ratio."""
    out = []
    for group in zip(*runs, strict=True):
        row = dict(group[0])
        for key in ("plain_ms", "rule_ms", "ratio"):
            row[key] = statistics.median(g[key] for g in group)
        row["runs"] = len(group)
        row["ratios"] = [g["ratio"] for g in group]
        out.append(row)
    return out


def collect(*, quick: bool, models: list[str] | None = None, rules: list[str] | None = None,
            repeats: int | None = None, steps: int | None = None, batch: int = 128,
            device: str = "cpu", runs: int | None = None, log=print) -> list[dict]:
    plans = PLANS["quick" if quick else "full"]
    runs = runs or (1 if quick else 3)
    results = []
    for k in range(runs):
        rows = []
        for m in models or list(plans):
            plan = plans.get(m, plans["arch1"])
            log(f"step time, run {k + 1}/{runs}: {m} ({len(rules or plan.rules)} rules)")
            rows += measure(m, list(rules or plan.rules), batch=batch, repeats=repeats or plan.repeats,
                            steps=steps or plan.steps, device=device, warmup=plan.warmup)
        results.append(rows)
    return median_of_runs(results)


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
    ap.add_argument("--runs", type=int, default=None, help="independent runs, median reported (3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = collect(quick=args.quick, models=args.models.split(","),
                   rules=args.rules.split(",") if args.rules else None, repeats=args.repeats,
                   steps=args.steps, batch=args.batch, device=args.device, runs=args.runs)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}; ratio = median over interleaved rounds of rule-time / plain-time")
    print(format_table(rows))
    print()
    print(format_rows(summary_rows(rows)))
    return rows


if __name__ == "__main__":
    main()
