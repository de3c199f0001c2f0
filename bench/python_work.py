"""Python bytecodes a training step executes, each rule against plain PyTorch in the same run.

    python -m bench.python_work [--rules bp,fa,dfa,sdfa,drtp] [--batch 1] [--steps 20] [--by-function]

A rule's per-step cost on a small model is mostly fixed Python work (the layer's forward
plumbing, autograd Functions, hooks), and step-time ratios on a shared machine spread by several
percent (``docs/experiments/speed.md``).  This count does not: it is the number of bytecode
instructions the interpreter runs in ``steps`` training steps (forward, loss, backward, SGD
step; falign's, torch's and the step's own Python, hooks called by autograd included), traced
with ``sys.settrace`` (per-opcode events), divided by ``steps``.  Native work (the matmuls) is
not counted: use it to see where a rule's fixed overhead is, and ``bench.step_time`` for what
a step costs.  The model is the step-time MLP (784-1000-10), one thread, autograd on the
calling thread so its hooks are traced.

``--by-function`` lists, for each rule, the functions whose count differs most from plain
PyTorch's step.
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys

import torch

import falign

from .step_time import convert_rule, make_step, mlp


def count(step, steps: int) -> collections.Counter:
    """Bytecodes executed by ``steps`` calls of ``step``, by function (file, name, first line)."""
    counts: collections.Counter = collections.Counter()

    def trace(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_name, code.co_firstlineno)] += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        for _ in range(steps):
            step()
    finally:
        sys.settrace(previous)
    return counts


def measure(rules: list[str], *, batch: int = 1, steps: int = 20, warmup: int = 3) -> dict:
    """{rule: Counter of bytecodes a step by function}; "plain" is plain PyTorch's step."""
    torch.manual_seed(0)
    base, in_shape = mlp()
    x = torch.randn(batch, *in_shape)
    y = torch.randint(0, 10, (batch,))
    multithreading = torch.autograd.is_multithreading_enabled()
    torch.autograd.set_multithreading_enabled(False)
    try:
        out = {}
        for spec in ["plain", *rules]:
            model = base if spec == "plain" else convert_rule(base, spec, x)
            step = make_step(model, x, y, targets=spec not in ("plain", "floor"))
            for _ in range(warmup):
                step()
            counts = count(step, steps)
            out[spec] = collections.Counter({k: v / steps for k, v in counts.items()})
            del model, step  # each rule is counted with no other converted model alive
            gc.collect()
        return out
    finally:
        torch.autograd.set_multithreading_enabled(multithreading)


def _where(key) -> str:
    path, name, line = key
    for marker in ("site-packages/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{line} {name}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default="bp,floor,fa,dfa,sdfa,drtp")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--by-function", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.rules.split(","), batch=args.batch, steps=args.steps)
    plain = sum(result["plain"].values())
    print(f"falign {falign.__version__}, torch {torch.__version__}, Python {sys.version.split()[0]}; "
          f"MLP 784-1000-10, batch {args.batch}, {args.steps} steps")
    print("| rule | bytecodes a step | over plain PyTorch | ratio |")
    print("|---|---:|---:|---:|")
    for spec, counts in result.items():
        total = sum(counts.values())
        print(f"| {spec} | {total:.0f} | {total - plain:+.0f} | {total / plain:.3f} |")
    if args.by_function:
        for spec, counts in result.items():
            if spec == "plain":
                continue
            base = result["plain"]
            diff = {k: counts.get(k, 0) - base.get(k, 0) for k in set(counts) | set(base)}
            print(f"\n{spec}: functions whose count differs most from plain PyTorch's")
            for key, d in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:15]:
                print(f"  {d:+7.0f}  {_where(key)}")
    return result


if __name__ == "__main__":
    main()
