"""The containers every loader fills, the batch iterator, and the file-system helpers they share.

A dataset is held whole in memory on the training device, compactly (uint8 images), and is
turned into float batches by a `BatchTransform` that runs on that device, one call per batch.
A split too large for memory holds a `LazyImages` in place of its x tensor: `batches` then
decodes each batch in `torch.utils.data.DataLoader` worker processes and transforms it on the
device exactly as a resident batch, so both give the same batches from the same files.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import FalignError

__all__ = [
    "BatchTransform",
    "Dataset",
    "DatasetError",
    "LazyImages",
    "Split",
    "batches",
    "cache_dir",
    "data_root",
    "using_data_root",
]


# (images, labels) per split of an IDX dataset; the download tables and the loader share these names
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetError(FalignError):
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
    ``rows=(start, n)``: ``x`` is rows ``start .. start + len(x)`` of a batch of ``n``; a random
    transform draws for all ``n`` samples, as for the whole batch, and applies its rows' draws
    (so the shares of several processes together are the whole batch's transform).
    """

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, *,
        rows: tuple[int, int] | None = None,
    ) -> Tensor: ...


def _workers_default() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    return min(4, cpus // 2)


class LazyImages:
    """uint8 (N, C, H, W) images not held in memory, decoded when indexed.

    Stands in for a split's x tensor: ``shape``, ``dtype``, ``device``, ``len``, ``dim()``;
    ``x[idx]`` (an int64 tensor of positions, or a slice) decodes those images into a uint8
    tensor on ``device``; ``select(idx)`` is a lazy subset; ``to(device)`` a copy that delivers
    there. A subclass implements ``load`` (decode on the CPU; it runs in `batches`' DataLoader
    worker processes, so the object must pickle) and ``select``. ``workers`` is how many
    DataLoader workers `batches` decodes with (None: ``min(4, cpus // 2)``; 0: in the main
    process).
    """

    dtype = torch.uint8

    def __init__(
        self, shape: Sequence[int], device: str | torch.device = "cpu", workers: int | None = None
    ) -> None:
        if len(shape) != 4:
            raise ValueError(f"LazyImages holds (N, C, H, W) images, got shape {tuple(shape)}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 0):  # fmt: skip
            raise DatasetError(f"workers must be a number of processes >= 0, got {workers!r}")
        self._shape = torch.Size(int(d) for d in shape)
        self._device = torch.device(device)
        self.workers = _workers_default() if workers is None else workers

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def ndim(self) -> int:
        return 4

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uint8{tuple(self.shape)}, device={self.device})"

    def positions(self, idx: Tensor | slice | Sequence[int]) -> np.ndarray:
        """``idx`` as int64 positions in [0, N), shape (M,)."""
        if isinstance(idx, slice):
            return np.arange(len(self), dtype=np.int64)[idx]
        pos = torch.as_tensor(idx).detach().to("cpu", torch.int64).reshape(-1).numpy()
        n = len(self)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"positions out of range for {n} images")
        return np.where(pos < 0, pos + n, pos)

    def __getitem__(self, idx: Tensor | slice | Sequence[int]) -> Tensor:
        return self.load(self.positions(idx)).to(self.device)

    def load(self, positions: np.ndarray) -> Tensor:
        """The images at ``positions`` (int64 (M,)), decoded: uint8 (M, C, H, W) on the CPU."""
        raise NotImplementedError

    def select(self, idx: Tensor | slice | Sequence[int]) -> LazyImages:
        """The images at ``idx``, still lazy, in that order."""
        raise NotImplementedError

    def to(self, device: str | torch.device) -> LazyImages:
        out = copy.copy(self)
        out._device = torch.device(device)
        return out


