"""The direct pathway's maths as pure functions of tensors and shapes: B_i's shape, the step's
targets in e's shape, a sample's weight in a mean loss, the projection ``s B_i^T`` a layer's
input receives, and the (input, error) row pairs a trained B_i learns from.  No module, no
wiring, no autograd: each is tested on its own (``tests/test_direct_signal.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: class index of a position that counts in no loss (PyTorch's and Hugging Face's convention)
IGNORE_INDEX = -100


def batch_axis(x: tuple[int, ...], e: tuple[int, ...]) -> int | None:
    """The axis (0 or 1) of a sequence input ``x`` that is the batch of error ``e`` when their
    positions differ (e one vector a sample, or an encoder's positions against a decoder's)."""
    for a in (0, 1):
        if a < len(x) - 1 and a < len(e) - 1 and x[a] == e[a] and (len(e) == 2 or len(e) == len(x)):
            return a
    return None


def feedback_shape(input_shape: tuple[int, ...], error_shape: tuple[int, ...], *, op: str,
                   recurrent: bool = False) -> tuple[int, ...]:
    """B_i's shape, once e's (batch-included) shape is known: (D, E) token-wise (a linear op
    whose input shares e's leading dims: each position receives its own error), broadcast (e
    one vector a sample: every position receives it) or a recurrent weight's (one step's state
    and error), else the full (*input, *e) of a sample."""
    x, e = tuple(input_shape), tuple(error_shape)
    if recurrent or op == "linear" and (x[:-1] == e[:-1] or len(x) > 2 and batch_axis(x, e) is not None):
        return (x[-1], e[-1])
    return (*x[1:], *e[1:])


def one_hot_targets(targets: Tensor, error: Tensor, keep: Tensor | None = None, *,
                    every: bool = False) -> Tensor:
    """Targets in e's shape: class indices (one a sample, or one a position) one-hot, a
    position whose index is ``IGNORE_INDEX`` all zeros; float targets as they are.  ``keep``:
    ``targets != IGNORE_INDEX`` where already made; ``every``: no label is ``IGNORE_INDEX``
    (known from the step's label count), so no mask is needed."""
    if targets.is_floating_point():
        return _to(targets if targets.shape == error.shape else targets.reshape(error.shape), error.dtype)
    classes = error.shape[-1] if tuple(targets.shape) == tuple(error.shape[:-1]) else error[0].numel()
    # built in e's dtype (1 at the label, 0 elsewhere and at ignored positions): one scatter,
    # no int64 one-hot to multiply and cast
    hot = torch.zeros((*targets.shape, classes), dtype=error.dtype, device=error.device)
    if every:
        hot.scatter_(-1, targets.unsqueeze(-1), 1.0)
    else:
        keep = targets != IGNORE_INDEX if keep is None else keep
        hot.scatter_(-1, torch.where(keep, targets, 0).unsqueeze(-1), keep.unsqueeze(-1).to(error.dtype))
    return hot if hot.shape == error.shape else hot.reshape(error.shape)


def _to(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the call where it would return ``t`` (a step's hot path)."""
    return t if t.dtype == dtype else t.to(dtype)


def labels_counted(targets: Tensor | None, error: Tensor, kept: int | None = None) -> int:
    """What a mean loss averages over: the step's class labels other than IGNORE_INDEX (as
    PyTorch's cross-entropy does; ``kept``: their number where already counted), else one per
    sample, or per position of a sequence's e (N, T, K)."""
    if targets is not None and not targets.is_floating_point():
        return max(int(torch.count_nonzero(targets != IGNORE_INDEX)) if kept is None else kept, 1)
    return math.prod(error.shape[:-1]) if error.dim() == 3 else error.shape[0]


def project(source: Tensor, b: Tensor, x_shape: tuple[int, ...], dtype: torch.dtype, *,
            op: str) -> Tensor:
    """The gradient a layer input of ``x_shape`` receives from ``source`` (N, *e), the rule's
    function of e: ``s B^T`` position by position (B of shape (D, E), a linear op whose input
    shares e's positions), the projection of the sample's mean ``s`` at every position (the
    positions differ), or ``s.flatten(1) B^T`` on the whole per-sample map (B of shape
    (*input, *e))."""
    # (F.linear(s, b) is s @ b.T: the same matmul, without a transpose op of its own)
    x_shape = tuple(x_shape)
    if b.dim() == 2 and b.shape[0] == x_shape[-1] and op == "linear":
        if tuple(source.shape[:-1]) == x_shape[:-1]:
            return _to(F.linear(_to(source, b.dtype), b), dtype)  # position by position
        # the input's positions are not the error's: every position receives the projection of
        # the sample's (mean) error
        axis = batch_axis(x_shape, tuple(source.shape))
        if axis is None:
            raise RuntimeError(f"DFA: an error of shape {tuple(source.shape)} cannot feed an input "
                               f"of shape {x_shape}")
        if source.dim() > 2:
            others = [d for d in range(source.dim() - 1) if d != axis]
            source = source.mean(dim=others)  # (N, E)
        g = F.linear(_to(source, b.dtype), b)  # (N, D)
        view = [1] * len(x_shape)
        view[axis], view[-1] = g.shape[0], g.shape[-1]
        return _to(g.reshape(view).expand(x_shape), dtype)
    if source.shape[0] != x_shape[0]:
        raise RuntimeError(
            f"DFA: output error has batch size {source.shape[0]} but the layer input has "
            f"{x_shape[0]}; DFA needs one output row per input sample"
        )
    b2d = b.reshape(-1, source[0].numel())  # (in_numel, e_numel)
    return _to(F.linear(_to(source.reshape(source.shape[0], -1), b2d.dtype), b2d).view(x_shape), dtype)


def feedback_rows(x: Tensor, error: Tensor, feedback_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The (layer input, error) pairs of rows a trained B_i learns from: one row a position
    (token-wise), a sample (positions summed against the sample's mean error), or a sample's
    whole map."""
    d = feedback_shape[0] if len(feedback_shape) == 2 else None
    if d is not None and x.shape[-1] == d and (x.dim() > 2 or error.dim() > 2):
        if tuple(x.shape[:-1]) == tuple(error.shape[:-1]):
            return x.reshape(-1, d), error.reshape(-1, error.shape[-1])
        axis = batch_axis(tuple(x.shape), tuple(error.shape))
        h = x.sum(dim=[a for a in range(x.dim() - 1) if a != axis])  # (N, D)
        others = [a for a in range(error.dim() - 1) if a != axis]
        return h, error if error.dim() == 2 else error.mean(dim=others)
    return x.reshape(x.shape[0], -1), error.reshape(error.shape[0], -1)
