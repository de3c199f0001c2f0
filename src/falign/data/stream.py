"""Class-folder image trees left on disk, decoded batch by batch as `batches` reads them.

``load_dataset("imagefolder", path=..., size=256, stream=True)`` scans the tree as the
decode-once loader does (`folder.py`: same classes, same sample order) but keeps only the file
names: each split's x is a `FileImages`, which `batches` decodes in DataLoader worker
processes, each image exactly as the decode-once path decodes it (PIL, converted to the tree's
mode, resized to ``size`` x ``size`` with PIL's bilinear filter). For the same files the
streamed and the resident dataset give the same batches, bit for bit; memory holds the
names and labels, plus the batches in flight.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .core import DatasetError, LazyImages, Split, batches
from .images import _is_archive, _scan, channel_stats, decode_image, is_grey

__all__ = ["FileImages", "stream_image_tree"]

#: at most this many training images give the mean / std (and, channels unset, the mode)
STATS_SAMPLE = 1000
STATS_SEED = 0
_MODES = {"RGB": 3, "L": 1}


class FileImages(LazyImages):
    """Images in files: ``x[idx]`` opens, converts and resizes those files.

    ``files``: one path per image; each is converted to PIL ``mode`` ("RGB" or "L") and resized
    to ``size`` x ``size`` with PIL's bilinear filter, as `images.decode_image` does for the
    decode-once cache. The names are kept as one numpy array of bytes, not a list of Python
    strings, so forked DataLoader workers do not copy the pages a reference count touches.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]] | np.ndarray,
        *,
        size: int,
        mode: str = "RGB",
        device: str | torch.device = "cpu",
        workers: int | None = None,
    ) -> None:
        if mode not in _MODES:
            raise DatasetError(f"FileImages mode must be 'RGB' or 'L', got {mode!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DatasetError(f"size must be a positive number of pixels, got {size!r}")
        if isinstance(files, np.ndarray) and files.dtype.kind == "S":
            names = files
        else:
            names = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.files = names.reshape(-1)
        self.size = size
        self.mode = mode
        super().__init__((len(self.files), _MODES[mode], size, size), device, workers)

    def path(self, i: int) -> Path:
        return Path(os.fsdecode(self.files[i]))

    def load(self, positions: np.ndarray) -> Tensor:
        arrays = [decode_image(p, str(p), self.size, self.mode)
                  for p in (self.path(int(i)) for i in positions)]  # fmt: skip
        c = _MODES[self.mode]
        if not arrays:
            return torch.empty((0, c, self.size, self.size), dtype=torch.uint8)
        x = np.stack(arrays)  # (M, S, S, 3) or (M, S, S)
        x = x.transpose(0, 3, 1, 2) if c == 3 else x[:, None]  # (M, C, S, S)
        return torch.from_numpy(np.ascontiguousarray(x))

    def select(self, idx: Tensor | slice | Sequence[int]) -> FileImages:
        return FileImages(self.files[self.positions(idx)], size=self.size, mode=self.mode,
                          device=self.device, workers=self.workers)  # fmt: skip

    def __repr__(self) -> str:
        return (f"FileImages({len(self)} files, {self.mode} {self.size}x{self.size}, "
                f"device={self.device}, workers={self.workers})")  # fmt: skip


def _sample(n: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most STATS_SAMPLE of n."""
    if n <= STATS_SAMPLE:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(STATS_SEED)
    return np.sort(rng.choice(n, STATS_SAMPLE, replace=False)).astype(np.int64)


def stream_image_tree(
    source: Path, *, size: int | None, channels: int | None, workers: int | None
) -> tuple[list[str], dict[str, Split], str]:
    """(classes, split name -> Split with a `FileImages` x, the mode note) of a class-folder
    tree on disk. ``channels`` unset: RGB if any image of a seeded sample of at most 1000 is in
    colour (the decode-once path looks at every image)."""
    if _is_archive(source):
        raise DatasetError(
            f"{source}: stream: true reads the image files of a folder, not an archive; extract "
            f"it (e.g. tar -xf {source.name}) and give the extracted folder as path"
        )
    if size is None:
        raise DatasetError(
            "imagefolder with stream: true needs size=N: each image is resized to NxN as it is "
            "read, so that a batch is one tensor"
        )
    if size < 1:
        raise DatasetError(f"size must be a positive number of pixels, got {size}")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1, 3 or None (auto), got {channels}")
    classes, by_split = _scan(source)
    index = {c: i for i, c in enumerate(classes)}
    if channels is None:
        every = [e.data for items in by_split.values() for e in items]
        grey = all(is_grey(every[int(i)]) for i in _sample(len(every)))
        mode = "L" if grey else "RGB"
    else:
        mode = {1: "L", 3: "RGB"}[channels]
    splits = {}
    for split, items in by_split.items():
        x = FileImages([e.data for e in items], size=size, mode=mode, workers=workers)
        y = torch.tensor([index[e.label] for e in items], dtype=torch.int64)
        splits[split] = Split(x, y)
    return classes, splits, mode


def sampled_stats(train: Split) -> tuple[list[float], list[float], int]:
    """Per-channel mean and std of a seeded sample of at most 1000 images of ``train``
    (decoded as `batches` decodes them), and the sample's size."""
    sample = train.take(torch.from_numpy(_sample(len(train))))
    x = torch.cat([xb for xb, _ in batches(sample, 100, transform=None, shuffle=False)])
    mean, std = channel_stats(x.numpy())
    return mean, std, len(sample)
