"""Which code made a number: the git commit of the checkout falign runs from."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["git_commit"]


@functools.cache
def git_commit() -> dict[str, Any] | None:
    """The commit of the source checkout falign runs from, and whether it had local changes
    (None when falign is not run from a git checkout, e.g. installed from a wheel).  Read once
    per process."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
