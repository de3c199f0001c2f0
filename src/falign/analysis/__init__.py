"""Analyses of trained networks: tensors and dataclasses out, no files, no figures.

Each is a function (or an object) with one verb that returns a dataclass: alignment with
backprop (:func:`measure_alignment`, and :class:`StepProbe` on a training step), linear CKA
(:func:`linear_cka`, :func:`cka_matrix`, :func:`cka_subsets`), Grad-CAM
(:func:`channel_importance`, :func:`exemplars`) and the classification report
(:func:`classification_report`).  The submodules hold the helpers.
"""

from .alignment import LayerAlignment, StepProbe, measure_alignment
from .cka import CKAResult, cka_matrix, cka_subsets, linear_cka
from .classification import ClassificationReport, classification_report
from .gradcam import ChannelRanking, ExemplarSet, channel_importance, exemplars

__all__ = [
    "CKAResult",
    "ChannelRanking",
    "ClassificationReport",
    "ExemplarSet",
    "LayerAlignment",
    "StepProbe",
    "channel_importance",
    "cka_matrix",
    "cka_subsets",
    "classification_report",
    "exemplars",
    "linear_cka",
    "measure_alignment",
]
