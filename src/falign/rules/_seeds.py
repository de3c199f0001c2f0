"""Seeds derived from text: every seed falign draws a B, a mask or a noise stream from is the
first 63 bits of the SHA-256 of a string naming what it is for (the user's seed, the layer, the
key), so it is the same on every machine, process and torch version."""

from __future__ import annotations

import hashlib


def text_seed(text: str) -> int:
    """A non-negative 63-bit seed from ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
