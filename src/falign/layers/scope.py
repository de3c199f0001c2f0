"""Scoped looks into a model: what its submodules compute, in the mode an analysis needs, with
every hook removed and every flag restored on exit, also on error.

* :func:`capture` -- forward hooks that keep named submodules' outputs (and, on request, their
  inputs) for the passes made inside the ``with``; the one hook site every analysis uses;
* :func:`eval_mode` -- every module in eval mode, each module's own flag restored afterwards.

Model: captum's hooks, removed in ``finally`` (``_utils/gradient.py``), and its hook-removal
test; falign's is ``tests/test_scope.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

__all__ = ["Captured", "capture", "eval_mode"]

#: suffix of a captured input's key (``name + INPUT``)
INPUT = "\x00in"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in eval mode inside the ``with``; each module's own
    train/eval flag restored on exit (a model with a frozen eval-mode part keeps it)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


class Captured(dict):
    """name -> the tensor a captured submodule produced in the current pass (its input under
    ``name + INPUT``).  ``clear()`` between passes; a submodule that runs twice in one pass is an
    error (its representation would be ambiguous)."""


def _submodules(model: nn.Module, names: Sequence[str], what: str) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        known = ", ".join(repr(k) for k in list(modules)[:20])
        raise ValueError(f"no submodule named {missing} in {type(model).__name__}; "
                         f"known names include {known}")
    return {n: modules[n] for n in dict.fromkeys(names)}


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str] | dict[str, nn.Module], *, what: str = "analysis",
            clone: bool = True, leaf: bool = False, inputs: bool = False,
            retain_grad: bool = False, once: bool = True) -> Iterator[Captured]:
    """Keep the outputs of the submodules ``names`` (qualified names, or a name -> module map)
    for each forward pass made inside the ``with``.

    * ``clone`` -- keep a detached copy (a later in-place op cannot alter it);
    * ``leaf`` -- hand the rest of the network a copy of the output made from a fresh leaf that
      requires a gradient and keep that leaf: after a backward its ``.grad`` is the gradient at
      the output, and the backward stops there (Grad-CAM);
    * ``retain_grad`` -- keep an identity view of the output (and with ``inputs``, of the
      input) that retains its gradient, handed on in the output's place: after a backward its
      ``.grad`` is what reached that tensor from this submodule's side alone (a skip
      connection's share is not mixed in); only where a gradient is being recorded;
    * ``inputs`` -- also keep each submodule's first input, under ``name + INPUT``;
    * ``once`` -- a submodule that runs twice before the store is cleared is an error; with
      ``once=False`` the last run is kept (a layer shared by two places of a network).

    ``what`` names the analysis in error messages.  Hooks are removed on exit, also on error.
    """
    modules = names if isinstance(names, dict) else _submodules(model, names, what)
    store = Captured()
    handles = []

    def keep(key: str, value: Tensor) -> None:
        if once and key in store:
            raise RuntimeError(f"layer {key.removesuffix(INPUT)!r} ran more than once in one forward pass; "
                               f"its {what} is ambiguous")
        store[key] = value

    def make(name: str):
        def pre(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0] if args else None
            if not isinstance(x, Tensor):
                return None
            if retain_grad:
                if not (x.requires_grad and _recording()):
                    return None
                v = x.view_as(x)
                v.retain_grad()
                keep(name + INPUT, v)
                return (v, *args[1:])
            keep(name + INPUT, x.detach().clone() if clone else x.detach())
            return None

        def post(module: nn.Module, args: tuple, output: object) -> object:
            if not isinstance(output, Tensor):
                if retain_grad:
                    return None
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, "
                                f"{what} needs a Tensor output")
            if retain_grad:
                if not (output.requires_grad and _recording()):
                    return None
                out = output.view_as(output)
                out.retain_grad()
                keep(name, out)
                return out
            if leaf:
                kept = output.detach().requires_grad_(True)
                keep(name, kept)
                return kept.clone()
            keep(name, output.detach().clone() if clone else output.detach())
            return None

        return pre, post

    try:
        for name, module in modules.items():
            pre, post = make(name)
            if inputs:
                handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        yield store
    finally:
        for h in handles:
            h.remove()


def _recording() -> bool:
    import torch

    return torch.is_grad_enabled()
