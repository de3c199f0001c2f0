"""How well a rule's updates and signals align with backprop's, layer by layer.

The measures themselves are layer-level (``falign.layers.alignment``, which the training loop
uses for ``train.alignment_every``); this is their public home.  See that module for the
definitions: update angle, signal angle, B-W angle, norm ratio, sign concordance of B with W
and of the update with the true gradient.
"""

from ..layers.alignment import (
    LayerAlignment,
    StepProbe,
    angle,
    capture_inputs,
    compare,
    measure_alignment,
    preserved_buffers,
    sign_agreement,
)

__all__ = ["LayerAlignment", "StepProbe", "angle", "capture_inputs", "compare", "measure_alignment",
           "preserved_buffers", "sign_agreement"]
