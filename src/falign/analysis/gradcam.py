"""Grad-CAM channel importance, class maps, and top-activating exemplars of the important channels.

Grad-CAM follows Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization": for class score y_c and the activation A (N, C, H, W) of a layer,
the weight of channel k is alpha_k = mean_{H,W} dy_c/dA_k, and the map is ReLU(sum_k alpha_k A_k).
The exemplar analysis (the channels with the largest importance, then the inputs that activate
each of them most) is that of Lance & Kieu 2026.

Which gradient: through a network converted with :func:`falign.convert`, autograd returns the
learning rule's signal (B in place of W^T), not the gradient. Every function that differentiates
therefore takes ``gradient``: ``"true"`` runs inside :func:`falign.exact_backward` (the backprop
gradient of the same weights), ``"feedback"`` uses the rule's own signal, i.e. what the network
was trained with. On an unconverted model the two are the same.

Everything here returns tensors or dataclasses; nothing is written to disk. The model runs in
eval mode (the rules' state changes only with an optimizer step, so measuring leaves it alone);
every module's train/eval flag is restored and every hook removed afterwards, also on error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import exact_backward
from ..layers.scope import capture, eval_mode

__all__ = [
    "ChannelRanking",
    "ExemplarSet",
    "channel_importance",
    "exemplars",
    "gradcam_map",
    "top_activating",
    "top_channels",
]

Gradient = Literal["true", "feedback"]


# --------------------------------------------------------------------------- plumbing


def _get_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(layer, names, n=5, cutoff=0.4) or names[:10]
    raise ValueError(
        f"no submodule named {layer!r} in {type(model).__name__}; nearby names: "
        + ", ".join(repr(n) for n in near)
    )


def _check_gradient(gradient: str) -> None:
    if gradient not in ("true", "feedback"):
        raise ValueError(f"gradient must be 'true' or 'feedback', got {gradient!r}")


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _targets(target: Tensor | int | None, n: int) -> Tensor | None:
    """None (predicted class), or an int64 (n,) tensor on the CPU."""
    if target is None:
        return None
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    target = torch.as_tensor(target).detach().cpu().long().reshape(-1)
    if target.numel() == 1 and n != 1:
        target = target.expand(n)
    if target.shape[0] != n:
        raise ValueError(f"target holds {target.shape[0]} classes for {n} examples")
    return target


def _select(out: Tensor, target: Tensor | None) -> Tensor:
    """(n, classes) scores -> target classes (n,) on the output's device; predicted if None."""
    if out.dim() != 2:
        raise ValueError(f"Grad-CAM needs class scores (n, classes); the model returned {tuple(out.shape)}")
    if target is None:
        return out.detach().argmax(1)
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= out.shape[1]):
        raise ValueError(f"target classes must lie in [0, {out.shape[1]}), got {target.tolist()}")
    return target.to(out.device)


@contextmanager
def _measuring(model: nn.Module, gradient: Gradient | None) -> Iterator[None]:
    """Eval mode, and true backprop if ``gradient == "true"``; all restored."""
    with ExitStack() as stack:
        if gradient == "true":
            stack.enter_context(exact_backward(model))
        stack.enter_context(eval_mode(model))
        yield


