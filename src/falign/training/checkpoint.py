"""Self-describing checkpoints, written atomically, loadable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain containers:
``format`` ("falign-checkpoint"), ``version``, ``config`` (the whole experiment config),
``model_spec`` (constructor arguments: name, rule, rule options, shapes), ``model`` (state_dict,
feedback buffers included), ``optimizer``, ``scheduler`` (and, where ``optim.feedback`` gives the
trained feedback an optimizer of its own, ``feedback_optimizer`` and ``feedback_scheduler``),
``rng`` (torch CPU/CUDA, python, the data generator), ``epoch`` and, in ``last.pt``,
``tracking``: the resumable part of the run record (per-epoch metrics so far, best epoch and
accuracy, alignment records, early stop; see :meth:`falign.training.record.RunRecord.resumable`).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import FalignError
from .record import new_file_mode

FORMAT = "falign-checkpoint"
VERSION = 1


class CheckpointError(FalignError, ValueError):
    """A missing, corrupt, foreign or incompatible checkpoint; one-line message."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp makes it private
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: what a checkpoint error says falign expected
EXPECTED = "expected a checkpoint written by falign (a run's best.pt, last.pt or epoch_NNN.pt)"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # its note on a foreign pickle's protocol: the error says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load fails in many ways, in paragraphs: say what the file is
        what = _what_it_is(path, refused=isinstance(err, pickle.UnpicklingError))
        raise CheckpointError(f"{path}: not a readable checkpoint: {what}; {EXPECTED}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a falign checkpoint (a torch file without the '{FORMAT}' "
                              f"header); {EXPECTED}")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {data.get('version')} is not supported "
            f"(this falign reads version {VERSION})"
        )
    return data


def _what_it_is(path: Path, *, refused: bool) -> str:
    """What a file that torch cannot load looks like, in a few words; ``refused``: torch read
    it and refused what it holds (anything but tensors and plain containers)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"a file that cannot be read ({err.strerror})"
    if size == 0:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):  # what torch.save writes
        if refused:
            return f"a torch file of {size} bytes holding objects other than tensors and plain containers"
        return (f"a zip archive of {size} bytes that torch cannot read (cut short, or not "
                "written by torch.save)")
    if head.startswith(b"\x80"):  # a pickle's protocol opcode
        return f"a pickle of {size} bytes, not in torch.save's format"
    if all(b >= 32 or b in b"\t\n\r" for b in head):
        return f"a text file of {size} bytes"
    return f"{size} bytes in no format torch reads"


def rng_state(data_generator: torch.Generator | None) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
    }
    state["python_version"] = random.getstate()[0]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    internal = state["python"]
    random.setstate((state["python_version"], tuple(internal[:-1]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])
