# %% [markdown]
# # Convert your own model and train it with FA and DFA
#
# You have a model written with ordinary `nn.Linear` / `nn.Conv2d` layers and a training loop.
# This tutorial turns it, with one call, into a model that learns with **feedback alignment**
# (FA, Lillicrap et al. 2016) or **direct feedback alignment** (DFA, Nøkland 2016), trains
# all three (BP, FA, DFA) from the same initial weights for a few hundred SGD steps, looks
# at the feedback matrices B, and uses `falign.exact_backward` to get the true gradient from a
# converted model. It needs no dataset (the data are synthetic) and runs in seconds on a CPU.

# %%
import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import falign

torch.manual_seed(0)

# %% [markdown]
# ## A model of your own
#
# Nothing in it knows about falign: two hidden layers, written the usual way.

# %%
class SmallNet(nn.Module):
    def __init__(self, d_in: int = 20, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h1 = torch.tanh(self.fc1(x))
        h2 = torch.tanh(self.fc2(h1))
        return self.head(h2)  # logits


model = SmallNet()

# %% [markdown]
# Synthetic data: 1,024 points in 20 dimensions, labelled by a fixed random "teacher" network,
# split into a training and a held-out set.

# %%
teacher = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
with torch.no_grad():
    x_all = torch.randn(1024, 20)
    y_all = teacher(x_all).argmax(1)
x_train, y_train = x_all[:768], y_all[:768]
x_test, y_test = x_all[768:], y_all[768:]
print("class counts:", torch.bincount(y_all, minlength=4).tolist())

# %% [markdown]
# ## Convert it
#
# `falign.convert(model, rule, **options)` returns a converted **copy** (the original is left as
# it was; `inplace=True` converts in place). The weights are kept, so the converted model
# computes exactly the same forward pass. Options such as `seed` (which fixes every B) or
# `scale` (B's standard deviation) go to the rule.

# %%
fa_model = falign.convert(model, "fa", seed=0)
print(fa_model.falign_conversion)

x = x_train[:8]
print("same forward:", torch.equal(fa_model(x), model(x)))

# %% [markdown]
# `model.falign_conversion` is a `ConversionReport`: what was converted, what was excluded by
# `include=` / `exclude=` patterns, and what could **not** be reached. Conversion swaps modules,
# so a weight used through a functional call escapes it. falign says so, as a warning and in the
# report:

# %%
class WithFunctionalWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 8)
        self.readout = nn.Parameter(torch.randn(4, 8) * 0.1)  # used with F.linear below

    def forward(self, x):
        return F.linear(torch.tanh(self.fc(x)), self.readout)


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    partly = falign.convert(WithFunctionalWeight(), "fa")
print(partly.falign_conversion)
print("warned:", [type(w.message).__name__ for w in caught])

# %% [markdown]
# ## The feedback matrices
#
# `falign.feedback_layers(model)` lists the converted layers. Each keeps W as `weight` and the
# stored part of B as the buffer `feedback`: saved in `state_dict`, moved by `.to()`, but not a
# parameter, so your optimizer never steps it. `effective_feedback()` returns exactly the B the
# next backward pass will use.
#
# The first layer, `fc1`, needs no B: its input (the data) needs no gradient, so it sends no
# signal anywhere.

# %%
for name, layer in falign.feedback_layers(fa_model):
    b = layer.effective_feedback()
    print(f"{name:5s} rule={layer.rule.name}  W {tuple(layer.weight.shape)}  "
          f"B {None if b is None else tuple(b.shape)}")

print("parameters:", [n for n, _ in fa_model.named_parameters()])
print("buffers:   ", [n for n, _ in fa_model.named_buffers()])

# %% [markdown]
# What "feedback alignment" means, checked by hand: the gradient arriving at the hidden
# activation `h2` is not `e W` (e: the gradient at the logits, W: the head's weight) but `e B`,
# with the head's fixed random B in W's place. The head's own weight gradient is the ordinary
# local one.

# %%
h1 = torch.tanh(fa_model.fc1(x))
h2 = torch.tanh(fa_model.fc2(h1))
h2.retain_grad()
logits = fa_model.head(h2)
logits.retain_grad()
F.cross_entropy(logits, y_train[:8]).backward()

e = logits.grad  # (8, 4) gradient at the logits
B = fa_model.head.effective_feedback()  # (4, 64), W's shape
print("h2 receives e @ B:  ", torch.allclose(h2.grad, e @ B, atol=1e-7))
print("h2 would get e @ W: ", torch.allclose(h2.grad, e @ fa_model.head.weight, atol=1e-7))
print("head's update is local:", torch.allclose(fa_model.head.weight.grad, e.T @ h2.detach(), atol=1e-7))
fa_model.zero_grad()

