"""The containers every loader fills, the batch iterator, and the file-system helpers they share.

A dataset is held whole in memory on the training device, compactly (uint8 images), and is
turned into float batches by a `BatchTransform` that runs on that device, one call per batch.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import torch
from torch import Tensor

__all__ = [
    "BatchTransform",
    "Dataset",
    "DatasetError",
    "Split",
    "batches",
    "cache_dir",
    "data_root",
]


class DatasetError(Exception):
    """A dataset cannot be found, read, fetched or configured.

    ``str(e)`` is one line saying what went wrong and where (file, directory, expected files),
    so a command-line front end can print it as is.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


class BatchTransform(Protocol):
    """``transform(x, generator)``: a stored batch in, a float batch on ``x.device`` out.

    Random transforms draw from ``generator`` (on any device) or, when it is None, from the
    default generator of ``x.device``. Deterministic transforms ignore it.
    """

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


@dataclass(repr=False)
class Split:
    """One split of a dataset, held whole.

    ``x`` is stored compactly: uint8 (N, C, H, W) for images, float32 (N, D) for toy sets.
    ``y`` is int64 (N,). ``index`` is each sample's position in the source file order
    (so train and validation indices can be compared with each other), or None.
    """

    x: Tensor
    y: Tensor
    index: Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")
        if self.index is not None and self.index.shape[0] != self.y.shape[0]:
            raise ValueError(f"index has {self.index.shape[0]} entries for {len(self)} samples")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        x = self.x
        return (
            f"Split(n={len(self)}, x={str(x.dtype).removeprefix('torch.')}{tuple(x.shape)}, "
            f"device={x.device})"
        )

    def take(self, idx: Tensor) -> Split:
        """The samples at positions ``idx`` (int64, (M,)), keeping their source indices."""
        idx = idx.to(self.x.device)
        base = self.index if self.index is not None else torch.arange(len(self), device=idx.device)
        return Split(self.x[idx], self.y[idx], base[idx])

    def to(self, device: str | torch.device) -> Split:
        index = None if self.index is None else self.index.to(device)
        return Split(self.x.to(device), self.y.to(device), index)


@dataclass(repr=False)
class Dataset:
    """A dataset ready to train on: splits on the training device plus the transforms to apply.

    ``input_shape`` is the per-sample shape *after* ``train_transform`` / ``eval_transform``
    (the shape a model sees), not the stored shape of ``train.x``.
    """

    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    train_transform: BatchTransform
    eval_transform: BatchTransform
    description: str
    classes: list[str]

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}: {self.description}, input_shape={self.input_shape})"

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every split on ``device``."""
        return Dataset(
            name=self.name,
            train=self.train.to(device),
            val=None if self.val is None else self.val.to(device),
            test=self.test.to(device),
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            train_transform=self.train_transform,
            eval_transform=self.eval_transform,
            description=self.description,
            classes=list(self.classes),
        )


def random_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where to draw random numbers: a generator only draws on its own device."""
    return generator.device if generator is not None else device


def batches(
    split: Split,
    batch_size: int,
    *,
    transform: BatchTransform | None,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(transform(x_batch, generator), y_batch)`` over one epoch of ``split``.

    With ``shuffle`` the order is a fresh permutation drawn from ``generator`` (each call is a
    new epoch); without it, contiguous slices in stored order. Every sample appears exactly once
    (the last, short batch is dropped with ``drop_last``). ``transform=None`` yields the stored x.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return _batches(split, batch_size, transform, shuffle, generator, drop_last)


def _batches(
    split: Split,
    batch_size: int,
    transform: BatchTransform | None,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(split)
    device = split.x.device
    order = None
    if shuffle:
        order = torch.randperm(
            n, generator=generator, device=random_device(generator, device)
        ).to(device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x = split.x[start : start + batch_size]
            y = split.y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            x, y = split.x[idx], split.y[idx]
        if transform is not None:
            x = transform(x, generator)
        yield x, y


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``explicit``, else ``$FALIGN_DATA``, else ``./data``; made absolute,
    so a later change of working directory (or a relative path in the variable) cannot move it."""
    if explicit is not None:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("FALIGN_DATA")
    if env:
        return Path(env).expanduser().absolute()
    return Path("data").absolute()


def cache_dir() -> Path:
    """Where decoded-image caches go (the image folders' and the CIFAR JPEG copy's), never
    beside the data: ``$FALIGN_CACHE``, else ``$XDG_CACHE_HOME/falign``, else
    ``~/.cache/falign``; made absolute, like `data_root`.
    """
    env = os.environ.get("FALIGN_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base.absolute() / "falign"


def is_writable_dir(path: Path) -> bool:
    """True if we may write in ``path``.

    Besides ``os.access``, a directory whose mode has no write bit at all counts as read-only:
    root bypasses permissions, but a shared data folder marked r-x must still be left alone.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & 0o222) and os.access(path, os.W_OK | os.X_OK)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a temporary file in the same directory and ``os.replace``.

    Readers see either the old file or the complete new one; on any error nothing is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(repr=False)
class Loaded:
    """What a registered loader returns: splits as stored, before validation split and subset.

    ``val`` is set only when the source has its own validation split (an imagefolder ``val/``,
    or xor, where it is the training set); otherwise ``load_dataset`` holds ``val_size`` samples
    of ``train`` out, ``default_val_size`` when the caller gives none.
    """

    title: str
    train: Split
    test: Split
    classes: list[str]
    input_shape: tuple[int, ...]
    train_transform: BatchTransform
    eval_transform: BatchTransform
    default_val_size: int = 0
    val: Split | None = None