@dataclass(repr=False)
class Split:
    """One split of a dataset, held whole, or with its images left in files (a `LazyImages`).

    ``x`` is stored compactly: uint8 (N, C, H, W) for images, float32 (N, D) for toy sets.
    ``y`` is int64 (N,). ``index`` is each sample's position in the source file order
    (so train and validation indices can be compared with each other), or None.
    """

    x: Tensor | LazyImages
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
        lazy = ", streamed" if isinstance(x, LazyImages) else ""
        return (
            f"Split(n={len(self)}, x={str(x.dtype).removeprefix('torch.')}{tuple(x.shape)}, "
            f"device={x.device}{lazy})"
        )

    def take(self, idx: Tensor) -> Split:
        """The samples at positions ``idx`` (int64, (M,)), keeping their source indices."""
        idx = idx.to(self.y.device)
        base = self.index if self.index is not None else torch.arange(len(self), device=idx.device)
        x = self.x.select(idx) if isinstance(self.x, LazyImages) else self.x[idx.to(self.x.device)]
        return Split(x, self.y[idx], base[idx])

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
    part: tuple[int, int] | None = None,
) -> Iterator[tuple[Tensor, Tensor]] | Iterator[tuple[Tensor, Tensor, int]]:
    """Yield ``(transform(x_batch, generator), y_batch)`` over one epoch of ``split``.

    With ``shuffle`` the order is a fresh permutation drawn from ``generator`` (each call is a
    new epoch); without it, contiguous slices in stored order. Every sample appears exactly once
    (the last, short batch is dropped with ``drop_last``). ``transform=None`` yields the stored x.

    A lazy ``split.x`` (`LazyImages`) is decoded batch by batch in a DataLoader's worker
    processes (``split.x.workers``; a few batches ahead), moved to the device and transformed
    there: the same batches as the split held whole.

    ``part=(rank, world)``: yield ``(x_share, y_share, n)``, this process's contiguous share of
    each batch of ``n`` (the ``torch.tensor_split`` of the batch into ``world`` shares); only the
    share's samples are loaded, and the transform makes the whole batch's random draws
    (``rows=``), so the shares of ranks 0 .. world - 1 concatenated are the batch itself.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if part is not None and not 0 <= part[0] < part[1]:
        raise ValueError(f"part=(rank, world) needs 0 <= rank < world, got {part}")
    return _batches(split, batch_size, transform, shuffle, generator, drop_last, part)


def share_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """(start, stop) of share ``rank`` of ``world`` of n rows, as ``torch.tensor_split``."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def _batches(
    split: Split,
    batch_size: int,
    transform: BatchTransform | None,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
    part: tuple[int, int] | None,
) -> Iterator[tuple[Tensor, Tensor]] | Iterator[tuple[Tensor, Tensor, int]]:
    n = len(split)
    device = split.x.device
    order = None
    if shuffle:
        order = torch.randperm(
            n, generator=generator, device=random_device(generator, device)
        ).to(device)
    stop = n - n % batch_size if drop_last else n
    plan = []  # (first sample, end, batch size, first row of the share in its batch)
    for start in range(0, stop, batch_size):
        size = min(batch_size, n - start)
        lo, hi = (0, size) if part is None else share_rows(size, *part)
        plan.append((start + lo, start + hi, size, lo))
    if isinstance(split.x, LazyImages):
        order_np = None if order is None else order.cpu().numpy()
        xs = _stream(split.x, [np.arange(a, b, dtype=np.int64) if order_np is None else order_np[a:b]
                               for a, b, _, _ in plan])  # fmt: skip
    else:
        xs = (split.x[slice(a, b) if order is None else order[a:b]] for a, b, _, _ in plan)
    for (a, b, size, lo), x in zip(plan, xs, strict=True):
        y = split.y[a:b] if order is None else split.y[order[a:b]]
        if transform is not None:
            x = transform(x, generator) if part is None else transform(x, generator, rows=(lo, size))
        yield (x, y) if part is None else (x, y, size)


class _Decode:
    """``_Decode(images)[positions]``: one whole batch, decoded on the CPU (in a worker)."""

    def __init__(self, images: LazyImages) -> None:
        self.images = images

    def __getitem__(self, positions: np.ndarray) -> Tensor:
        return self.images.load(positions)


def _stream(images: LazyImages, positions: list[np.ndarray]) -> Iterator[Tensor]:
    """The images at each of ``positions``, decoded by a DataLoader and moved to their device.

    ``batch_size=None`` and a sampler of whole batches: a worker decodes a batch at a time,
    and the workers keep two batches each ahead. The loader draws its workers' seeds from a
    generator of its own, leaving torch's global random state as a resident epoch leaves it.
    """
    from torch.utils.data import DataLoader

    device = images.device
    workers = images.workers
    loader = DataLoader(
        _Decode(images), batch_size=None, sampler=positions, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None,
        generator=torch.Generator(),
    )  # fmt: skip
    for x in loader:
        yield x.to(device, non_blocking=True)


#: the data directory :func:`using_data_root` sets for the code inside its ``with``
_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("falign_data_root", default=None)


@contextlib.contextmanager
def using_data_root(root: str | os.PathLike[str] | None) -> Iterator[Path | None]:
    """Inside the ``with``, :func:`data_root` without an explicit root is ``root`` (None: as
    outside), also for configs without ``data.root`` trained by a comparison, sweep or
    reproduction; the user's ``$FALIGN_DATA`` is neither read nor written."""
    path = None if root is None else Path(root).expanduser().absolute()
    token = _ROOT.set(path if path is not None else _ROOT.get())
    try:
        yield path
    finally:
        _ROOT.reset(token)


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``explicit``, else the root of an enclosing :func:`using_data_root`,
    else ``$FALIGN_DATA``, else ``./data``; made absolute, so a later change of working directory
    (or a relative path in the variable) cannot move it."""
    if explicit is not None:
        return Path(explicit).expanduser().absolute()
    if _ROOT.get() is not None:
        return _ROOT.get()
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
