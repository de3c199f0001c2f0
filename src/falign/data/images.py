"""Finding and decoding the images of a class-per-folder tree (a directory, or a .tar / .tar.gz /
.zip of one): what the decode-once path (`folder`) and the streamed path (`stream`) share."""

from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .core import DatasetError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass
class _Entry:
    split: str
    label: str
    name: str
    data: bytes | Path  # archive member bytes, or a file to open
    where: str  # for error messages


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _layout_error(source: Path, detail: str) -> DatasetError:
    return DatasetError(
        f"{source}: {detail}; expected train/<class>/<image> and test/<class>/<image> "
        f"(optionally val/<class>/<image>) in that folder or archive"
    )


def _keep(parts: tuple[str, ...]) -> bool:
    return (
        len(parts) >= 3
        and parts[-3] in SPLITS
        and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS
        and not any(p.startswith(".") or p == "__MACOSX" for p in parts)
    )


def _scan_archive(source: Path) -> list[_Entry]:
    found: dict[tuple[str, ...], list[_Entry]] = {}  # by prefix folder inside the archive
    try:
        if source.name.lower().endswith(".zip"):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    parts = PurePosixPath(info.filename).parts
                    if info.is_dir() or not _keep(parts):
                        continue
                    entry = _Entry(parts[-3], parts[-2], parts[-1], zf.read(info),
                                   f"{source}:{info.filename}")  # fmt: skip
                    found.setdefault(parts[:-3], []).append(entry)
        else:
            with tarfile.open(source, "r:*") as tf:
                for member in tf:  # one sequential pass: no seeking back in a compressed stream
                    parts = PurePosixPath(member.name).parts
                    if not member.isfile() or not _keep(parts):
                        continue
                    f = tf.extractfile(member)
                    assert f is not None
                    entry = _Entry(parts[-3], parts[-2], parts[-1], f.read(),
                                   f"{source}:{member.name}")  # fmt: skip
                    found.setdefault(parts[:-3], []).append(entry)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read archive {source}: corrupt or truncated ({e})") from e
    if len(found) > 1:
        tops = ", ".join(sorted("/".join(p) or "." for p in found))
        raise _layout_error(source, f"image trees under several folders ({tops})")
    return next(iter(found.values()), [])


def _scan_dir(source: Path) -> list[_Entry]:
    entries = []
    for split in SPLITS:
        split_dir = source / split
        if not split_dir.is_dir():
            continue
        for class_dir in split_dir.iterdir():
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            for f in class_dir.iterdir():
                image = f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
                if image and f.is_file():
                    entries.append(_Entry(split, class_dir.name, f.name, f, str(f)))
    return entries


def _scan(source: Path) -> tuple[list[str], dict[str, list[_Entry]]]:
    entries = _scan_archive(source) if _is_archive(source) else _scan_dir(source)
    by_split: dict[str, list[_Entry]] = {}
    for e in sorted(entries, key=lambda e: (e.split, e.label, e.name)):
        by_split.setdefault(e.split, []).append(e)
    for split in ("train", "test"):
        if split not in by_split:
            hint = ""
            if split == "test" and "val" in by_split:  # ImageNet's own layout: train/ and val/
                hint = " (val/ is read as the validation split; rename it test/ to test on it)"
            raise _layout_error(source, f"no images under {split}/{hint}")
    classes = sorted({e.label for e in by_split["train"]})
    for split, items in by_split.items():
        extra = sorted({e.label for e in items} - set(classes))
        if extra:
            raise _layout_error(source, f"{split}/ has classes not in train/: {', '.join(extra)}")
    return classes, by_split


def decode_image(data: bytes | Path, where: str, size: int | None, mode: str | None) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3): converted to PIL ``mode`` ("L" or "RGB"; None:
    "L" for grey images, else "RGB"), then resized to ``size`` x ``size`` (PIL bilinear)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            target = mode or ("L" if im.mode in _GREY_MODES else "RGB")
            img = im.convert(target) if im.mode != target else im
            if size is not None:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot decode image {where}: {err}") from err


def is_grey(path: Path) -> bool:
    """Whether an image file is stored in a grey mode (reads its header only)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in _GREY_MODES
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from err


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in [0, 1] units, exactly."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return means, stds
