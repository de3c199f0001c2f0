"""Class-per-folder image trees (a directory or a .tar/.tar.gz/.zip of one), decoded once.

Layout: ``train/<class>/<image>``, ``test/<class>/<image>`` and optionally ``val/<class>/...``,
possibly under one top folder inside an archive. Classes are the sorted folder names under
``train/``; samples are ordered by class, then file name.

Decoding tens of thousands of small images with PIL takes seconds, so the decoded uint8 arrays
are cached in an ``.npz`` in the user's cache directory, `cache_dir()`
(``<hash of the source path>-<name>.falign-v1-s<size>-c<channels>.npz``), never beside the data:
a data folder holds only what its owner put there, and may be shared or read-only. The cache
records the source's size and modification time (for a directory: those of every image) and is
rebuilt when they change.

``stream=True`` decodes nothing up front: the splits keep the file names (`stream.FileImages`)
and each batch is decoded as it is read, with the scanning and decoding of `images`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core import DatasetError, Loaded, Split, atomic_write, cache_dir
from .images import _Entry, _scan, _scan_dir, _stem, channel_stats, decode_image
from .transforms import ImageTransform

__all__ = ["ImageTree", "channel_stats", "load_image_tree", "resolve_source"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class ImageTree:
    """Decoded images per split: x uint8 (N, C, H, W), y int64 (N,)."""

    classes: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]


def _decode(items: list[_Entry], size: int | None, mode: str | None) -> list[np.ndarray]:
    return [decode_image(e.data, e.where, size, mode) for e in items]


def _decode_tree(source: Path, size: int | None, channels: int | None) -> ImageTree:
    classes, by_split = _scan(source)
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    decoded = {split: _decode(items, size, mode) for split, items in by_split.items()}
    colour = any(a.ndim == 3 for arrays in decoded.values() for a in arrays)
    first = by_split["train"][0]
    hw = decoded["train"][0].shape[:2]
    splits = {}
    for split, arrays in decoded.items():
        for a, e in zip(arrays, by_split[split], strict=True):
            if a.shape[:2] != hw:
                raise DatasetError(
                    f"images differ in size: {e.where} is {a.shape[1]}x{a.shape[0]} but "
                    f"{first.where} is {hw[1]}x{hw[0]}; pass size=N to resize all to NxN"
                )
        if colour:
            arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
            x = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
        else:
            x = np.stack(arrays)[:, None]  # (N, 1, H, W)
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[e.label] for e in by_split[split]], dtype=np.int64)
        splits[split] = (np.ascontiguousarray(x), y)
    return ImageTree(classes, splits)


def _fingerprint(source: Path) -> str:
    if source.is_file():
        st = source.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha1()
    for e in sorted(_scan_dir(source), key=lambda e: (e.split, e.label, e.name)):
        assert isinstance(e.data, Path)
        st = e.data.stat()
        h.update(f"{e.split}/{e.label}/{e.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"dir:{h.hexdigest()}"


def _cache_path(source: Path, size: int | None, channels: int | None) -> Path:
    name = f"{_stem(source)}.falign-v{CACHE_VERSION}-s{size or 'orig'}-c{channels or 'auto'}.npz"
    tag = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / f"{tag}-{name}"


def _read_cache(path: Path, meta: dict) -> ImageTree | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            if any(stored.get(k) != v for k, v in meta.items()):
                return None
            splits = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in stored["splits"]}
            return ImageTree(list(stored["classes"]), splits)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("ignoring unreadable cache %s (%s); decoding again", path, e)
        return None


def _write_cache(path: Path, meta: dict, tree: ImageTree) -> None:
    stored = dict(meta, classes=tree.classes, splits=list(tree.splits))
    arrays = {"meta": np.array(json.dumps(stored))}
    for s, (x, y) in tree.splits.items():
        arrays[f"{s}_x"], arrays[f"{s}_y"] = x, y
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_image_tree(
    source: Path, *, size: int | None = None, channels: int | None = None
) -> ImageTree:
    """Decoded images of a class-folder tree or archive, from the cache when it is current."""
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1, 3 or None (auto), got {channels}")
    if size is not None and size < 1:
        raise DatasetError(f"size must be a positive number of pixels, got {size}")
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": _fingerprint(source),
        "size": size,
        "channels": channels,
    }
    path = _cache_path(source, size, channels)
    tree = _read_cache(path, meta)
    if tree is not None:
        log.debug("decoded images of %s read from %s", source, path)
        return tree
    log.info("decoding the images of %s (once; cached afterwards)", source)
    tree = _decode_tree(source, size, channels)
    try:
        _write_cache(path, meta, tree)
        log.info("cached decoded images of %s in %s", source, path)
    except OSError as e:
        log.warning("cannot write cache %s (%s); set FALIGN_CACHE to a writable folder", path, e)
    return tree


def resolve_source(path: str | os.PathLike[str], root: Path) -> Path:
    """``path`` as given (``~`` expanded), else relative to the data root."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (root / p).exists():
        return root / p
    where = str(p) if p.is_absolute() else f"{p} (nor {root / p})"
    raise DatasetError(f"image folder or archive not found: {where}")


def to_split(arrays: tuple[np.ndarray, np.ndarray]) -> Split:
    x, y = arrays
    return Split(torch.from_numpy(x), torch.from_numpy(y))


