"""CIFAR-10 (Krizhevsky 2009): the python-pickle distribution and the JPEG copy.

Both follow the protocol of Lance & Kieu (2026): 45k/5k train/validation split of the 50k
training images (``split_seed`` 42), random 24x24 crop + random horizontal flip for training,
centre 24x24 crop for evaluation, per-channel normalisation. ``crop=None`` gives the BioTorch
protocol instead: full 32x32 images, padding-4 random crop 32 + flip for training.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .core import DatasetError, Loaded, Split, is_writable_dir
from .fetch import missing_dataset
from .folder import load_image_tree, to_split
from .transforms import ImageTransform

__all__ = ["CIFAR10_CLASSES", "cifar_transforms", "load_cifar10", "load_cifar10_jpeg"]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

BATCH_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
JPEG_DIR = "cifar10-jpeg"


def cifar_transforms(
    crop: int | None, pad_crop: int | None, augment: bool, normalize: bool = True,
    mean: list[float] | None = None, std: list[float] | None = None,
) -> tuple[ImageTransform, ImageTransform, tuple[int, int, int]]:
    """(train, eval, input_shape) for 32x32 CIFAR images.

    Training: zero-pad ``pad_crop`` (default 4 when ``crop`` is None, else 0), random
    ``crop`` x ``crop`` (32 when None), random horizontal flip. Evaluation: centre crop.
    ``augment=False`` trains on the evaluation transform.  ``normalize=False`` keeps pixels in
    [0, 1] (no per-channel mean and std), as Akrout et al.'s fully connected networks do.
    ``mean`` / ``std`` (three values each) replace CIFAR-10's own statistics: ``[0.5, 0.5,
    0.5]`` for both maps pixels to [-1, 1], torchvision's ``Normalize((0.5,) * 3, (0.5,) * 3)``.
    """
    size = 32 if crop is None else crop
    pad = (4 if crop is None else 0) if pad_crop is None else pad_crop
    if not 1 <= size <= 32 or pad < 0:
        raise DatasetError(f"cifar: crop={crop} must be between 1 and 32, pad_crop={pad} >= 0")
    norm = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD} if normalize else {}
    if mean is not None or std is not None:
        if mean is None or std is None or not normalize:
            raise DatasetError("cifar: give both mean and std (three values each) with normalize: true")
        try:
            mean, std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
        except (TypeError, ValueError):
            raise DatasetError(f"cifar: mean and std must be lists of numbers, got {mean!r} and "
                               f"{std!r}") from None
        if len(mean) != 3 or len(std) != 3 or any(v <= 0 for v in std):
            raise DatasetError(f"cifar: mean {list(mean)} and std {list(std)} need three values "
                               "each (one a channel), std > 0")
        norm = {"mean": mean, "std": std}
    eval_t = ImageTransform(crop=None if size == 32 else size, **norm)
    train_t = ImageTransform(pad=pad, crop=size, random_crop=True, flip=True, **norm)
    return (train_t if augment else eval_t), eval_t, (3, size, size)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch dicts and nothing that could run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):
            with contextlib.suppress(ImportError):  # numpy 2 renamed numpy.core to numpy._core
                return getattr(__import__("numpy._core.multiarray", fromlist=[name]), name)
        return super().find_class(module, name)


def _read_batch(f: IO[bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            zlib.error, OSError) as e:  # fmt: skip
        raise DatasetError(f"cannot read CIFAR batch {where}: corrupt or truncated ({e})") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DatasetError(f"{where} is not a CIFAR-10 batch (no b'data' / b'labels' entries)")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DatasetError(
            f"{where}: data has shape {data.shape} and labels {labels.shape}, "
            f"expected (N, 3072) and (N,)"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise DatasetError(f"{where}: labels outside 0..9")
    # each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels


def _members(archive: Path, sink: Callable[[str, IO[bytes]], None]) -> None:
    """Pass each batch file of ``archive`` to ``sink(name, file)``, in one sequential read."""
    wanted = {f"{BATCH_DIR}/{n}" for n in (*TRAIN_BATCHES, TEST_BATCH, "batches.meta")}
    seen = set()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.name in wanted and member.isfile():
                    f = tf.extractfile(member)
                    assert f is not None
                    with f:
                        sink(member.name.split("/", 1)[1], f)
                    seen.add(member.name)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DatasetError(f"cannot read {archive}: corrupt or truncated ({e})") from e
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if f"{BATCH_DIR}/{n}" not in seen]
    if missing:
        raise DatasetError(f"{archive} has no {', '.join(f'{BATCH_DIR}/{n}' for n in missing)}")


def _extract(archive: Path, target: Path) -> None:
    """Extract the batch folder of ``archive`` to ``target`` atomically (temp dir + rename)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{BATCH_DIR}.", suffix=".part", dir=target.parent))
    try:
        (tmp / BATCH_DIR).mkdir()

        def sink(name: str, src: IO[bytes]) -> None:
            with open(tmp / BATCH_DIR / name, "wb") as dst:
                shutil.copyfileobj(src, dst)

        _members(archive, sink)
        try:
            os.replace(tmp / BATCH_DIR, target)
        except OSError:
            if not target.is_dir():  # else another process extracted it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_batches(opener: Callable[[str], IO[bytes]], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        with opener(name) as f:
            out[name] = _read_batch(f, f"{where}/{name}")
    try:
        with opener("batches.meta") as f:
            meta = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        out["classes"] = [c.decode() for c in meta[b"label_names"]]
    except (OSError, KeyError, EOFError, pickle.UnpicklingError, AttributeError, TypeError):
        out["classes"] = list(CIFAR10_CLASSES)
    return out