def _activation_and_gradient(
    model: nn.Module, module: nn.Module, layer: str, x: Tensor, target: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One forward and one backward: the layer's output A and dy_target/dA, both (n, C, ...).

    The hook hands the rest of the network a copy of A whose source is a fresh leaf, so the
    backward stops at the layer (nothing below it runs) and an in-place op after the layer
    (``ReLU(inplace=True)``) cannot alter the A we keep. Layers above the hook see an input that
    needs a gradient, exactly as in training, so a converted layer sends its rule's signal.
    """
    with capture(model, {layer: module}, what="Grad-CAM", leaf=True) as captured, torch.enable_grad():
        out = model(x)
    if layer not in captured:
        raise RuntimeError(f"layer {layer!r} did not run in the forward pass")
    act = captured[layer]
    if act.dim() < 2:
        raise ValueError(f"layer {layer!r} output {tuple(act.shape)} has no channel dimension")
    classes = _select(out, target)
    with torch.enable_grad():
        score = out.gather(1, classes[:, None]).sum()  # examples are independent in eval mode
        (grad,) = torch.autograd.grad(score, act, allow_unused=True)
    if grad is None:
        raise RuntimeError(f"the model output does not depend on layer {layer!r}")
    return act.detach(), grad


# --------------------------------------------------------------------------- Grad-CAM


def channel_importance(
    model: nn.Module,
    layer: str,
    x: Tensor,
    target: Tensor | int | None = None,
    *,
    gradient: Gradient = "true",
    batch_size: int = 256,
) -> Tensor:
    """Grad-CAM channel weights alpha_k = mean_{H,W} dy_c/dA_k, per example: (N, C) on the CPU.

    ``target`` is the class c of each example: a tensor (N,) (e.g. the labels), one int for all,
    or None for the predicted class. ``gradient="true"`` differentiates by backprop (inside
    :func:`falign.exact_backward`); ``"feedback"`` uses the rule's signal that trained the network.
    A layer with output (N, C) gives alpha = dy_c/dA itself.

    Implemented with a forward hook and ``torch.autograd.grad`` rather than captum: captum's
    public ``LayerGradCam`` returns the map, with the channels summed away (with
    ``attr_dim_summation=False`` it returns alpha_k * A_k, and dividing by A fails wherever a ReLU
    made A zero), and the function that exposes the layer gradient lives in captum's private
    ``_utils``. The hook also stops the backward at the layer. :func:`gradcam_map` uses captum's
    ``LayerGradCam``, and the tests check the two agree.
    """
    _check_gradient(gradient)
    module = _get_layer(model, layer)
    targets = _targets(target, x.shape[0])
    device = _model_device(model)
    parts: list[Tensor] = []
    with _measuring(model, gradient):
        for s in _chunks(x.shape[0], batch_size):
            _, grad = _activation_and_gradient(
                model, module, layer, x[s].to(device), None if targets is None else targets[s]
            )
            parts.append(grad.flatten(2).mean(2).cpu() if grad.dim() > 2 else grad.cpu())  # (n, C)
    if not parts:
        raise ValueError("no inputs were given")
    return torch.cat(parts)


def gradcam_map(
    model: nn.Module,
    layer: str,
    x: Tensor,
    target: Tensor | int | None,
    *,
    gradient: Gradient = "true",
    relu: bool = True,
    upsample_to: int | tuple[int, int] | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Grad-CAM map ReLU(sum_k alpha_k A_k) of a layer with output (N, C, H, W): (N, H, W) on the CPU.

    ``target`` and ``gradient`` as in :func:`channel_importance`. ``relu=False`` keeps the
    negative evidence. ``upsample_to`` resizes the map (after the ReLU, bilinear) to the input
    size, for overlays. Computed by ``captum.attr.LayerGradCam`` (captum is an optional
    dependency, imported here), which is exactly the paper's map.
    """
    from captum.attr import LayerGradCam

    _check_gradient(gradient)
    module = _get_layer(model, layer)
    targets = _targets(target, x.shape[0])
    device = _model_device(model)
    cam = LayerGradCam(model, module)
    parts: list[Tensor] = []
    with _measuring(model, gradient):
        for s in _chunks(x.shape[0], batch_size):
            xb = x[s].to(device)
            if targets is None:
                with torch.no_grad():
                    tb = _select(model(xb), None)
            else:
                tb = targets[s].to(device)
            maps = cam.attribute(xb, target=tb, relu_attributions=relu)  # (n, 1, H, W)
            if maps.dim() != 4:
                raise ValueError(
                    f"gradcam_map needs a layer with output (N, C, H, W); {layer!r} gave a map of "
                    f"shape {tuple(maps.shape)}"
                )
            if upsample_to is not None:
                maps = F.interpolate(maps, size=upsample_to, mode="bilinear", align_corners=False)
            parts.append(maps[:, 0].detach().cpu())
    if not parts:
        raise ValueError("no inputs were given")
    return torch.cat(parts)


@dataclass
class ChannelRanking:
    """Per class, the channels with the largest mean Grad-CAM importance over its examples.

    ``mean_importance[c]`` is the mean of alpha over the examples of class c (NaN for a class with
    none); ``per_class[c]`` holds its top-k channel ids, most important first.
    """

    layer: str
    method: str
    per_class: dict[int, list[int]]
    mean_importance: Tensor  # (num_classes, C)


def _label(label: str, gradient: str) -> str:
    return label or f"Grad-CAM ({gradient} gradient)"


def _check_k(k: int, available: int, what: str) -> None:
    if not 1 <= k <= available:
        raise ValueError(f"{what} must lie in [1, {available}], got {k}")


def top_channels(
    model: nn.Module,
    layer: str,
    x: Tensor,
    y: Tensor,
    *,
    k: int = 5,
    gradient: Gradient = "true",
    label: str = "",
    batch_size: int = 256,
) -> ChannelRanking:
    """Top-k channels of ``layer`` for each class of ``y``, by mean signed importance (Grad-CAM for
    the true class y of each example). ``num_classes`` is ``y.max() + 1``; ``label`` names the
    method (default: the gradient used)."""
    y = torch.as_tensor(y).detach().cpu().long().reshape(-1)
    importance = channel_importance(model, layer, x, y, gradient=gradient, batch_size=batch_size)
    _check_k(k, importance.shape[1], "k")
    num_classes = int(y.max()) + 1
    mean = torch.full((num_classes, importance.shape[1]), float("nan"), dtype=importance.dtype)
    per_class: dict[int, list[int]] = {}
    for c in y.unique().tolist():
        mean[c] = importance[y == c].mean(0)
        per_class[c] = mean[c].topk(k).indices.tolist()
    return ChannelRanking(layer, _label(label, gradient), per_class, mean)


# --------------------------------------------------------------------------- exemplars


def top_activating(
    model: nn.Module, layer: str, x: Tensor, channels: list[int], *, n: int = 9, batch_size: int = 256
) -> dict[int, Tensor]:
    """For each channel, the indices into ``x`` of the n inputs with the largest mean activation
    of that channel (mean over the spatial positions of the layer's output), largest first.

    The activation is the layer's own output (an in-place op after it does not alter it). Eval
    mode, no gradient.
    """
    module = _get_layer(model, layer)
    _check_k(n, x.shape[0], "n")
    device = _model_device(model)
    parts: list[Tensor] = []
    with _measuring(model, None), capture(model, {layer: module}, what="exemplars") as store, \
            torch.no_grad():
        for s in _chunks(x.shape[0], batch_size):
            store.clear()
            model(x[s].to(device))
            if layer not in store:
                raise RuntimeError(f"layer {layer!r} did not run in the forward pass")
            act = store[layer]
            if act.dim() < 2:
                raise TypeError(f"layer {layer!r} must return a Tensor (N, C, ...), got {tuple(act.shape)}")
            parts.append((act.flatten(2).mean(2) if act.dim() > 2 else act).cpu())  # (n, C)
    acts = torch.cat(parts)  # (N, C)
    bad = [c for c in channels if not 0 <= c < acts.shape[1]]
    if bad:
        raise ValueError(f"channels {bad} out of range for layer {layer!r} with {acts.shape[1]} channels")
    return {int(c): acts[:, c].topk(n).indices for c in channels}


@dataclass
class ExemplarSet:
    """The most important channels of a layer and, per channel, its top-activating inputs.

    ``channels`` is ordered by importance; ``indices[c]`` (n,) indexes the inputs and
    ``images[c]`` (n, ...) holds them (on the CPU), most activating first.
    """

    layer: str
    method: str
    channels: list[int]
    indices: dict[int, Tensor]
    images: dict[int, Tensor]


def exemplars(
    model: nn.Module,
    layer: str,
    x: Tensor,
    y: Tensor | None,
    *,
    k: int = 5,
    n: int = 9,
    gradient: Gradient = "true",
    label: str = "",
    batch_size: int = 256,
) -> ExemplarSet:
    """The k channels with the largest mean |Grad-CAM importance| over all examples (for class y,
    or the predicted class if y is None), then the n inputs that activate each most."""
    importance = channel_importance(model, layer, x, y, gradient=gradient, batch_size=batch_size)
    _check_k(k, importance.shape[1], "k")
    channels = importance.abs().mean(0).topk(k).indices.tolist()
    indices = top_activating(model, layer, x, channels, n=n, batch_size=batch_size)
    images = {c: x[idx.to(x.device)].detach().cpu() for c, idx in indices.items()}
    return ExemplarSet(layer, _label(label, gradient), channels, indices, images)