# %% [markdown]
# ## DFA
#
# Direct feedback alignment sends the error at the logits straight to every hidden layer: the
# input of converted layer i receives `e B_iᵀ`, with `B_i` of shape (layer input, logits), in
# place of the gradient from the layer above. (So `head`'s B feeds `h2`, `fc2`'s feeds `h1`,
# and `fc1`, whose input is the data, has none.) The conversion taps the
# model output with a hook, so an ordinary `loss.backward()` does DFA. The shape of each `B_i`
# is known only once the model has run, so B is made at the first training forward
# (`example_input=` makes it at conversion instead).

# %%
dfa_model = falign.convert(model, "dfa", seed=0)
print("before a forward:", [layer.effective_feedback() for _, layer in falign.feedback_layers(dfa_model)])
dfa_model = falign.convert(model, "dfa", seed=0, example_input=x)
for name, layer in falign.feedback_layers(dfa_model):
    b = layer.effective_feedback()
    print(f"{name:5s} B {None if b is None else tuple(b.shape)}")

# %% [markdown]
# ## Train BP, FA and DFA from the same start
#
# The training loop is yours: falign changes nothing in it. All three models start from the
# same weights (`model`'s), see the same batches and take the same SGD steps.

# %%
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def train(net: nn.Module, steps: int = 400, lr: float = 0.1, batch: int = 64) -> nn.Module:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(1)  # the same batches for every model
    for _ in range(steps):
        idx = torch.randint(0, x_train.shape[0], (batch,), generator=order)
        opt.zero_grad()
        F.cross_entropy(net(x_train[idx]), y_train[idx]).backward()
        opt.step()
    return net


nets = {
    "bp": copy.deepcopy(model),
    "fa": falign.convert(model, "fa", seed=0),
    "dfa": falign.convert(model, "dfa", seed=0),
}
print(f"before training: test accuracy {100 * accuracy(model, x_test, y_test):.1f}%")
for label, net in nets.items():
    train(net)
    print(f"{label:4s} test accuracy {100 * accuracy(net, x_test, y_test):.1f}%")

# %% [markdown]
# ## The true gradient of a converted model: `exact_backward`
#
# Inside `with falign.exact_backward(model):` every converted layer runs the plain torch op, so
# `backward()` is backprop through the *same* weights; the rules' state is neither used nor
# advanced, and the layers go back to their rule on exit (also after an exception). Here: the FA
# model's own update against the true gradient, layer by layer. The angle is well below 90°: the
# forward weights have come to align with the fixed B (Lillicrap et al. 2016).

# %%
fa = nets["fa"]


def weight_grads(net: nn.Module) -> dict[str, torch.Tensor]:
    net.zero_grad()
    F.cross_entropy(net(x_train), y_train).backward()
    return {name: getattr(net, name).weight.grad.clone() for name in ("fc1", "fc2", "head")}


rule_grads = weight_grads(fa)
with falign.exact_backward(fa):
    true_grads = weight_grads(fa)

for name in rule_grads:
    cos = F.cosine_similarity(rule_grads[name].flatten(), true_grads[name].flatten(), dim=0)
    print(f"{name:5s} angle between FA's update and the gradient: "
          f"{torch.rad2deg(torch.arccos(cos.clamp(-1, 1))):5.1f} deg")

# %% [markdown]
# The exact gradient is the one a plain copy of the model computes with the same weights (the
# extra `feedback*` entries of the converted model's `state_dict` are left out):

# %%
plain = SmallNet()
plain.load_state_dict({k: v for k, v in fa.state_dict().items()
                       if not k.split(".")[-1].startswith("feedback")})
plain_grads = weight_grads(plain)
print("exact_backward == plain backprop:",
      all(torch.allclose(true_grads[n], plain_grads[n], atol=1e-6) for n in true_grads))
print("the head's update is the same either way:", torch.allclose(rule_grads["head"], true_grads["head"]))

# %% [markdown]
# ## Where to go next
#
# * Other rules are one string away: `falign.rules()` lists them; the
#   [learning rules](../rules.md) page gives what each sends backward.
# * [Reproduce a published result](reproduce_a_result.md) with the experiment runner.
# * [Analyse a run](analyse_a_run.md): alignment angles, CKA, Grad-CAM.
