"""One command per published result: ``falign reproduce NAME [--scale smoke|full]``.

Each target trains what the paper trained (through ``compare`` / ``sweep``, so every run is
resumable), runs the paper's analyses, prints the measured numbers beside the published ones,
and ends with ``falign report``'s HTML page and a machine-readable ``results.json``.  ``smoke``
runs the whole pipeline on small subsets for a few epochs (minutes on a 2-core CPU; CI runs
it); ``full`` follows the published protocol.  A new target is a function registered with
:func:`falign.reproduce.base.register_target`.
"""

from . import guide, hardware_feedback, sequence, targets, weight_transport  # noqa: F401  (each registers its targets)
from .base import TARGETS, ReproduceError, register_target
from .runner import reproduce

__all__ = ["TARGETS", "ReproduceError", "register_target", "reproduce"]
