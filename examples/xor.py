"""A 2-8-2 ReLU network learns XOR with feedback alignment.

    python examples/xor.py

It first checks that the hidden-layer update falign computes equals the hand-written rule of the
usual custom-training-loop tutorial of feedback alignment:

    d_logits      = softmax(logits) - onehot(y)           (cross-entropy, per sample)
    hidden_signal = (d_logits @ B) * relu'(a)             (B: the fixed random (2, 8) feedback)
    dW1           = hidden_signal^T @ x

then trains and prints the four predictions.  Exits non-zero if either part fails.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import falign


def main(steps: int = 1000, seed: int = 0) -> int:
    torch.manual_seed(seed)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    net = falign.convert(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), "fa", seed=seed)
    hidden, out = net[0], net[2]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    # 1. falign's update == the hand-written rule
    a = hidden(x)  # (4, 8) pre-activation
    logits = out(torch.relu(a))
    loss_fn(logits, y).backward()
    with torch.no_grad():
        d_logits = torch.softmax(logits, dim=1) - nn.functional.one_hot(y, 2).float()  # (4, 2)
        hidden_signal = (d_logits @ out.feedback) * (a > 0).float()  # (4, 8)
        d_w1 = hidden_signal.T @ x  # (8, 2)
    same = torch.allclose(hidden.weight.grad, d_w1, atol=1e-6)
    print(f"hidden-layer update equals (d_logits @ B) * relu'(a) rule: {same}")
    net.zero_grad()

    # 2. training
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        pred = net(x).argmax(1)
    for xi, pi in zip(x.tolist(), pred.tolist(), strict=True):
        print(f"  {int(xi[0])} xor {int(xi[1])} -> {pi}")
    learned = bool((pred == y).all())
    print(f"FA learned XOR: {learned}")
    return 0 if (same and learned) else 1


if __name__ == "__main__":
    sys.exit(main())