def _open_from_archive(archive: Path) -> dict[str, Any]:
    # read-only data folder: read the batches straight out of the archive, nothing written
    files: dict[str, bytes] = {}
    _members(archive, lambda name, f: files.__setitem__(name, f.read()))

    def opener(name: str) -> IO[bytes]:
        if name not in files:
            raise FileNotFoundError(name)
        return io.BytesIO(files[name])

    return _read_batches(opener, f"{archive}:{BATCH_DIR}")


def load_cifar10(
    root: Path, *, crop: int | None = 24, pad_crop: int | None = None, augment: bool = True,
    normalize: bool = True, mean: list[float] | None = None, std: list[float] | None = None,
) -> Loaded:
    """CIFAR-10 from ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` in ``root``."""
    folder, archive = root / BATCH_DIR, root / ARCHIVE
    if not folder.is_dir() and archive.is_file() and is_writable_dir(root):
        _extract(archive, folder)
    if folder.is_dir():
        missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
        if missing:
            raise DatasetError(f"{folder} is incomplete: missing {', '.join(missing)}")
        batches = _read_batches(lambda n: open(folder / n, "rb"), str(folder))
    elif archive.is_file():
        batches = _open_from_archive(archive)
    else:
        raise missing_dataset("cifar10", root) or DatasetError(
            f"CIFAR-10 not found: expected {BATCH_DIR}/ (data_batch_1..5, test_batch) or "
            f"{ARCHIVE} in {root}; pass download=True to load_dataset, or run "
            f"`falign download cifar10`, to fetch it (or set FALIGN_DATA to the data folder)"
        )
    train_x = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
    train_y = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
    test_x, test_y = batches[TEST_BATCH]
    train_t, eval_t, shape = cifar_transforms(crop, pad_crop, augment, normalize, mean, std)
    return Loaded(
        title="CIFAR-10",
        train=Split(torch.from_numpy(train_x), torch.from_numpy(train_y)),
        test=Split(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y)),
        classes=batches["classes"],
        input_shape=shape,
        train_transform=train_t,
        eval_transform=eval_t,
        default_val_size=5000,
    )


def load_cifar10_jpeg(
    root: Path, *, crop: int | None = 24, pad_crop: int | None = None, augment: bool = True,
    normalize: bool = True, mean: list[float] | None = None, std: list[float] | None = None,
) -> Loaded:
    """The lossy JPEG copy of CIFAR-10 (``cifar10-jpeg.tar.gz`` or its extracted folder).

    A preset of imagefolder with the CIFAR-10 protocol. Results on it are 1 to 3 points below
    published CIFAR-10 figures and must be labelled "CIFAR-10 (JPEG copy)".
    """
    candidates = [root / JPEG_ARCHIVE, root / JPEG_DIR]
    source = next((p for p in candidates if p.is_file() or (p / "train").is_dir()), None)
    if source is None:
        raise missing_dataset("cifar10-jpeg", root) or DatasetError(
            f"CIFAR-10 (JPEG copy) not found: expected {JPEG_ARCHIVE} (or its extracted folder "
            f"{JPEG_DIR}/ with train/<class>/*.jpg and test/<class>/*.jpg) in {root}; it has no "
            f"official download location: copy it there, or set FALIGN_DATA_MIRROR to a mirror "
            f"that has it and pass download=True"
        )
    tree = load_image_tree(source, channels=3)
    shape = tree.splits["train"][0].shape[1:]
    if shape != (3, 32, 32):
        raise DatasetError(f"{source}: images are {shape[2]}x{shape[1]}, expected 32x32")
    train_t, eval_t, input_shape = cifar_transforms(crop, pad_crop, augment, normalize, mean, std)
    return Loaded(
        title="CIFAR-10 (JPEG copy)",
        train=to_split(tree.splits["train"]),
        test=to_split(tree.splits["test"]),
        classes=tree.classes,
        input_shape=input_shape,
        train_transform=train_t,
        eval_transform=eval_t,
        default_val_size=5000,
    )
