"""A Keras-style text summary of a model: layers in call order, output shapes, parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers.scope import eval_mode

__all__ = ["SummaryMixin", "model_summary"]


def _shape(output: object) -> str:
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        return "-"
    return "(" + ", ".join(["N", *(str(d) for d in output.shape[1:])]) + ")"


def model_summary(model: nn.Module, in_shape: Sequence[int] | None = None) -> str:
    """Table of the leaf modules in the order the forward pass calls them.

    Runs one forward pass on a zero batch of size 1 of shape ``(1, *in_shape)`` in eval mode
    under ``torch.no_grad()``; training flags and hooks are restored afterwards, also on error.
    ``in_shape`` defaults to ``model.in_shape``. Totals count ``model.parameters()`` once each.
    """
    if in_shape is None:
        in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise ValueError("model_summary needs in_shape (the model has no in_shape attribute)")

    rows: list[tuple[str, str, str, int]] = []
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]

    def hook_for(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            params = sum(p.numel() for p in module.parameters())
            rows.append((name or "(model)", type(module).__name__, _shape(output), params))

        return hook

    first = next(model.parameters(), None)
    x = torch.zeros(
        (1, *in_shape),
        device=first.device if first is not None else None,
        dtype=first.dtype if first is not None else None,
    )
    handles = [m.register_forward_hook(hook_for(n)) for n, m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    header = ("Layer", "Type", "Output shape", "Params")
    table = [header] + [(n, t, s, f"{p:,}") for n, t, s, p in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]

    def fmt(row: Sequence[str]) -> str:
        cells = [row[i].ljust(widths[i]) for i in range(3)] + [row[3].rjust(widths[3])]
        return "  ".join(cells)

    rule = "=" * len(fmt(header))
    lines = [
        f"{type(model).__name__} (input ({', '.join(['N', *map(str, in_shape)])}))",
        fmt(header),
        rule,
        *(fmt(r) for r in table[1:]),
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(lines)


class SummaryMixin:
    """Adds ``summary()`` to a model that keeps its ``in_shape``."""

    def summary(self) -> str:
        return model_summary(self, getattr(self, "in_shape", None))  # type: ignore[arg-type]
