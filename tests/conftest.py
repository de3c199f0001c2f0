"""Helpers shared by the test modules: where the real data sets are, a fixture that needs MNIST,
one intra-op thread, and a tiny experiment config.

Nothing here is autouse: a module opts in, e.g. ``pytestmark = pytest.mark.usefixtures("one_thread")``.
Modules import the plain helpers with ``from conftest import DATA, ...`` (``tests/`` is on
``sys.path`` under pytest's default import mode, as it holds no ``__init__.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def data_dir() -> Path:
    """``$FALIGN_DATA``, else ``shared/data`` next to the repository checkout."""
    env = os.environ.get("FALIGN_DATA")
    # absolute: tests link files from here into temporary folders and run from other folders
    return Path(env).resolve() if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


DATA = data_dir()
# the four MNIST / Fashion-MNIST IDX files, without the .gz
IDX_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
# One intra-op thread per process: tiny runs gain nothing from more, and on a shared machine
# idle OpenMP workers spin; the runs compared with each other all use the same setting.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mnist_or_skip() -> Path:
    """DATA, or skip the calling test when the real MNIST IDX files are not there."""
    if not any((DATA / "mnist").glob("train-images-idx3-ubyte*")):
        pytest.skip(f"real MNIST IDX files not found under {DATA} (set FALIGN_DATA)")
    return DATA


@pytest.fixture(scope="module")
def data_root() -> Iterator[Path]:
    """DATA with the real MNIST files in it (else skip), and FALIGN_DATA set to it for the module."""
    root = mnist_or_skip()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FALIGN_DATA", str(root))
        yield root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the module, restored afterwards.

    The tensors and runs in the tests are tiny: more threads only add spin-wait overhead on a busy
    machine.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(**sections) -> dict:
    """A 1-epoch fa run of a 784-32-10 MLP on 600 MNIST images, batch 50, as a config dict.

    Each keyword replaces a top-level entry: a dict is merged into that section (a new section
    is added), anything else replaces the entry, e.g. ``tiny_config(train={"epochs": 2})``.
    """
    cfg = {
        "name": "tiny", "seed": 0, "device": "cpu",
        "data": {"name": "mnist", "subset": 600, "val_size": 200},
        "model": {"name": "mlp", "options": {"sizes": [784, 32, 10]}},
        "rule": {"name": "fa"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "batch_size": 50},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg
