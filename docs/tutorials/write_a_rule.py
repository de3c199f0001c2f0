# %% [markdown]
# # Write your own learning rule and run the contract suite on it
#
# A learning rule in falign is a small dataclass: its options are fields, and two or three
# pure functions say how the feedback matrix B is made. falign supplies everything else — the
# backward pass (B in W's place, in the same fused kernel backprop uses), conversion of any
# model, checkpoints, multi-process training, configs, sweeps and reports — and
# `falign.testing.check_rule` checks that your rule keeps the promises every rule keeps.
#
# The rule built here: **feedback alignment with B rescaled to W's norm**. B is a fixed random
# direction B0 (as in FA, Lillicrap et al. 2016), but its Frobenius norm follows W's at every
# step, `B = ‖W‖ · B0 / ‖B0‖` — the norm matching that Lance & Kieu 2026 apply to sign
# feedback ("uSF SN"), here on a random B. It runs in well under a minute on a CPU, on
# synthetic data, then on a small MNIST subset (from `$FALIGN_DATA`, else `./data`), writing
# only into a temporary directory.

# %%
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import falign
import falign.testing
from falign.rules import gaussian

# %% [markdown]
# ## The rule
#
# * `init_feedback(weight, shape, std, seed)` returns the **stored part** of B, made once at
#   conversion: here B0 ~ N(0, std²), drawn from its own generator seeded by `seed` (falign
#   derives a seed per layer from the rule's `seed` and the layer's name, so every process and
#   every resume makes the same B0). Never draw from the global RNG here.
# * `matrix(weight, feedback)` returns **B itself** from W and the stored part, where the
#   backward pass needs it. Because it reads the current W, the norm follows W at every step
#   without any state to update. (A rule whose stored part changes after optimizer steps
#   overrides `update(weight, feedback, step, std, seed, since=...)`, which falign calls once
#   per optimizer step.)
# * `pathway = "kernel"` (the default): B has W's shape and replaces W in the backward pass.
#   Other pathways: `dense` (one matrix per sample map), `direct` (DFA-style, from the error at
#   the logits).
#
# `@falign.register_rule` makes the name usable everywhere a rule name is (`falign.convert`,
# `create_model`, configs); `@dataclass` under it turns the options into fields.

# %%
@falign.register_rule
@dataclass
class NormMatchedFA(falign.Rule):
    """Fixed random direction B0, rescaled to ||W||_F at every use: B = ||W|| B0 / ||B0||."""

    name: ClassVar[str] = "norm_fa"
    description: ClassVar[str] = "FA with B rescaled to W's Frobenius norm every step"
    citation: ClassVar[str] = "Lillicrap et al. 2016 (FA); norm matching as in 'uSF SN' of Lance & Kieu 2026"

    eps: float = 1e-12  # an option: guards the division for an all-zero B0

    def init_feedback(self, weight, shape, std, seed):
        return gaussian(shape, std, seed, dtype=weight.dtype, device=weight.device)

    def matrix(self, weight, feedback):
        norm_w = torch.linalg.vector_norm(weight)
        norm_b0 = torch.linalg.vector_norm(feedback).clamp_min(self.eps)
        return feedback * (norm_w / norm_b0)


print(falign.rules()["norm_fa"])

# %% [markdown]
# ## Run the contract suite
#
# `check_rule(rule, **options)` runs every check of `falign.testing` on the rule, and raises
# `AssertionError` naming the first broken promise:
#
# * **forward** — on Linear and Conv1d/2d/3d layers (stride, padding modes, `'same'`,
#   dilation, groups), the converted layer's forward equals the plain layer's, its weight and
#   bias gradients are the ordinary local ones, and the gradient sent to its input equals the
#   pathway's formula, written out in float64 with the B that `effective_feedback()` returns;
# * **seed** — B depends on the rule's seed and the layer's name only, not on the global RNG;
# * **state_dict** — a round trip into a model built with another seed continues identically;
# * **exact** — inside `falign.exact_backward` the model computes backprop's gradients;
# * **autocast** — a bf16 autocast step gives finite gradients close to float32's;
# * **compile** — `torch.compile` gives the eager outputs and gradients;
# * **processes** — two processes under torchrun end with one process's weights. That check
#   starts subprocesses, which must be able to import the rule (`rule_path="mypkg.rules:MyRule"`);
#   a rule defined in a script or notebook skips it with `processes=False`.

# %%
falign.testing.check_rule(NormMatchedFA, processes=False)
print("contract suite: passed")

# %% [markdown]
# The checks can fail. A rule that adds fresh noise to B from the global random state every
# time B is used breaks two promises at once: the B a backward pass uses is not the B
# `effective_feedback()` reports (so alignment measures and checkpoints describe another
# matrix), and B changes with the global RNG (so two processes, or a resumed run, differ).
# `check_rule` stops at the first:

# %%
@dataclass
class NoisyFA(NormMatchedFA):
    def matrix(self, weight, feedback):
        b = super().matrix(weight, feedback)
        return b + 0.1 * b.std() * torch.randn_like(b)  # the mistake: noise from the global RNG


try:
    falign.testing.check_rule(NoisyFA, processes=False)
except AssertionError as err:
    print("check_rule failed, as it should:", str(err).splitlines()[0])

# %% [markdown]
# ## Use it
#
# The registered name works like any built-in rule. B's norm follows W's as W grows during
# training, while its direction stays B0's:

# %%
torch.manual_seed(0)
x = torch.randn(512, 10)
y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()  # 3 classes
model = falign.convert(nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                     nn.Linear(64, 3)), "norm_fa", seed=1)
layer = model[2]
b0 = layer.effective_feedback()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(200):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
b = layer.effective_feedback()
print(f"||W|| = {layer.weight.norm():.3f}, ||B|| = {b.norm():.3f}")
cos = F.cosine_similarity(b.flatten(), b0.flatten(), dim=0)
print(f"B's direction unchanged: cosine(B, B at start) = {cos:.4f}")
print(f"training accuracy: {100 * float((model(x).argmax(1) == y).float().mean()):.1f}%")

# %% [markdown]
# ## In the experiment runner
#
# A config names the rule like any other. In the process that registered it (this script, a
# notebook) the registered name is enough; in a fresh process — `falign train` on the command
# line, a sweep worker, torchrun's processes — name it by import path so it can be imported:
# `rule: {name: mypkg.rules:NormMatchedFA}` (with `mypkg` on `PYTHONPATH`).

# %%
from falign.training import parse_config, train  # noqa: E402

workdir = Path(tempfile.mkdtemp(prefix="falign-rule-"))
cfg = parse_config({
    "name": "mnist-norm-fa",
    "data": {"name": "mnist", "subset": 1000},
    "model": {"name": "mlp", "options": {"sizes": [784, 64, 10], "activation": "tanh"}},
    "rule": {"name": "norm_fa", "options": {"seed": 3}},
    "optim": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 2, "batch_size": 50},
})
record = train(cfg, workdir / "norm-fa", progress=False, log=None)
print(f"{record.status}: test accuracy {100 * record.test_acc:.1f}% after {len(record.epochs)} epochs")
print("saved with the run:", record.config["rule"])
shutil.rmtree(workdir)

# %% [markdown]
# ## Where to go next
#
# * [Adding a rule](../adding-a-rule.md) walks through `examples/custom_rule.py`, a rule in one
#   importable file (sparse feedback), used from Python and from configs.
# * The [rules registry](../api/rules.md) documents `Rule`'s class variables: `pathway`,
#   `default_scale`, `learned` (a B trained by your optimizer, as in Kolen-Pollack),
#   `variant_option`.
