"""The dataset registry: one name -> one loader, and `load_dataset`, the one factory."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..registry import Registry
from .cifar import load_cifar10, load_cifar10_jpeg
from .core import Dataset, DatasetError, Loaded, Split, data_root
from .fetch import REMOTES, fetch_dataset
from .folder import load_imagefolder
from .idx import load_fashion_mnist, load_mnist
from .text import load_text
from .transforms import ToFloat

__all__ = ["available_datasets", "dataset_options", "download", "load_dataset"]


def load_xor(root: Path) -> Loaded:
    """The four XOR points as a 2-class problem; train, val and test are the same four."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (4, 2) float32
    y = torch.tensor([0, 1, 1, 0])
    split = Split(x, y, torch.arange(4))
    return Loaded(
        title="XOR",
        train=split,
        val=split,
        test=split,
        classes=["0", "1"],
        input_shape=(2,),
        train_transform=ToFloat(),
        eval_transform=ToFloat(),
    )


_REGISTRY: Registry = Registry("dataset", DatasetError, {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar10-jpeg": load_cifar10_jpeg,
    "imagefolder": load_imagefolder,
    "text": load_text,
    "xor": load_xor,
})


def register_dataset(name: str) -> Callable[[Callable[..., Loaded]], Callable[..., Loaded]]:
    """Decorator: register a dataset loader under ``name`` (lower case, words joined by "-"), so
    configs and ``load_dataset`` find it.  The loader takes the data folder ``root`` and its own
    options (``data.options``) as keyword arguments and returns a :class:`Loaded`; a name taken
    by another loader is an error."""
    key = name.strip().lower().replace("_", "-")
    return _REGISTRY.decorator(key)


def available_datasets() -> list[str]:
    """Names `load_dataset` accepts."""
    return sorted(_REGISTRY)


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key in _REGISTRY:
        return key
    close = difflib.get_close_matches(key, list(_REGISTRY), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DatasetError(
        f"unknown dataset {name!r}; {hint}available: {', '.join(available_datasets())}"
    )


def dataset_options(name: str) -> list[str]:
    """The options (``data.options``) dataset ``name`` takes, e.g. ``pad_to`` for MNIST."""
    return [p for p in inspect.signature(_REGISTRY[_canonical(name)]).parameters if p != "root"]


def _check_options(key: str, options: dict) -> None:
    accepted = dataset_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        have = ", ".join(accepted) if accepted else "none"
        raise DatasetError(
            f"dataset {key!r} has no option {', '.join(map(repr, unknown))}; its options: {have}"
        )


def _indexed(split: Split) -> Split:
    return split if split.index is not None else Split(split.x, split.y, torch.arange(len(split)))


def _permutation(n: int, seed: int) -> torch.Tensor:
    # numpy's PCG64 stream, so a split depends on the seed alone, not on the torch version
    return torch.from_numpy(np.random.default_rng(seed).permutation(n))


def _hold_out(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    perm = _permutation(len(train), seed)
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    return train.take(train_idx), train.take(val_idx)


def _subset(split: Split, n: int, seed: int) -> Split:
    if n >= len(split):
        return split
    return split.take(_permutation(len(split), seed)[:n].sort().values)


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    download: bool = False,
    val_size: int | None = None,
    split_seed: int = 42,
    subset: int | None = None,
    **options,
) -> Dataset:
    """Load dataset ``name`` (see `available_datasets`) onto ``device``, whole (a streamed
    ``imagefolder`` keeps its images in their files: its splits' x are `LazyImages`, decoded
    batch by batch onto ``device``).

    ``root`` is the data folder (default: `data_root`). ``download`` fetches missing files
    first (checksummed). ``val_size`` samples of the training set are held out as ``val`` by a
    permutation seeded with ``split_seed`` (default 5000 for MNIST, Fashion-MNIST and CIFAR-10;
    0 gives ``val=None``). ``subset=n`` then keeps n samples of each split (the first n of a
    permutation seeded with ``split_seed``, in stored order) for quick tests. ``options`` go to
    the dataset's loader (e.g. ``pad_to=32`` for MNIST, ``crop=None`` for CIFAR-10).

    Every sample keeps its order of the source files; ``Split.index`` maps it back.
    """
    key = _canonical(name)
    loader = _REGISTRY[key]
    _check_options(key, options)
    if subset is not None and subset < 1:
        raise DatasetError(f"subset must be a positive number of samples, got {subset}")
    root_path = data_root(root)
    if download and key in REMOTES:
        fetch_dataset(key, root_path)
    raw = loader(root_path, **options)

    train, val, test = _indexed(raw.train), raw.val, _indexed(raw.test)
    if val is not None:
        if val_size is not None:
            raise DatasetError(
                f"{raw.title} has its own validation split; leave val_size unset (got {val_size})"
            )
        val = _indexed(val)
    else:
        size = raw.default_val_size if val_size is None else val_size
        if not 0 <= size < len(train):
            raise DatasetError(
                f"val_size={size} must be >= 0 and smaller than the {len(train)} training "
                f"samples of {raw.title}"
            )
        if size:
            train, val = _hold_out(train, size, split_seed)
    if subset is not None:
        train, test = _subset(train, subset, split_seed), _subset(test, subset, split_seed)
        val = None if val is None else _subset(val, subset, split_seed)

    sizes = f"{len(train)}/{0 if val is None else len(val)}/{len(test)}"
    return Dataset(
        name=key,
        train=train.to(device),
        val=None if val is None else val.to(device),
        test=test.to(device),
        num_classes=len(raw.classes),
        input_shape=tuple(raw.input_shape),
        train_transform=raw.train_transform,
        eval_transform=raw.eval_transform,
        description=f"{raw.title}, {sizes}",
        classes=list(raw.classes),
    )


def download(
    name: str, root: str | os.PathLike[str] | None = None, *, base_url: str | None = None
) -> list[Path]:
    """Fetch the files of dataset ``name`` into ``root`` (default `data_root`) unless present.

    Official locations unless ``base_url`` or ``$FALIGN_DATA_MIRROR`` names a mirror laid out
    like a data folder. Each file is MD5-checked before it is moved into place. Returns the
    dataset's file paths. xor needs no files; imagefolder reads your own.
    """
    key = _canonical(name)
    if key == "imagefolder":
        raise DatasetError("imagefolder reads your own image folder; there is nothing to download")
    if key not in REMOTES:
        return []
    return fetch_dataset(key, data_root(root), base_url)
