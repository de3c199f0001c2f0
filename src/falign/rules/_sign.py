"""Helpers shared by the sign-symmetry rules."""

from __future__ import annotations

import torch
from torch import Tensor


def sign(w: Tensor) -> Tensor:
    # sign(0) = 0 as in torch.sign; exact zeros do not occur in trained float weights.
    return torch.sign(w)


def norm(t: Tensor, kind: str) -> Tensor:
    if kind == "fro":
        return torch.linalg.vector_norm(t)
    # spectral: largest singular value of W as an (out, in * k...) matrix
    return torch.linalg.matrix_norm(t.reshape(t.shape[0], -1), ord=2)
