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

Every module of this package except ``base`` and private ones (``_ops``, ``_formulas``)
defines and registers a pathway; they are all imported here, so adding a pathway to falign is
adding one file.  A user's pathway subclasses :class:`Pathway` and is registered with
:func:`register_pathway`, or is named by import path (``rule.pathway =
"mypkg.feedback:MyPathway"``, imported and registered on first use).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import Pathway, PathwayError, StepContext, get_pathway, pathway_names, register_pathway

for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Pathway", "PathwayError", "StepContext", "get_pathway", "pathway_names", "register_pathway"]
