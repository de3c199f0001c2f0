"""What the callbacks share: the labels a mean loss counts, the probe's records as flat
metrics, the processes a measure sums over."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from ..analysis.alignment import LayerAlignment
from ..layers.pathways.direct import IGNORE_INDEX

#: the measures the callbacks log by default (any field of ``LayerAlignment`` may be asked for)
MEASURES = ("update_angle", "signal_angle", "delta_angle", "feedback_angle", "norm_ratio")


def label_count(targets: Tensor) -> int:
    """The labels a mean loss over ``targets`` averages: class indices other than -100 (one a
    sample or one a position), or one a sample (position) of float targets (N, ..., K).  At
    least 1."""
    if targets.is_floating_point():
        n = math.prod(targets.shape[:-1]) if targets.dim() > 1 else targets.shape[0]
    else:
        n = int((targets != IGNORE_INDEX).sum())
    return max(n, 1)


def check_measures(measures: Sequence[str]) -> tuple[str, ...]:
    known = tuple(LayerAlignment.__dataclass_fields__)
    unknown = [m for m in measures if m not in known]
    if unknown:
        raise ValueError(f"unknown alignment measure(s) {unknown}; known: {', '.join(known)}")
    return tuple(measures)


def as_metrics(stats: dict[str, LayerAlignment], measures: Sequence[str], prefix: str,
               strip: str = "") -> dict[str, float]:
    """``{prefix}/{layer}/{measure}``: each layer's measures that exist (a DFA layer has no B-W
    angle), the layer named without the leading ``strip``."""
    out = {}
    for name, record in stats.items():
        layer = name[len(strip):] if strip and name.startswith(strip) else name
        for m in measures:
            value = getattr(record, m)
            if value is not None:
                out[f"{prefix}/{layer}/{m}"] = float(value)
    return out


def processes() -> tuple[int, Callable[[Tensor], Tensor]]:
    """(number of processes, a sum over them) of the default process group; (1, identity)
    without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1, lambda t: t

    def reduce(t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    return dist.get_world_size(), reduce


def scale_of(scaler) -> float:
    """The factor a GradScaler multiplies the loss by now (1 without one, or disabled)."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())