def _image_transforms(
    shape: tuple[int, int, int], *, crop: int | None, pad: int, flip: bool,
    mean: list[float] | None, std: list[float] | None,
) -> tuple[ImageTransform, ImageTransform]:
    """(train, eval): training pads ``pad``, takes a random ``crop`` (with ``pad`` and no crop:
    the stored size) and flips; evaluation takes the centre ``crop`` of the unpadded image."""
    c, h, w = shape
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise DatasetError(f"imagefolder: pad must be a number of pixels >= 0, got {pad!r}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int)
                             or not 1 <= crop <= min(h, w)):  # fmt: skip
        raise DatasetError(f"imagefolder: crop={crop!r} must be between 1 and the image side "
                           f"({h}x{w})")  # fmt: skip
    if pad and crop is None:
        if h != w:
            raise DatasetError(f"imagefolder: pad={pad} on {h}x{w} images needs crop=N (the "
                               "random crop taken from the padded image is square)")  # fmt: skip
        crop = h
    if mean is not None and len(mean) != c:
        raise DatasetError(f"imagefolder: {len(mean)} mean/std values for {c}-channel images")
    norm = {"mean": mean, "std": std}
    eval_t = ImageTransform(crop=None if crop is None or crop == h == w else crop, **norm)
    if crop is None and not flip:
        return eval_t, eval_t
    train_t = ImageTransform(pad=pad, crop=crop, random_crop=crop is not None, flip=flip, **norm)
    return train_t, eval_t


def _explicit_norm(
    mean: list[float] | None, std: list[float] | None, normalize: bool
) -> tuple[list[float], list[float]] | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise DatasetError("imagefolder: give both mean and std (one value per channel), or neither")
    if not normalize:
        raise DatasetError("imagefolder: mean/std given with normalize: false; drop one of them")
    try:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise DatasetError(f"imagefolder: mean and std must be lists of numbers, got {mean!r} "
                           f"and {std!r}") from None  # fmt: skip
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise DatasetError(f"imagefolder: mean {mean} and std {std} need one value per channel "
                           "each, std > 0")  # fmt: skip
    return mean, std


def load_imagefolder(
    root: Path,
    *,
    path: str | os.PathLike[str] | None = None,
    size: int | None = None,
    channels: int | None = None,
    normalize: bool = True,
    flip: bool = False,
    crop: int | None = None,
    pad: int = 0,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    stream: bool = False,
    workers: int | None = None,
) -> Loaded:
    """Any class-per-folder image tree.

    ``size`` resizes every image to ``size`` x ``size`` (PIL bilinear); without it all images
    must share one size. ``channels`` forces 1 (L) or 3 (RGB); by default RGB if any image is
    in colour. ``normalize`` uses per-channel mean and std computed on all of ``train/``
    (validation samples held out of it included), or ``mean`` / ``std`` when given. ``flip``
    adds a random horizontal flip to ``train_transform``; ``crop`` takes a random ``crop`` x
    ``crop`` patch for training (after zero-padding ``pad`` pixels) and the centre one for
    evaluation.

    ``stream`` leaves the images in their files (a folder, not an archive) and decodes each
    batch as it is read, in ``workers`` DataLoader processes (default ``min(4, cpus // 2)``;
    0: in the main process; ignored without ``stream``); it needs ``size``. Without ``mean`` /
    ``std`` the statistics come from a seeded sample of at most 1000 training images (the
    description says so). The batches are those of the same tree decoded once.
    """
    if path is None:
        raise DatasetError(
            "imagefolder needs path=<folder or archive> with train/<class>/<image> and "
            "test/<class>/<image> (optionally val/<class>/<image>)"
        )
    if not isinstance(stream, bool):
        raise DatasetError(f"imagefolder: stream must be true or false, got {stream!r}")
    source = resolve_source(path, root)
    given = _explicit_norm(mean, std, normalize)
    if stream:
        from .stream import sampled_stats, stream_image_tree  # stream.py builds on this module

        classes, splits, mode = stream_image_tree(source, size=size, channels=channels,
                                                  workers=workers)  # fmt: skip
        train, shape = splits["train"], tuple(splits["train"].x.shape[1:])
        note = f"streamed from files, {mode} {size}x{size}"
        if given is None and normalize:
            mean, std, n = sampled_stats(train)
            note += f", mean/std of {n} sampled training images"
        splits_out = splits
    else:
        tree = load_image_tree(source, size=size, channels=channels)
        train_x = tree.splits["train"][0]
        classes, shape, note = tree.classes, tuple(train_x.shape[1:]), ""
        if given is None and normalize:
            mean, std = channel_stats(train_x)
        splits_out = {name: to_split(arrays) for name, arrays in tree.splits.items()}
    if given is not None:
        mean, std = given
    elif not normalize:
        mean, std = None, None
    train_t, eval_t = _image_transforms(shape, crop=crop, pad=pad, flip=flip, mean=mean, std=std)
    return Loaded(
        title=f"imagefolder {_stem(source)}" + (f" ({note})" if note else ""),
        train=splits_out["train"],
        test=splits_out["test"],
        val=splits_out.get("val"),
        classes=classes,
        input_shape=train_t.output_shape(shape),
        train_transform=train_t,
        eval_transform=eval_t,
        default_val_size=0,
    )
