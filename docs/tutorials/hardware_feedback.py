# %% [markdown]
# # Train with the feedback your device computes
#
# Direct feedback alignment needs one thing a device can do cheaply: a fixed random projection
# of the output error, `B_i e`. An analog array, a neuromorphic chip or an optical processor
# computes it with few bits, sparse connections and device-to-device variation, or computes it
# *itself*, outside PyTorch. This tutorial
#
# 1. trains DFA with the ideal feedback path, and with a 3-level, half-connected, varying B
#    (`hardware={...}`: the keys of [Hardware-aware feedback](../hardware.md));
# 2. checks that `effective_feedback()` is the B the backward used;
# 3. puts a device in the loop: a `projection(e, point, out_features)` function, here a
#    simulated analog tile with a fixed random matrix and an 8-bit converter on its output,
#    called by falign in place of its own product at every feedback point;
# 4. trains through a simulated optical co-processor (`optical`): the ternary error shown to a
#    random scattering medium, intensities read by an 8-bit camera.
#
# It runs on synthetic data in a few seconds and writes nothing.

# %%
import torch
import torch.nn.functional as F
from torch import nn

import falign

torch.manual_seed(0)
x = torch.randn(512, 20)
y = ((x[:, :10].sum(1) > 0).long() + 2 * (x[:, 10:].sum(1) > 0).long())  # 4 classes


def net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))


def train(model: nn.Module, steps: int = 300) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# %% [markdown]
# ## The ideal path and a few-bit, sparse, varying one
#
# `hardware` is an option of every rule with a feedback B. Each key models one limit of the
# device; they apply in the order rank, density, levels, variation, once when B is drawn.

# %%
ideal = falign.convert(net(), "dfa", seed=0)
device = falign.convert(net(), "dfa", seed=0,
                        hardware={"b_levels": 3, "b_density": 0.5, "b_noise": 0.05})
print(f"DFA, ideal feedback:             train accuracy {train(ideal):.2f}")
print(f"DFA, 3 levels, half, 5% varying: train accuracy {train(device):.2f}")

# B_i of the last layer's input: (64 hidden units, 4 errors); density 0.5 keeps 2 of 4 per unit
sparse = falign.convert(net(), "dfa", seed=0, hardware={"b_density": 0.5}, example_input=x[:2])
b = sparse[4].effective_feedback()
print("connections per hidden unit:", sorted(set((b != 0).sum(1).tolist())), "of", b.shape[1])

# %% [markdown]
# ## effective_feedback() is what the backward used
#
# The gradient a hidden layer's input receives is `(e / N) B_i^T`, with B_i as the device holds
# it. Checked here on the last hidden layer, by hand:

# %%
model = falign.convert(net(), "dfa", seed=0, hardware={"b_levels": 3})
F.cross_entropy(model(x), y).backward()
e = F.softmax(model(x), 1) - F.one_hot(y, 4)
a2 = model[2](torch.tanh(model[0](x)))
delta = (e / len(x)) @ model[4].effective_feedback().T * (1 - torch.tanh(a2) ** 2)
by_hand = delta.T @ torch.tanh(model[0](x))
print("backward reads effective_feedback():", torch.allclose(model[2].weight.grad, by_hand, atol=1e-6))
print("levels of B:", torch.unique(model[4].effective_feedback()).numel())

# %% [markdown]
# ## A device in the loop
#
# A projection is any function `projection(e, point, out_features) -> signal`: `e` is the
# error the rule projects, one row a sample (N, E); the signal has one row a sample and
# `out_features` columns (the size of the layer input at feedback point `point`). falign calls
# it once per feedback point per backward, instead of its own product. Here it simulates an
# analog tile: a fixed random matrix per point and an 8-bit converter on the output. On real
# hardware the function would send `e` to the device and read the result back. In a config,
# name it by import path: `rule: {name: dfa, hardware: {projection: mylab.tile:project}}`.

# %%
tiles: dict[str, torch.Tensor] = {}


def analog_tile(e: torch.Tensor, point: str, out_features: int) -> torch.Tensor:
    if point not in tiles:
        g = torch.Generator().manual_seed(len(tiles))
        tiles[point] = torch.randn(out_features, e.shape[1], generator=g) / e.shape[1] ** 0.5
    signal = e @ tiles[point].T
    full_scale = signal.abs().max().clamp_min(1e-12)
    return torch.round(signal / full_scale * 127) / 127 * full_scale  # an 8-bit read-out


in_the_loop = falign.convert(net(), "dfa", seed=0, hardware={"projection": analog_tile})
print(f"DFA, projection computed by the tile: train accuracy {train(in_the_loop):.2f}")
print("feedback points the tile served:", sorted(tiles))

# %% [markdown]
# ## An optical co-processor, simulated
#
# `optical` models the device Launay et al. 2020 trained DFA with: the error, ternarised
# (`error_levels: 3`, entries below `error_threshold` x the sample's largest set to 0), shown as
# binary frames to a medium with a complex Gaussian transmission matrix, the intensities read by
# a camera of `bits` bits and turned back into a linear projection against a reference field
# (the equations are on [Hardware-aware feedback](../hardware.md)). `effective_feedback()` is
# the linear map the device realises before the camera rounds it.

# %%
optical = falign.convert(net(), "dfa", seed=0,
                         hardware={"error_levels": 3, "error_threshold": 0.1, "optical": {"bits": 8}})
print(f"DFA through an 8-bit optical device: train accuracy {train(optical):.2f}")
print("optical B of the last layer's input:", tuple(optical[4].effective_feedback().shape))
