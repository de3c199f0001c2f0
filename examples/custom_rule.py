"""A learning rule of your own, in one file: sparse feedback alignment.

    python examples/custom_rule.py                       # define, check, train
    PYTHONPATH=examples falign train CONFIG --set rule.name=custom_rule:SparseFA

Sparse FA keeps a fraction ``density`` of the entries of a fixed random B (the others are
zero), rescaled so that B's variance is that of dense FA: a feedback pathway with few
connections, as in Crafton et al. 2019 ("Direct feedback alignment with sparse connections for
local learning").  It uses the ``kernel`` pathway, so the rule is only how B is made: falign
supplies the backward (B in W's place, one fused convolution backward), the per-step state,
checkpoints, distributed training, sweeps and reports.

The file (1) defines and registers the rule, (2) runs falign's contract suite on it
(``falign.testing.check_rule``: forward, local gradients, the pathway's formula in float64,
seeds, state_dict, exact_backward, bf16, torch.compile), and (3) trains a small model with it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import falign
from falign.rules import gaussian


@falign.register_rule
@dataclass
class SparseFA(falign.Rule):
    """Fixed random feedback with a fraction ``density`` of non-zero entries, N(0, scale^2 / density)
    each, so that every entry of B has variance scale^2 as in dense FA."""

    name: ClassVar[str] = "sparse_fa"
    description: ClassVar[str] = "sparse FA: fixed random B with a fraction `density` non-zero"
    citation: ClassVar[str] = "Crafton et al. 2019, Front. Neurosci. 13:525"

    density: float = 0.1

    def __post_init__(self):
        if not 0 < self.density <= 1:
            raise falign.RuleError(f"rule 'sparse_fa' option density must be in (0, 1], not {self.density!r}")

    def init_feedback(self, weight, shape, std, seed):
        b = gaussian(shape, std / math.sqrt(self.density), seed, dtype=weight.dtype, device=weight.device)
        keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < self.density
        return b * keep.to(b.device, b.dtype)

    def matrix(self, weight, feedback):
        return feedback


def main(steps: int = 300) -> int:
    import falign.testing

    falign.testing.check_rule(SparseFA, processes=False, density=0.3)
    print("contract suite: passed")

    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()  # 3 classes
    model = falign.convert(nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                         nn.Linear(64, 3)), "sparse_fa", density=0.2, seed=1)
    b = model[2].effective_feedback()
    print(f"B of layer 2: {int((b != 0).sum())} of {b.numel()} entries non-zero")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    acc = float((model(x).argmax(1) == y).float().mean())
    print(f"training accuracy after {steps} steps: {100 * acc:.1f}%")
    return 0 if acc > 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
