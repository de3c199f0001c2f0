"""One command per published result: ``falign reproduce NAME [--scale smoke|full]``.

Each target trains what the paper trained (through ``compare`` / ``sweep``, so every run is
resumable), runs the paper's analyses, prints the measured numbers beside the published ones,
and ends with ``falign report``'s HTML page.  ``smoke`` runs the whole pipeline on small subsets
for a few epochs (minutes on a 2-core CPU; CI runs it); ``full`` follows the published protocol.
"""

from .targets import TARGETS, ReproduceError, reproduce

__all__ = ["TARGETS", "ReproduceError", "reproduce"]
