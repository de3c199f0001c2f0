"""Pathways: how the error reaches a layer's input.

A pathway owns the autograd Functions that carry the error (one short Function per op kind),
its lazy feedback shapes, its wiring on the converted model (hooks) and, where it has one, a
training step of its own.  A rule picks a pathway by name (``Rule.pathway``); nothing outside
``falign.layers`` knows which pathways exist.

* ``exact`` -- the plain torch op and autograd's own backward (backprop).
* ``kernel`` -- B of W's shape in W's place (``g @ B``; for convolutions B runs inside the one
  fused ``convolution_backward`` call backprop makes).
* ``dense`` -- a dense matrix from one sample's output map to its input map (convolutions).
* ``direct`` -- ``B_i e`` from the error at the network's logits (DFA), and the DFA report's
  batch- and class-averaged training loops.

A user's pathway subclasses :class:`Pathway` and is registered with :func:`register_pathway`.
"""

from . import dense as _dense  # noqa: F401  (registers)
from . import direct as _direct  # noqa: F401
from . import exact as _exact  # noqa: F401
from . import kernel as _kernel  # noqa: F401
from .base import Pathway, StepContext, get_pathway, pathway_names, register_pathway

__all__ = ["Pathway", "StepContext", "get_pathway", "pathway_names", "register_pathway"]
