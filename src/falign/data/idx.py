"""MNIST and Fashion-MNIST from the standard IDX files (gzip or not).

IDX format (LeCun et al.): bytes 0-1 zero, byte 2 the element type (0x08 = unsigned byte),
byte 3 the number of dimensions d, then d big-endian uint32 sizes, then the data row-major.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

import torch
from torch import Tensor

from .core import IDX_FILES, DatasetError, Loaded, Split
from .fetch import missing_dataset
from .transforms import ImageTransform

__all__ = ["IDX_FILES", "find_idx_dir", "read_idx"]

_UBYTE = 0x08

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def read_idx(path: Path) -> Tensor:
    """The array in an IDX file (``.gz`` or plain) as a uint8 tensor of its stated shape.

    Raises DatasetError naming the file if it is not gzip-readable, not an unsigned-byte IDX
    file, or shorter or longer than its header says.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read {path}: corrupt or truncated gzip file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != _UBYTE:
        raise DatasetError(f"{path}: IDX element type 0x{raw[2]:02x}, expected 0x08 (ubyte)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = prod(shape)
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header}; the file is truncated or corrupt"
        )
    data = bytearray(memoryview(raw)[header:])
    return torch.frombuffer(data, dtype=torch.uint8).reshape(shape)


def _candidates(root: Path, subdir: str, torchvision_dir: str) -> list[Path]:
    # our layout (<root>/mnist), then torchvision's (<root>/MNIST/raw)
    return [root / subdir, root / torchvision_dir / "raw"]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_idx_dir(root: Path, subdir: str, torchvision_dir: str) -> Path | None:
    """The first candidate directory holding all four IDX files, or None."""
    stems = [s for pair in IDX_FILES.values() for s in pair]
    for d in _candidates(root, subdir, torchvision_dir):
        if all(_find(d, s) is not None for s in stems):
            return d
    return None


def load_idx_dataset(
    root: Path,
    *,
    name: str,
    subdir: str,
    torchvision_dir: str,
    title: str,
    classes: list[str],
    mean: float,
    std: float,
    pad_to: int | None,
    normalize: bool,
) -> Loaded:
    directory = find_idx_dir(root, subdir, torchvision_dir)
    if directory is None:
        stems = [s for pair in IDX_FILES.values() for s in pair]
        missing = [s + ".gz" for s in stems if _find(root / subdir, s) is None]
        raise missing_dataset(name, root) or DatasetError(
            f"{title} not found: expected {', '.join(s + '.gz' for s in stems)} (or the same "
            f"without .gz) in {root / subdir}, missing {', '.join(missing)}; pass download=True "
            f"to load_dataset, or run `falign download {name}`, to fetch them (or set "
            f"FALIGN_DATA to the data folder)"
        )
    splits = {}
    for split, (img_stem, lbl_stem) in IDX_FILES.items():
        img_path, lbl_path = _find(directory, img_stem), _find(directory, lbl_stem)
        assert img_path is not None and lbl_path is not None
        x, y = read_idx(img_path), read_idx(lbl_path)
        if x.dim() != 3:
            raise DatasetError(f"{img_path}: expected (N, H, W) images, found shape {x.shape}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DatasetError(
                f"{lbl_path} has shape {tuple(y.shape)} but {img_path} holds {x.shape[0]} images"
            )
        if len(y) and int(y.max()) >= len(classes):
            raise DatasetError(f"{lbl_path}: label {int(y.max())} >= {len(classes)} classes")
        splits[split] = Split(x.unsqueeze(1), y.long())  # (N, 1, H, W)

    h, w = splits["train"].x.shape[-2:]
    pad = 0
    if pad_to is not None:
        if pad_to < max(h, w) or (pad_to - h) % 2 or h != w:
            raise DatasetError(
                f"{name}: pad_to={pad_to} must be >= {h} and differ from it by an even number"
            )
        pad = (pad_to - h) // 2
    transform = ImageTransform(
        pad=pad, mean=(mean,) if normalize else None, std=(std,) if normalize else None
    )
    return Loaded(
        title=title,
        train=splits["train"],
        test=splits["test"],
        classes=list(classes),
        input_shape=transform.output_shape((1, h, w)),
        train_transform=transform,
        eval_transform=transform,
        default_val_size=5000,
    )


def load_mnist(root: Path, *, pad_to: int | None = None, normalize: bool = True) -> Loaded:
    """MNIST (LeCun et al. 1998). ``pad_to=32`` zero-pads 28 -> 32 for LeNet-5 style nets."""
    return load_idx_dataset(
        root, name="mnist", subdir="mnist", torchvision_dir="MNIST", title="MNIST",
        classes=MNIST_CLASSES, mean=0.1307, std=0.3081, pad_to=pad_to, normalize=normalize,
    )  # fmt: skip


def load_fashion_mnist(
    root: Path, *, pad_to: int | None = None, normalize: bool = True
) -> Loaded:
    """Fashion-MNIST (Xiao et al. 2017), same format and options as MNIST."""
    return load_idx_dataset(
        root, name="fashion-mnist", subdir="fashion-mnist", torchvision_dir="FashionMNIST",
        title="Fashion-MNIST", classes=FASHION_CLASSES, mean=0.2860, std=0.3530,
        pad_to=pad_to, normalize=normalize,
    )  # fmt: skip
