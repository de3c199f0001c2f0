"""Analyses of trained networks: tensors and dataclasses out, no files, no figures.

Each is a function (or an object) with one verb that returns a dataclass: alignment with
backprop (:func:`measure_alignment`, and :class:`StepProbe` on a training step), linear CKA
(:func:`linear_cka`, :func:`cka_matrix`, :func:`cka_subsets`), Grad-CAM
(:func:`channel_importance`, :func:`exemplars`) and the classification report
(:func:`classification_report`); several models' results side by side are the dataclasses of
:mod:`falign.analysis.compared`.  The submodules hold the helpers.
"""

import importlib as _importlib

#: public name -> the submodule that defines it; imported on first use, so that the training
#: loop, which needs only the alignment probe, does not import CKA and Grad-CAM
_HOMES = {
    "LayerAlignment": "alignment", "Probe": "alignment", "StepProbe": "alignment",
    "measure_alignment": "alignment",
    "CKAResult": "cka", "cka_matrix": "cka", "cka_subsets": "cka", "linear_cka": "cka",
    "ClassificationReport": "classification", "classification_report": "classification",
    "ChannelRanking": "gradcam", "ExemplarSet": "gradcam", "channel_importance": "gradcam",
    "exemplars": "gradcam",
    "CKAComparison": "compared", "ConfusionResults": "compared", "ExemplarComparison": "compared",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(_importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_HOMES))


__all__ = [
    "CKAComparison",
    "CKAResult",
    "ChannelRanking",
    "ClassificationReport",
    "ConfusionResults",
    "ExemplarComparison",
    "ExemplarSet",
    "LayerAlignment",
    "Probe",
    "StepProbe",
    "channel_importance",
    "cka_matrix",
    "cka_subsets",
    "classification_report",
    "exemplars",
    "linear_cka",
    "measure_alignment",
]
